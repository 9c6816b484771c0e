"""Build a CvT-Bench table: train a fixed, seeded sample of a space's architectures, record them.

`build` draws the first N feasible, distinct architectures of a search space from a seeded
random stream (the first N of a longer run are the same N, so a table grows by asking for more),
adds named ones (the rows of paper-ablation experiments at their reduced scale), and trains every
(architecture, seed) pair with the space's training recipe, its sampled training fields (e.g.
``lr``) pinned to one value, for a fixed number of epochs with a test evaluation at the end.

Training is the ablation runner's: the architectures become the rows of a generated experiment
file in the table's folder (``experiments/<name>.yaml``), run as a resumable Optuna grid study in
one storage (default ``DIR/bench.db``; a PostgreSQL URL lets workers on many machines share it).
A pair already trained in any study of the storage is never trained again, so successive builds
(30 architectures x 3 seeds, then 300 x 1) share their common runs.

`export` then reads every study of the storage and writes the table (format ``cvt-bench/1``,
see docs/bench.md): ``table.parquet`` (one row per architecture, seed and epoch),
``archs.parquet`` (one row per architecture, with its sampled parameters, exact params/MACs and
its measured CPU batch-1 latency and training-step memory) and ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cvt_nas.bench.table import (
    FORMAT,
    TABLE_COLUMNS,
    recipe_numbers,
    table_identity,
)
from cvt_nas.common.atomic import atomic_path, atomic_write_text
from cvt_nas.common.names import check_name
from cvt_nas.common.proc import cpu_name
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.presets import get_config
from cvt_nas.results.records import TRAIN_PREFIX, arch_json, flatten_train
from cvt_nas.space import SearchSpace, load_space
from cvt_nas.space.sampling import FixedSuggest, RandomSuggest
from cvt_nas.training.config import TrainConfig, get_recipe

__all__ = [
    "FORMAT",
    "BenchArch",
    "bench_train_config",
    "build",
    "export",
    "named_archs",
    "pinned_train",
    "sample_archs",
]

STALE_DRAWS = 5000  # draws in a row without a new feasible architecture: the space is exhausted
LATENCY_REPEATS = 20
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchArch:
    """One architecture of a table: where it came from, its config and its sampled parameters."""

    arch_id: str
    source: str  # "sample" or "named"
    sample_index: int  # position in the seeded sample; -1 for named architectures
    cfg: CvTConfig
    params: dict[str, Any] = field(default_factory=dict)  # the space's model parameters
    names: tuple[str, ...] = ()  # "experiment:row" of every named row with this architecture


# -- what is trained ----------------------------------------------------------------------------


def pinned_train(space: SearchSpace) -> dict[str, Any]:
    """One value for each sampled training field of ``space``: the recipe's own value when the
    space's range holds it, else the range's (geometric, for log ranges) middle or first choice.
    A table compares architectures, so everything but the architecture is held fixed."""
    recipe = get_recipe(space.recipe)
    out: dict[str, Any] = {}
    for spec in space.train:
        dist = spec.entries[0].dist
        if dist is None:
            continue
        default = getattr(recipe, spec.name)
        if dist.kind == "choice":
            out[spec.name] = default if default in dist.choices else dist.choices[0]
        elif default is not None and dist.low <= default <= dist.high:
            out[spec.name] = default
        else:
            mid = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
            out[spec.name] = int(round(mid)) if dist.kind == "int" else mid
    return out


def bench_train_config(space: SearchSpace, epochs: int, **overrides: Any) -> TrainConfig:
    """The training config of every run of a table (seed 0): the space's fixed training fields,
    its sampled ones pinned (`pinned_train`), ``epochs`` and a test evaluation at the end."""
    fixed = {s.name: s.entries[0].fixed for s in space.train if s.entries[0].dist is None}
    return get_recipe(space.recipe, **{**fixed, **pinned_train(space), "epochs": epochs,
                                       "eval_test": True, **overrides})


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[BenchArch]:
    """The first ``n`` feasible, distinct architectures of a seeded uniform stream of samples.

    Raises:
        ValueError: the space holds fewer than ``n`` feasible architectures (as far as
            `STALE_DRAWS` draws in a row without a new one can tell).
    """
    rng = random.Random(seed)
    pinned = {f"train.{k}": v for k, v in pinned_train(space).items()}
    out: list[BenchArch] = []
    seen: set[str] = set()
    stale = 0
    while len(out) < n:
        if stale >= STALE_DRAWS:
            raise ValueError(f"{space.source}: the space has only {len(out)} feasible, distinct "
                             f"architectures ({STALE_DRAWS} draws found no other); ask for "
                             f"--archs {len(out)} or fewer")
        stale += 1
        s = space.sample(FixedSuggest(pinned, fallback=RandomSuggest(rng)))
        if s.model is None or space.violations(s) or s.model.arch_id() in seen:
            continue
        stale = 0
        seen.add(s.model.arch_id())
        params = {k: v for k, v in s.params.items() if not k.startswith("train.")}
        out.append(BenchArch(s.model.arch_id(), "sample", len(out), s.model, params))
    return out


def named_archs(paths: Iterable[str | Path], space: SearchSpace) -> list[BenchArch]:
    """Every runnable row of the experiments at ``paths``, at their reduced scale, as trained on
    the space's data (``adapt_config``); the table trains them with its own recipe."""
    from cvt_nas.ablation.experiment import load_experiment
    from cvt_nas.training.datasets import adapt_config

    train = bench_train_config(space, 1)
    out: list[BenchArch] = []
    for path in paths:
        exp = load_experiment(path)
        for row in exp.runnable("reduced"):
            cfg = adapt_config(exp.model_config(row, "reduced").replace(img_size=space.img_size),
                               train)
            out.append(BenchArch(cfg.arch_id(), "named", -1, cfg,
                                 names=(f"{exp.name}:{row.row}",)))
    return out


