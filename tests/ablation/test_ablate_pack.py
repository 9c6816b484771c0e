"""``cvt-nas ablate --pack K``: K run loops in threads of one worker, admitted by the memory
model, on a real SQLite study (CPU here; the CUDA side is scripts/gpu_check.sh's)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from cvt_nas.ablation.runner import MAX_FAILURES, default_storage
from cvt_nas.cli import main
from cvt_nas.common.proc import parse_tag
from cvt_nas.common.storage import open_storage

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "table7_kv_stride.yaml"
TABLE5 = EXPERIMENT.with_name("table5_position_embedding.yaml")
TINY = {"train_subset": 256, "epochs": 1, "val_fraction": 0.005, "batch_size": 64}
NAME = "table7_kv_stride-reduced"


def _ablate(out: Path, *extra: str) -> int:
    return main(["ablate", str(EXPERIMENT), "--scale", "reduced", "--out", str(out),
                 "--seeds", "2", "--threads", "1",
                 *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")], *extra])


def test_two_run_threads_train_every_pair_once_and_record_how_they_ran(tmp_path: Path) -> None:
    out = tmp_path / "t7"
    assert _ablate(out, "--pack", "2") == 0
    study = optuna.load_study(study_name=NAME, storage=open_storage(
        default_storage(out), heartbeat=None))
    trained = [t for t in study.trials if "record" in t.user_attrs
               and "reused_from" not in t.user_attrs]
    assert len(trained) == 4  # nothing trained twice
    done = [t for t in trained if t.state.name == "COMPLETE"]
    pairs = [(t.params["row"], t.params["seed"]) for t in done]
    assert sorted(pairs) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # each once
    records = [t.user_attrs["record"] for t in done]
    assert all(r["memory_estimate"] > 0 and r["retried_alone"] is False for r in records)
    assert max(r["co_tenants"] for r in records) == 1  # side by side, at most two
    assert sum(r["shared"] for r in records) >= 2  # and both know it
    tags = {t.user_attrs["worker"] for t in done}
    assert {tag.rpartition("#")[2] for tag in tags} == {"0", "1"}, tags
    assert {parse_tag(tag).pid for tag in tags} == {os.getpid()}
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    meta = yaml.safe_load((out / "study.yaml").read_text())
    assert meta["settings"]["pack"] == 2
    assert (out / "table.csv").is_file()


def test_failed_pairs_are_retried_once_each_by_the_threads(tmp_path: Path) -> None:
    """Past the grid's first sweep the loops pick missing pairs themselves: two loops of one
    worker never pick the same pair, so each diverging pair is tried exactly `MAX_FAILURES`
    times and none runs as a duplicate."""
    out = tmp_path / "t7"
    _ablate(out, "--pack", "2", "--set", "lr=1e9")  # every run diverges
    study = optuna.load_study(study_name=NAME, storage=open_storage(default_storage(out),
                                                                     heartbeat=None))
    assert [t.state.name for t in study.trials] == ["FAIL"] * 4 * MAX_FAILURES
    tries = Counter((t.params["row"], t.params["seed"]) for t in study.trials)
    assert tries == {p: MAX_FAILURES for p in [("a", 0), ("a", 1), ("b", 0), ("b", 1)]}
    assert not [t for t in study.trials if "duplicate_of" in t.user_attrs]


def test_an_unpacked_table_does_not_reuse_a_packed_run(tmp_path: Path) -> None:
    """Packed runs are not bit-for-bit the runs alone: Table 5's baseline row f (Table 7's row
    b), run unpacked on the same storage, trains its own runs."""
    assert _ablate(tmp_path / "t7", "--pack", "2") == 0
    assert main(["ablate", str(TABLE5), "--scale", "reduced", "--out", str(tmp_path / "t5"),
                 "--seeds", "2", "--threads", "1",
                 *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]) == 0
    t5 = optuna.load_study(study_name="table5_position_embedding-reduced",
                           storage=open_storage(default_storage(tmp_path / "t5"), heartbeat=None))
    baseline = [t for t in t5.trials if t.params.get("row") == "f" and "record" in t.user_attrs]
    assert len(baseline) == 2 and not [t for t in baseline if "reused_from" in t.user_attrs]
    assert "co_tenants" not in baseline[0].user_attrs["record"]


def test_pack_zero_is_one_line_and_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _ablate(tmp_path / "t7", "--pack", "0") == 2
    err = capsys.readouterr().err
    assert "--pack: expected an integer >= 1" in err and err.count("\n") == 1
    assert not (tmp_path / "t7").exists()
