"""Builds tests/data/tiny_bench/, the small real CvT-Bench table the bench tests read.

    PYTHONPATH=. python tests/bench/make_tiny_bench.py   # about 5 minutes on 1 thread

It holds real `run_trial` runs of tests/data/tiny_space.yaml (10 sampled architectures, 2 epochs
on 400 images, seed 1 too for two of them, and the space's base as one named architecture) in
the "cvt-bench/1" format of docs/bench.md. Nothing in it is invented except ``eval_time_s``,
which the trainer does not report per epoch: each epoch gets an equal share of the run's time
outside training. (`cvt-nas bench build` writes such tables; this script predates it.)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
PINNED = {"lr": 2.0e-3}
SPLIT = {"train_subset": 400, "val_fraction": 0.25, "img_size": 32}
EPOCHS = 2


def build(out: Path, n_archs: int = 10, extra_seeds: int = 2) -> None:
    from cvt_nas.results.records import arch_json
    from cvt_nas.space import load_space
    from cvt_nas.training.config import get_recipe
    from cvt_nas.training.datasets import adapt_config

    space = load_space(TINY)
    train = get_recipe("reduced", dataset="fashion-mnist", epochs=EPOCHS, batch_size=100,
                       threads=1, **SPLIT, **PINNED)
    archs, rows, seen, i = [], [], set(), 0
    names = sorted({n for k in range(40) for n in space.random(k).params if
                    not n.startswith("train.")})
    while len(archs) < n_archs:
        s = space.random(i)
        i += 1
        if s.model is None or space.violations(s) or s.model.arch_id() in seen:
            continue
        cfg = adapt_config(s.model, train)
        seen.add(cfg.arch_id())
        cost = space.cost(cfg)
        archs.append({"arch_id": cfg.arch_id(), "source": "sample", "sample_index": i - 1,
                      "name": "", "params": cost.params, "macs": cost.macs,
                      "latency_ms": float("nan"), "peak_train_mem_mb": float("nan"),
                      "arch": arch_json(cfg),
                      **{f"p:{n}": s.params.get(n) for n in names}})
        _runs(rows, cfg, s.model, train, cost, [0, 1] if len(archs) <= extra_seeds else [0])
    base = adapt_config(space.base, train)
    cost = space.cost(base)
    archs.append({"arch_id": base.arch_id(), "source": "named", "sample_index": -1,
                  "name": "tests:base", "params": cost.params, "macs": cost.macs,
                  "latency_ms": float("nan"), "peak_train_mem_mb": float("nan"),
                  "arch": arch_json(base), **{f"p:{n}": None for n in names}})
    _runs(rows, base, space.base, train, cost, [0])
    out.mkdir(parents=True)
    pd.DataFrame(archs).to_parquet(out / "archs.parquet", index=False)
    table = pd.DataFrame(rows)
    table.to_parquet(out / "table.parquet", index=False)
    text = TINY.read_text()
    now = datetime.now(UTC).isoformat()
    manifest = {
        "format": "cvt-bench/1", "space": space.name, "space_file": str(TINY.relative_to(ROOT)),
        "space_sha256": hashlib.sha256(text.encode()).hexdigest(), "space_yaml": text,
        "recipe": "reduced", "train": train.to_dict(), "pinned": PINNED,
        "dataset": "fashion-mnist", "split": SPLIT, "epochs": EPOCHS, "sample_seed": 0,
        "archs_sampled": n_archs, "named": ["tests:base"], "seeds": 2, "software": {}, "devices": ["cpu"],
        "created": now, "updated": now,
        "counts": {"archs": len(archs), "runs": len(table.groupby(["arch_id", "seed"])),
                   "failed": 0}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))




def _runs(rows: list, cfg: Any, model: Any, train: Any, cost: Any, seeds: list[int]) -> None:
    from cvt_nas.training.trainer import run_trial

    for seed in seeds:
        res = run_trial(model, train.replace(seed=seed), cost=cost)
        assert res.status == "complete", res.error
        trained = sum(h["time_s"] for h in res.history)
        eval_s = max(0.0, res.wall_time_s - trained) / len(res.history)
        clock = 0.0
        for h in res.history:
            clock += h["time_s"] + eval_s
            last = h["epoch"] == len(res.history)
            rows.append({"arch_id": cfg.arch_id(), "seed": seed, "epoch": h["epoch"],
                         "status": "complete", "train_loss": h["train_loss"],
                         "val_top1": h["val_top1"], "val_top5": h["val_top5"],
                         "train_time_s": h["time_s"], "eval_time_s": eval_s, "time_s": clock,
                         "test_top1": res.test_top1 if last else float("nan"),
                         "test_top5": res.test_top5 if last else float("nan"),
                         "device": "cpu", "threads": 1, "trial": len(rows),
                         "finished_at": datetime.now(UTC).isoformat()})


if __name__ == "__main__":
    out = ROOT / "tests" / "data" / "tiny_bench"
    shutil.rmtree(out, ignore_errors=True)
    build(out)
    print(f"wrote {out}")