def merge_archs(*groups: Sequence[BenchArch]) -> list[BenchArch]:
    """One entry per architecture, in order of first appearance, with every name it has."""
    by_id: dict[str, BenchArch] = {}
    for a in (a for g in groups for a in g):
        prior = by_id.get(a.arch_id)
        if prior is None:
            by_id[a.arch_id] = a
        else:
            names = prior.names + tuple(x for x in a.names if x not in prior.names)
            by_id[a.arch_id] = BenchArch(prior.arch_id, prior.source, prior.sample_index,
                                         prior.cfg, prior.params, names)
    return list(by_id.values())


def write_experiment(archs: Sequence[BenchArch], space: SearchSpace, train: TrainConfig,
                     out: Path, name: str, seeds: int) -> Path:
    """The architectures as the rows of an ablation experiment (``out/experiments/<name>.yaml``):
    each row overrides every field of the space's base preset that differs."""
    check_name(name, "bench study name")
    preset = space.raw.get("base") if isinstance(space.raw.get("base"), str) else "cvt_13"
    base = get_config(str(preset)).to_dict()
    rows = []
    for a in archs:
        model = {k: v for k, v in a.cfg.to_dict().items() if base.get(k) != v}
        rows.append({"row": a.arch_id, "label": " ".join(a.names) or f"sample {a.sample_index}",
                     "model": model})
    data = {
        "name": name,
        "title": f"CvT-Bench: {space.name}",
        "source": f"cvt-nas bench build {space.source}",
        "baseline": archs[0].arch_id,
        "scales": {"reduced": {"base": str(preset), "recipe": space.recipe, "seeds": seeds,
                               "metric": "val_top1",
                               "train": {k: v for k, v in train.to_dict().items()
                                         if k != "seed" and v is not None}}},
        "rows": rows,
    }
    path = out / "experiments" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "# Generated by `cvt-nas bench build`; the table's training runs.\n"
                      + yaml.safe_dump(data, sort_keys=False, width=100))
    return path


# -- building -----------------------------------------------------------------------------------


def default_storage(out: Path) -> str:
    """SQLite file of a table's studies (``DIR/bench.db``)."""
    return f"sqlite:///{out.resolve() / 'bench.db'}"


