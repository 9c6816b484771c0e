"""`cvt-nas train` writes the standard record and its history, which `results.load` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cvt_nas.model.presets import get_config
from cvt_nas.results import load, load_epochs, make_record, records_frame
from cvt_nas.results.io import read_run, write_run
from cvt_nas.training.config import get_recipe
from cvt_nas.training.trainer import TrialResult

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_file_loads_like_a_results_directory(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_top1": 70.0 + e, "val_top5": 99.0,
                "lr": 1e-3, "time_s": 2.0} for e in (1, 2)]
    result = TrialResult(status="complete", params=1, macs=2, val_top1=72.0, val_top5=99.0,
                         test_top1=71.0, test_top5=98.0, train_loss=0.5, epochs=2,
                         wall_time_s=4.0, images_per_s=500.0, seed=0, history=history,
                         device="cpu", threads=1)
    record = make_record(study="smoke", trial=0, backend="train", model_cfg=get_config(
        "cvt_micro"), train_cfg=get_recipe("reduced"), result=result, extra={"recipe": "reduced"})
    path = write_run(tmp_path / "smoke.json", record, history)
    assert json.loads(path.read_text()) == {"record": record, "history": history}
    assert read_run(path) == (record, history)
    pd.testing.assert_frame_equal(load(path), records_frame([record]))
    epochs = load_epochs(path)
    assert epochs["epoch"].tolist() == [1, 2] and set(epochs["study"]) == {"smoke"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_old_run_file_is_named_as_such() -> None:
    old = ROOT / "results" / "baselines" / "cvt_micro_fashion_mnist.json"
    with pytest.raises(ValueError, match="older cvt-nas train: rerun its 'command'"):
        load(old)
