"""``cvt-nas ablate --pack K``: K run loops in threads of one worker, admitted by the memory
model, on a real SQLite study (CPU here; the CUDA side is scripts/gpu_check.sh's)."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from cvt_nas.ablation.runner import default_storage
from cvt_nas.cli import main
from cvt_nas.common.proc import parse_tag
from cvt_nas.common.storage import open_storage

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "table7_kv_stride.yaml"
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
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "record" in t.user_attrs
            and "duplicate_of" not in t.user_attrs]
    pairs = [(t.params["row"], t.params["seed"]) for t in done]
    assert sorted(pairs) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # each once
    records = [t.user_attrs["record"] for t in done]
    assert all(r["memory_estimate"] > 0 and r["retried_alone"] is False for r in records)
    assert max(r["co_tenants"] for r in records) == 1  # side by side, at most two
    tags = {t.user_attrs["worker"] for t in done}
    assert {tag.rpartition("#")[2] for tag in tags} == {"0", "1"}, tags
    assert {parse_tag(tag).pid for tag in tags} == {os.getpid()}
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    meta = yaml.safe_load((out / "study.yaml").read_text())
    assert meta["settings"]["pack"] == 2
    assert (out / "table.csv").is_file()


def test_pack_zero_is_one_line_and_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _ablate(tmp_path / "t7", "--pack", "0") == 2
    err = capsys.readouterr().err
    assert "--pack: expected an integer >= 1" in err and err.count("\n") == 1
    assert not (tmp_path / "t7").exists()