def build(space_path: str | Path, out: str | Path, *, archs: int, seeds: int = 1,
          named: Sequence[str | Path] = (), epochs: int = 4, sample_seed: int = 0,
          storage: str | None = None, n_workers: int = 1, threads: int | None = None,
          train_overrides: Mapping[str, Any] | None = None, gpus: Sequence[str] = (),
          train_runs: bool = True, log: Log = print) -> dict[str, Any]:
    """Train every missing (architecture, seed) run of a table and export it; return the
    manifest. Resumable (an interrupted build trains only what is missing) and shardable (any
    number of workers and machines on one storage).

    Args:
        space_path: the search-space YAML the architectures are drawn from.
        out: the table's folder.
        archs: how many architectures of the seeded sample to train.
        seeds: training seeds 0 .. seeds-1 of each.
        named: experiment YAMLs whose reduced-scale rows are added.
        epochs: epochs of every run.
        sample_seed: seed of the architecture sample (the table's identity).
        storage: Optuna storage URL or journal file (default: ``DIR/bench.db``).
        n_workers: training processes here.
        threads: torch threads per worker.
        train_overrides: TrainConfig fields that change where or how a run goes (``device``,
            ``data_root``, ...); fields that change the numbers are refused by the manifest
            check when they differ from the table's.
        gpus: GPUs the workers spread over, one each, round-robin.
        train_runs: False: train nothing, only export what the storage holds (while other
            machines build, or after an interrupted build).
        log: progress lines.
    """
    from cvt_nas.ablation.experiment import load_experiment
    from cvt_nas.ablation.runner import open_study, run_experiment

    out = Path(out)
    space = load_space(space_path)
    train = bench_train_config(space, epochs, **dict(train_overrides or {}))
    chosen = merge_archs(sample_archs(space, archs, sample_seed), named_archs(named, space))
    _check_manifest(out, space, train, sample_seed)
    name = f"bench-{space.name}-{archs}x{seeds}" + (f"-n{len(named)}" if named else "")
    exp_path = write_experiment(chosen, space, train, out, name, seeds)
    storage = storage or default_storage(out)
    if train_runs:
        exp = load_experiment(exp_path)
        _claim_study(open_study(exp, "reduced", seeds, storage),
                     table_identity(_sha(space), train.to_dict(), sample_seed), storage)
        log(f"cvt-nas bench build: {len(chosen)} architectures x {seeds} seed(s), {epochs} "
            f"epochs, into {out}")
        run_experiment(exp, "reduced", seeds, storage, n_workers=n_workers, threads=threads,
                       gpus=gpus)
    return export(out, storage, space_path=space_path, epochs=epochs, sample_seed=sample_seed,
                  archs=chosen, train=train, log=log)


def _check_manifest(out: Path, space: SearchSpace, train: TrainConfig, sample_seed: int) -> None:
    """A table grows only with runs of its own space, recipe and sample."""
    path = out / "manifest.json"
    m = _read_manifest(path)
    if m is None:
        return

    def refuse(what: str) -> ValueError:
        return ValueError(f"{path}: this table was built with a different {what}; use another "
                          "--out")

    if m.get("space_sha256") != _sha(space):
        raise refuse(f"space_sha256 ({m.get('space_sha256')!r}, now {_sha(space)!r})")
    now, built = recipe_numbers(train.to_dict()), recipe_numbers(m.get("train", {}))
    if built != now:  # name the fields, not two 30-field dicts
        raise refuse("train (" + ", ".join(f"{f} {built.get(f)!r}, now {now.get(f)!r}"
                                           for f in sorted(set(now) | set(built))
                                           if built.get(f) != now.get(f)) + ")")
    if m.get("sample_seed") != sample_seed:
        raise refuse(f"sample_seed ({m.get('sample_seed')!r}, now {sample_seed!r})")


IDENTITY_ATTR = "bench_table"  # study user attribute: the `table_identity` its runs belong to


