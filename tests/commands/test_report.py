"""`cvt-nas report` reads, and writes only with --write; it prefers the study to the tables, and
refuses damaged tables with one line naming the file and column. `--out` naming a file is a
clear error for every command that writes a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from cvt_nas.cli import main
from cvt_nas.model.presets import get_config
from cvt_nas.results import load, make_record, study_records, write_outputs
from cvt_nas.training.config import get_recipe
from cvt_nas.training.trainer import TrialResult

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "results" / "cvt_micro"
OBJECTIVES = {"val_top1": "max", "macs": "min"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The committed files only, read from elsewhere: a local run of the README command leaves
    its (ignored) study storage, which study.yaml names relative to the repository, and `report`
    would read it instead of the tables."""
    out = tmp_path / "cvt_micro"
    shutil.copytree(MICRO, out, ignore=shutil.ignore_patterns("study.db", "study.journal"))
    monkeypatch.chdir(tmp_path)
    return out


def test_report_reads_and_writes_nothing(committed: Path, capsys) -> None:
    before = _snapshot(committed)
    assert main(["report", str(committed)]) == 0
    out = capsys.readouterr().out
    assert "10 trials (7 complete, 3 infeasible) from its tables" in out
    assert "| 8 | 78.15 | 13.76 |" in out
    assert _snapshot(committed) == before  # not even study.yaml's `updated:`


def test_report_write_rebuilds_the_committed_files(committed: Path, capsys) -> None:
    stored = _snapshot(committed)
    for name in ("pareto.md", "pareto.csv", "pareto.png", "trials.csv"):
        (committed / name).unlink()
    assert main(["report", str(committed), "--write"]) == 0
    assert "wrote trials.csv, trials.parquet" in capsys.readouterr().out
    now = _snapshot(committed)
    for name in ("pareto.md", "pareto.csv", "trials.csv"):
        assert now[name] == stored[name], name
    meta = yaml.safe_load(now["study.yaml"])
    assert meta["created"] == "2026-11-30T10:16:34+00:00"  # kept; `updated` is now
    assert meta["objectives"] == OBJECTIVES and meta["study"] == "cvt_micro"


@pytest.mark.parametrize(("damage", "message"), [
    ("cut", "trials.csv: line 8 has"),
    ("status", "trials.csv: column 'status', trial 3: 'done' is not one of"),
    ("type", "trials.csv: column 'val_top1', trial 3: 'high' is not a number"),
    ("range", "trials.csv: column 'val_top1', trial 3: 180.0 is not in [0, 100]"),
])
def test_damaged_tables_are_one_clear_error(committed: Path, damage: str, message: str,
                                            capsys) -> None:
    (committed / "trials.parquet").unlink()
    csv = committed / "trials.csv"
    if damage == "cut":
        data = csv.read_bytes()
        csv.write_bytes(data[: len(data) * 2 // 3])
    else:
        df = pd.read_csv(csv)
        col, value = {"status": ("status", "done"), "type": ("val_top1", "high"),
                      "range": ("val_top1", 180.0)}[damage]
        df[col] = df[col].astype(object)
        df.loc[3, col] = value
        df.to_csv(csv, index=False)
    before = _snapshot(committed)
    assert main(["report", str(committed)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "--write" in err, err
    assert _snapshot(committed) == before


def test_parquet_and_csv_that_disagree_are_an_error(committed: Path, capsys) -> None:
    lines = (committed / "trials.csv").read_text().splitlines(keepends=True)
    (committed / "trials.csv").write_text("".join(lines[:-3]))  # cut at a line end
    assert main(["report", str(committed)]) == 2
    assert "trials.parquet (10 rows) and trials.csv (7 rows) hold different trials" in \
        capsys.readouterr().err


def _study_dir(tmp_path: Path) -> tuple[Path, str]:
    """A results directory beside its study.db, as `cvt-nas search` leaves it (no training)."""
    out = tmp_path / "s"
    out.mkdir()
    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    base, train = get_config("cvt_micro"), get_recipe("reduced", epochs=1)
    for i, top1 in enumerate((70.0, 75.0, 72.0)):
        cfg = base.replace(depth=[1, 1, 1 + i])
        result = TrialResult(status="complete", params=None, macs=None, val_top1=top1,
                             val_top5=99.0, test_top1=None, test_top5=None, train_loss=0.5,
                             epochs=1, wall_time_s=1.0, images_per_s=100.0, seed=0,
                             history=[{"epoch": 1, "val_top1": top1}], device="cpu", threads=1)
        record = make_record(study="s", trial=i, backend="optuna", model_cfg=cfg,
                             train_cfg=train, result=result)
        trial = study.ask()
        trial.set_user_attr("record", record)
        trial.set_user_attr("history", result.history)
        study.tell(trial, [top1, record["macs"]])
    write_outputs(out, *study_records(study), OBJECTIVES,
                  {"settings": {"storage": url}})
    return out, url


def test_report_reads_the_study_beside_damaged_tables(tmp_path: Path, capsys) -> None:
    out, url = _study_dir(tmp_path)
    (out / "trials.parquet").unlink()
    data = (out / "trials.csv").read_bytes()
    (out / "trials.csv").write_bytes(data[: len(data) // 2])
    before = _snapshot(out)
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"3 trials (3 complete) from the study in {url}" in captured.out
    assert "trials.csv: line" in captured.err and "--write rebuilds them" in captured.err
    assert _snapshot(out) == before
    assert main(["report", str(out), "--write"]) == 0
    assert len(load(out)) == 3 and (out / "trials.parquet").exists()


def test_report_reads_a_study_whose_tables_are_gone(tmp_path: Path, capsys) -> None:
    out, _ = _study_dir(tmp_path)
    for name in ("trials.csv", "trials.parquet"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert "3 trials (3 complete) from the study" in capsys.readouterr().out
    assert main(["report", str(out), "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("command", ["compare", "search", "ablate", "train"])
def test_out_naming_a_file_is_a_clear_error(tmp_path: Path, command: str, capsys) -> None:
    file = tmp_path / "taken"
    file.write_text("mine")
    argv = {"compare": ["compare", str(MICRO), "--out", str(file)],
            "search": ["search", str(ROOT / "tests" / "data" / "tiny_space.yaml"), "--out",
                       str(file / "sub"), "--dry-run"],
            "ablate": ["ablate", str(ROOT / "experiments" / "table7_kv_stride.yaml"),
                       "--out", str(file), "--seeds", "1"],
            "train": ["train", "--model", "cvt_micro", "--out", str(file)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out '{file}" in err and "file" in err, err
    assert file.read_text() == "mine"
