"""One ablation table end to end at a tiny budget: train, table, resume without retraining."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cvt_nas.cli import main
from cvt_nas.training.data import load_dataset

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "table7_kv_stride.yaml"
TINY = ["--seeds", "1", "--threads", "1", "--set", "train_subset=256", "--set", "epochs=1",
        "--set", "val_fraction=0.005", "--set", "batch_size=64"]


def _have_fashion_mnist() -> bool:
    try:
        load_dataset("fashion-mnist")  # memoized: the trial reuses it
    except (FileNotFoundError, ValueError):
        return False
    return True


@pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not installed "
                    "(scripts/setup.sh installs it)")
def test_table7_tiny_end_to_end_and_resume(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "table7"
    args = ["ablate", str(EXPERIMENT), "--scale", "reduced", "--out", str(out), *TINY]
    assert main(args) == 0
    log = capsys.readouterr().out.splitlines()
    ends = [line for line in log if ": complete val_top1" in line]
    assert len(ends) == 2
    # each finished run says how far the grid is, and the first how long the rest should take
    assert "; 1/2 done, about " in ends[0] and "left at this worker's pace" in ends[0]
    assert ends[1].endswith("; 2/2 done")
    assert all(re.search(r"img/s, CPU \d+% of \d+ threads\)", line) for line in ends)
    table = pd.read_csv(out / "table.csv").set_index("row")
    assert list(table.index) == ["a", "b"]
    assert (table["seeds"] == 1).all()
    assert table["top1_mean"].between(0, 100).all()
    # cost columns are the paper-scale architecture, run_* the trained one (1 channel, 10 classes)
    assert table.loc["a", "macs"] == 6_643_074_560
    assert table.loc["a", "run_macs"] > table.loc["b", "run_macs"]
    assert table.loc["a", "delta"] == pytest.approx(
        table.loc["a", "top1_mean"] - table.loc["b", "top1_mean"])
    assert table.loc["b", "delta"] == 0.0
    records = pd.read_csv(out / "records.csv")
    assert sorted(records["row"]) == ["a", "b"]
    assert (records["status"] == "complete").all() and (records["backend"] == "ablate").all()
    assert (records["train.train_subset"] == 256).all()
    assert "| a | k/v stride 1 |" in (out / "table.md").read_text()
    assert "cvt-nas ablate" in (out / "command.txt").read_text()

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.load_study(study_name="table7_kv_stride-reduced", storage=storage)
    first = {t.number for t in study.trials}
    assert len(first) == 2
    for t in study.trials:
        assert t.user_attrs["record"]["row"] == t.params["row"]
        assert len(t.user_attrs["history"]) == 1

    # Resume: every (row, seed) is complete, so nothing trains and the table is unchanged.
    capsys.readouterr()
    assert main(args) == 0
    assert "training" not in capsys.readouterr().out
    study = optuna.load_study(study_name="table7_kv_stride-reduced", storage=storage)
    assert {t.number for t in study.trials} == first
    again = pd.read_csv(out / "table.csv").set_index("row")
    pd.testing.assert_series_equal(again["top1_mean"], table["top1_mean"])