def _claim_study(study: Any, identity: str, storage: str) -> None:
    """Stamp a build's study with its table; refuse one that holds another table's runs (a
    storage shared by tables of another recipe or sample under the same study name)."""
    from cvt_nas.common.storage import redact

    stamped = study.user_attrs.get(IDENTITY_ATTR)
    if stamped is None:  # a new study, or one made before studies were stamped
        study.set_user_attr(IDENTITY_ATTR, identity)
    elif stamped != identity:
        raise ValueError(f"{redact(storage)}: study {study.study_name!r} holds the runs of "
                         "another table (a different space, recipe or --sample-seed); give "
                         "this table its own --storage (default: DIR/bench.db)")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """A table's manifest, or None when there is none yet.

    Raises:
        ValueError: it is not a JSON object (one line naming the file).
    """
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); restore it from git or delete the "
                         "folder's manifest.json and re-run with --no-train to rewrite it") from exc
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected a JSON object; restore it from git or delete it and "
                         "re-run with --no-train to rewrite it")
    return m


def _sha(space: SearchSpace) -> str:
    return hashlib.sha256(json.dumps(space.raw, sort_keys=True, default=str).encode()).hexdigest()


# -- exporting ----------------------------------------------------------------------------------


def export(out: str | Path, storage: str, *, space_path: str | Path, epochs: int,
           sample_seed: int, archs: Sequence[BenchArch] | None = None,
           train: TrainConfig | None = None, log: Log = print) -> dict[str, Any]:
    """Write ``table.parquet``, ``archs.parquet`` and ``manifest.json`` from every study of
    ``storage`` (latency and memory are measured here for architectures that lack them).

    Only runs of this table's recipe are exported: a storage shared by tables of other recipes
    (``--epochs``, ``--set``) keeps theirs apart. A pair that never completed is exported as its
    last failed attempt (diverged, error, oom), once."""
    import optuna

    from cvt_nas.common.storage import open_storage, redact

    out = Path(out)
    space = load_space(space_path)
    known = {a.arch_id: a for a in (archs or [])}
    train = train or bench_train_config(space, epochs)
    recipe = _recipe_columns(flatten_train(train.to_dict()))
    st = open_storage(storage, None)
    runs: dict[tuple[str, int], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    failed: dict[tuple[str, int], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    cpus: dict[tuple[str, int], str] = {}  # the CPU model a run trained on (if it was recorded)
    borrowed: list[tuple[tuple[str, int], tuple[dict[str, Any], list[dict[str, Any]]]]] = []
    foreign = skipped = 0
    identity = table_identity(_sha(space), train.to_dict(), sample_seed)
    for summary in st.get_all_studies():
        if not summary.study_name.startswith("bench-"):
            continue
        if summary.user_attrs.get(IDENTITY_ATTR, identity) != identity:
            skipped += 1  # another table's study
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=st)
        for t in study.get_trials(deepcopy=False):  # in trial order: later attempts last
            rec, hist = t.user_attrs.get("record"), t.user_attrs.get("history") or []
            if not rec or "duplicate_of" in t.user_attrs:
                continue
            if _recipe_columns(rec) != recipe:
                foreign += "reused_from" not in t.user_attrs  # count runs, not their copies
                continue
            key = (str(rec["arch_id"]), int(rec.get("seed") or 0))
            if "reused_from" in t.user_attrs:  # a copy: used only if its source is not exported
                if t.state == optuna.trial.TrialState.COMPLETE:
                    borrowed.append((key, (rec, hist)))
                continue
            if t.state == optuna.trial.TrialState.COMPLETE:
                if key not in runs:
                    runs[key] = (rec, hist)
                    if t.user_attrs.get("cpu"):
                        cpus[key] = str(t.user_attrs["cpu"])
            elif rec.get("status") in ("diverged", "failed", "oom"):  # failed: it raised
                status = "error" if rec["status"] == "failed" else rec["status"]
                failed[key] = ({**rec, "status": status}, hist)
    for key, run in borrowed:  # the source trial is in another table's study
        runs.setdefault(key, run)
    failed = {k: v for k, v in failed.items() if k not in runs}
    if foreign or skipped:
        log(f"left out {foreign} runs of another recipe and {skipped} studies of another table "
            f"that {redact(storage)} also holds")
    if not runs and not failed and (foreign or skipped):
        raise ValueError(f"{redact(storage)}: none of its runs has this table's recipe "
                         f"({foreign} runs of another, {skipped} other tables' studies); check "
                         "--epochs, --set and --sample-seed against the table's manifest.json")
    table = _table_rows([*runs.values(), *failed.values()])
    arch_frame = _archs_frame(out, space, known, {k[0] for k in [*runs, *failed]},
                              {**failed, **runs}, log)
    _write_parquet(out / "table.parquet", table)
    _write_parquet(out / "archs.parquet", arch_frame)
    manifest = _manifest(out, space, space_path, train, sample_seed, known, runs, failed, cpus)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out}/table.parquet ({len(table)} rows), archs.parquet ({len(arch_frame)} "
        f"architectures), manifest.json: {manifest['counts']}")
    return manifest


