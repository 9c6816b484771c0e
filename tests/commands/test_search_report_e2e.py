"""End to end: the README's `cvt-nas search` (shrunk to 2 short trials), then `cvt-nas report`,
the importer and experiments/analyse_results.py on what it wrote."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pandas as pd
import pytest

from cvt_nas.cli import main
from cvt_nas.results import from_optuna, load, load_meta, pareto_front

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "search_spaces" / "cvt_micro.yaml"

# About 25 s on 2 shared cores (3 trials, 1 epoch on 256 images, evaluation on 6000).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cvt_nas.commands.search") is None,
                                reason="cvt-nas search is not installed in this tree")


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    from cvt_nas.training.data import dataset_info

    try:
        dataset_info("fashion-mnist")
    except FileNotFoundError as exc:
        pytest.skip(f"no Fashion-MNIST here: {exc}")
    out = tmp_path_factory.mktemp("search") / "results" / "cvt_micro"
    code = main(["search", str(SPACE), "--trials", "3", "--out", str(out),
                 "--set", "train.epochs=1", "--set", "train.train_subset=256",
                 "--threads", "1", "--quiet"])
    assert code == 0
    return out


def test_report_regenerates_a_real_search_output(search_dir, capsys):
    stored_md = (search_dir / "pareto.md").read_text()
    for name in ("pareto.md", "pareto.csv", "pareto.png", "trials.csv"):
        (search_dir / name).unlink()
    assert main(["report", str(search_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and "from the study in sqlite:///" in out  # its study.db
    assert "| trial | val top-1 (%) |" in out
    assert not (search_dir / "pareto.md").exists()  # report reads; --write writes
    assert main(["report", str(search_dir), "--write"]) == 0
    assert (search_dir / "pareto.md").read_text() == stored_md
    meta = load_meta(search_dir)
    assert meta["objectives"] == {"val_top1": "max", "macs": "min"}
    assert "search" in meta["command"] and meta["space"]["name"] == "cvt_micro"


def test_real_search_table_matches_its_optuna_storage(search_dir):
    df = load(search_dir)
    assert len(df) == 3 and set(df["backend"]) == {"optuna"}
    assert df["macs"].notna().all() and (df["train.epochs"] == 1).all()
    front = pareto_front(df, {"val_top1": "max", "macs": "min"})
    assert set(front["status"]) <= {"complete"}
    imported = from_optuna(f"sqlite:///{search_dir / 'study.db'}", "cvt_micro").trials
    pd.testing.assert_frame_equal(imported, df)


def test_analysis_example_prints_the_pareto_table(search_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["analyse_results.py", str(search_dir)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "experiments" / "analyse_results.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "## Pareto front" in out and "architecture" in out and "hypervolume" in out