def _recipe_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train.*`` columns of a record that decide a run's numbers (not its seed, device,
    threads, ...): equal for every run of one table."""
    return recipe_numbers({k.removeprefix(TRAIN_PREFIX): v for k, v in record.items()
                           if k.startswith(TRAIN_PREFIX)})


def _table_rows(runs: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for rec, hist in runs:
        seed = int(rec.get("seed") or 0)
        base = {"arch_id": rec["arch_id"], "seed": seed, "status": rec["status"],
                "device": rec.get("device") or "", "threads": rec.get("threads"),
                "trial": rec.get("trial"), "finished_at": rec.get("finished_at") or ""}
        if not hist:
            rows.append({**base, "epoch": 0})
            continue
        clock = 0.0
        for i, h in enumerate(hist):
            train_s, eval_s = float(h.get("time_s") or 0.0), float(h.get("eval_s") or 0.0)
            clock += train_s + eval_s
            last = i == len(hist) - 1 and rec["status"] == "complete"
            rows.append({**base, "epoch": int(h["epoch"]), "train_loss": h.get("train_loss"),
                         "val_top1": h.get("val_top1"), "val_top5": h.get("val_top5"),
                         "train_time_s": train_s, "eval_time_s": eval_s,
                         "cpu_time_s": h.get("cpu_s"), "time_s": clock,
                         "test_top1": rec.get("test_top1") if last else None,
                         "test_top5": rec.get("test_top5") if last else None})
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in ("seed", "epoch", "threads", "trial"):
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    for col in ("train_loss", "val_top1", "val_top5", "train_time_s", "eval_time_s", "cpu_time_s",
                "time_s", "test_top1", "test_top5"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("arch_id", "status", "device", "finished_at"):
        df[col] = df[col].astype("string")
    return df.sort_values(["arch_id", "seed", "epoch"], kind="stable").reset_index(drop=True)


def _archs_frame(out: Path, space: SearchSpace, known: Mapping[str, BenchArch],
                 trained: set[str], runs: Mapping[tuple[str, int], tuple[dict[str, Any], Any]],
                 log: Log) -> pd.DataFrame:
    """One row per trained architecture (also one whose every run failed); measurements of an
    earlier export are kept."""
    prior: dict[str, dict[str, Any]] = {}
    if (out / "archs.parquet").exists():
        prior = {str(r["arch_id"]): r for r in pd.read_parquet(out / "archs.parquet")
                 .to_dict("records")}
    param_names = sorted({k for a in known.values() for k in a.params}
                         | {k[2:] for r in prior.values() for k in r if k.startswith("p:")})
    records = {k[0]: v[0] for k, v in runs.items()}
    rows = []
    todo = sorted(trained)
    for i, arch_id in enumerate(todo):
        a, old = known.get(arch_id), prior.get(arch_id, {})
        cfg = a.cfg if a is not None else CvTConfig.from_dict(json.loads(old.get("arch") or
                                                              records[arch_id]["arch"]))
        row: dict[str, Any] = {
            "arch_id": arch_id,
            "source": a.source if a else old.get("source", "named"),
            "sample_index": a.sample_index if a else old.get("sample_index", -1),
            "name": " ".join(a.names) if a else old.get("name", ""),
            "params": records[arch_id].get("params"), "macs": records[arch_id].get("macs"),
            "latency_ms": old.get("latency_ms", math.nan),
            "peak_train_mem_mb": old.get("peak_train_mem_mb", math.nan),
            "arch": arch_json(cfg),
        }
        if _missing(row["latency_ms"]) or _missing(row["peak_train_mem_mb"]):
            batch = int(records[arch_id].get("train.batch_size") or 128)
            row["latency_ms"], row["peak_train_mem_mb"] = measure(cfg, batch)
            log(f"measured {arch_id} ({i + 1}/{len(todo)}): {row['latency_ms']:.2f} ms batch-1 "
                f"latency, {row['peak_train_mem_mb']:.1f} MB training-step memory")
        for p in param_names:
            row[f"p:{p}"] = (a.params.get(p) if a else old.get(f"p:{p}"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["arch_id", "source", "sample_index", "name", "params", "macs",
                                   "latency_ms", "peak_train_mem_mb", "arch"])
    return df.sort_values(["source", "sample_index", "arch_id"],
                          key=lambda s: s if s.name != "source" else s.map({"sample": 0,
                                                                            "named": 1}),
                          kind="stable").reset_index(drop=True)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def measure(cfg: CvTConfig, batch: int) -> tuple[float, float]:
    """(CPU batch-1 inference latency in ms, median of `LATENCY_REPEATS` on 1 thread; memory of
    one training step at ``batch`` in MB: parameters, gradients, AdamW state and the tensors
    autograd saves, as torch accounts them)."""
    import torch

    from cvt_nas.model.network import CvT
    from cvt_nas.training.memory import measure_saved_bytes, state_bytes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = CvT(cfg).eval()
        x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size)
        times = []
        with torch.inference_mode():
            for i in range(LATENCY_REPEATS + 3):
                start = time.perf_counter()
                model(x)
                if i >= 3:
                    times.append(time.perf_counter() - start)
        xb = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
        yb = torch.randint(0, max(cfg.num_classes, 1), (batch,))
        saved = measure_saved_bytes(model, xb, yb)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times), (state_bytes(cfg) + saved) / 2**20


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _manifest(out: Path, space: SearchSpace, space_path: str | Path, train: TrainConfig,
              sample_seed: int, known: Mapping[str, BenchArch],
              runs: Mapping[tuple[str, int], tuple[dict[str, Any], Any]],
              failed: Mapping[tuple[str, int], Any],
              cpus: Mapping[tuple[str, int], str]) -> dict[str, Any]:
    import optuna
    import timm
    import torch

    import cvt_nas

    old = _read_manifest(out / "manifest.json") or {}
    devices = set(old.get("devices", []))
    for key, (r, _) in runs.items():
        if str(r.get("device")) != "cpu":
            devices.add(str(r.get("device")))
            continue
        # the CPU it trained on (kept with the trial since it was recorded); for an older run,
        # this machine's, unless an earlier export already named the CPUs of its runs
        cpu = cpus.get(key) or (None if old.get("devices") else cpu_name())
        if cpu:
            devices.add(f"cpu ({cpu}, {r.get('threads')} threads)")
    named = sorted({n for a in known.values() for n in a.names} | set(old.get("named", [])))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "format": FORMAT, "space": space.name, "space_file": str(space_path),
        "space_sha256": _sha(space), "space_yaml": Path(space_path).read_text(),
        "recipe": space.recipe, "train": train.to_dict(), "pinned": pinned_train(space),
        "dataset": train.dataset,
        "split": {"train_subset": train.train_subset, "val_fraction": train.val_fraction,
                  "split_seed": train.split_seed, "img_size": train.img_size},
        "epochs": train.epochs, "sample_seed": sample_seed,
        "archs_sampled": max([a.sample_index + 1 for a in known.values()]
                             + [int(old.get("archs_sampled", 0))]),
        "named": named,
        "archs_asked": max(len(known), int(old.get("archs_asked", 0))),
        "seeds": max([k[1] + 1 for k in runs] + [int(old.get("seeds", 0))]),
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "timm": timm.__version__, "optuna": optuna.__version__,
                     "pandas": pd.__version__, "cvt_nas": cvt_nas.__version__},
        "devices": sorted(devices),
        "created": old.get("created", now), "updated": now,
        "counts": {"archs": len({k[0] for k in runs}), "runs": len(runs),
                   "failed": len(failed)},
    }
