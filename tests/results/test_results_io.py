"""Results directories: write_outputs, load/load_many, atomic writes, `cvt-nas report/compare`."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from cvt_nas.cli import main
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.presets import get_config
from cvt_nas.results import (
    atomic_path,
    history_rows,
    hypervolume,
    load,
    load_epochs,
    load_many,
    load_meta,
    make_record,
    pareto_front,
    records_frame,
    write_outputs,
)
from cvt_nas.training.config import get_recipe
from cvt_nas.training.trainer import TrialResult

OBJ = {"val_top1": "max", "macs": "min"}
FILES = ("trials.csv", "trials.parquet", "epochs.parquet", "pareto.csv", "pareto.md",
         "pareto.png", "study.yaml")

# (embed dims, depths, status, val top-1): a small study with every status and a per-block stage.
ARCHS = [
    ((16, 32, 64), (1, 1, 1), "complete", 78.0),
    ((32, 64, 128), (1, 2, 3), "complete", 86.0),
    ((32, 64, 128), (1, 1, 2), "complete", 84.0),
    ((32, 64, 128), (1, 2, 2), "complete", 83.0),  # dominated by the third (84%, fewer MACs)
    ((32, 64, 128), (1, 2, 3), "pruned", 70.0),
    ((64, 128, 256), (1, 2, 3), "infeasible", None),
    ((32, 64, 128), (1, 1, 1), "diverged", None),
    ((16, 32, 64), (1, 1, 4), "failed", None),
]


def build_study(name: str, seed: int = 0, per_block: bool = True) -> tuple[list, list]:
    """Records and epoch rows of real configs, a real TrainConfig and real TrialResults."""
    train = get_recipe("reduced", epochs=2, seed=seed)
    base = get_config("cvt_micro")
    records, epochs = [], []
    for i, (dims, depth, status, top1) in enumerate(ARCHS):
        cfg = base.replace(embed_dim=list(dims), depth=list(depth))
        if per_block and i == 1:
            cfg = cfg.replace(kv_stride=[2, 2, [1, 2, 2]])
        if status == "infeasible":
            records.append(make_record(study=name, trial=i, backend="optuna", model_cfg=cfg,
                                       train_cfg=train, result=None, reason="over budget"))
            continue
        history = [] if top1 is None else [
            {"epoch": e, "train_loss": 1.0 / e, "val_top1": top1 - 2 + e, "val_top5": 99.0,
             "lr": 1e-3, "time_s": 3.0} for e in (1, 2)]
        result = TrialResult(status=status, params=0, macs=0, val_top1=top1, val_top5=None,
                             test_top1=None, test_top5=None, train_loss=None, epochs=len(history),
                             wall_time_s=6.0 + i, images_per_s=700.0, seed=seed,
                             history=history, error="boom" if status == "failed" else None)
        cost = analytic_cost(cfg, train.img_size)
        result.params, result.macs = cost.params, cost.macs
        records.append(make_record(study=name, trial=i, backend="optuna", model_cfg=cfg,
                                   train_cfg=train, result=result))
        epochs += history_rows(name, i, history)
    return records, epochs


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "micro"
    records, epochs = build_study("micro")
    write_outputs(out, records, epochs, OBJ,
                  {"command": "cvt-nas search space.yaml", "space": {"embed_dim": [16, 32, 64]},
                   "settings": {"trials": 8}})
    return out


def test_write_outputs_writes_every_file_and_load_reads_the_same_table(study_dir):
    for name in FILES:
        assert (study_dir / name).stat().st_size > 0, name
    assert not list(study_dir.glob(".*.tmp"))
    assert (study_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records, epochs = build_study("micro")
    df = load(study_dir)
    expected = records_frame(records)
    pd.testing.assert_frame_equal(df.drop(columns="finished_at"),
                                  expected.drop(columns="finished_at"))
    assert load_epochs(study_dir)["trial"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert df["status"].tolist() == [a[2] for a in ARCHS]


def test_pareto_files_hold_the_front(study_dir):
    front = pd.read_csv(study_dir / "pareto.csv")
    assert front["trial"].tolist() == [1, 2, 0]  # best accuracy first; 3 is dominated
    assert "architecture" in front.columns and (front["pareto_rank"] == 1).all()
    md = (study_dir / "pareto.md").read_text()
    assert md.startswith("## Pareto front of micro")
    assert "kv 2/2/(1,2,2)" in md and "| 86.00 |" in md


def test_study_yaml_keeps_meta_and_adds_versions(study_dir):
    meta = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert meta["objectives"] == OBJ
    assert meta["space"] == {"embed_dim": [16, 32, 64]} and meta["settings"] == {"trials": 8}
    assert {"python", "pandas", "optuna"} <= set(meta["versions"])
    assert meta["command"] == "cvt-nas search space.yaml" and meta["n_trials"] == len(ARCHS)
    assert meta["status_counts"]["complete"] == 4
    assert load_meta(study_dir) == meta


def test_csv_only_directory_loads_the_same_table(study_dir, tmp_path):
    (tmp_path / "trials.csv").write_bytes((study_dir / "trials.csv").read_bytes())
    df = load(tmp_path)
    pd.testing.assert_frame_equal(df, load(study_dir))
    assert df["kv_stride_s3"].tolist()[1] == "1,2,2"
    assert pareto_front(df, OBJ)["trial"].tolist() == [1, 2, 0]


def test_a_crash_inside_an_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "trials.csv"
    target.write_text("old,complete\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a ta")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old,complete\n"
    assert list(tmp_path.iterdir()) == [target]


def test_load_errors_say_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no trials.parquet or trials.csv"):
        load(tmp_path)


def test_load_many_labels_studies_and_falls_back_to_folder_names(study_dir, tmp_path):
    for name in ("a", "b"):
        records, epochs = build_study("same", seed=1)
        write_outputs(tmp_path / name, records, epochs, OBJ, {})
    both = load_many([tmp_path / "a", tmp_path / "b"])  # both stored as study "same"
    assert both.groupby("study").size().to_dict() == {"a": len(ARCHS), "b": len(ARCHS)}
    mixed = load_many([study_dir, tmp_path / "a"], names=["x", "y"])
    assert set(mixed["study"]) == {"x", "y"} and mixed["source"].nunique() == 2
    assert load_many([study_dir])["study"].unique().tolist() == ["micro"]


def test_report_regenerates_tables_and_plots(study_dir, tmp_path, capsys):
    work = tmp_path / "copy"
    work.mkdir()
    for name in ("trials.parquet", "epochs.parquet", "study.yaml"):
        (work / name).write_bytes((study_dir / name).read_bytes())
    assert main(["report", str(work)]) == 0
    out = capsys.readouterr().out
    assert "8 trials (4 complete" in out and "| 86.00 |" in out
    assert not (work / "pareto.md").exists()  # reading writes nothing
    assert main(["report", str(work), "--write"]) == 0
    for name in FILES:
        assert (work / name).exists(), name
    assert (work / "pareto.md").read_text() == (study_dir / "pareto.md").read_text()
    meta = load_meta(work)
    assert meta["command"] == load_meta(study_dir)["command"]  # the search's, not report's

    assert main(["report", str(work), "--objective", "val_top1:max", "--objective",
                 "params:min", "--all-ranks", "--latex", "--write"]) == 0
    out = capsys.readouterr().out
    assert r"\toprule" in out and load_meta(work)["objectives"] == {"val_top1": "max",
                                                                       "params": "min"}


def test_report_on_a_wrong_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no trials.parquet or trials.csv" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--objective", "val_top1"]) == 2


def test_compare_overlays_studies_with_one_reference(study_dir, tmp_path, capsys):
    records, epochs = build_study("other", seed=3, per_block=False)
    records = [dict(r, val_top1=(r["val_top1"] or 0) - 5 if r["val_top1"] else None)
               for r in records]
    write_outputs(tmp_path / "other", records, epochs, OBJ, {})
    out_dir = tmp_path / "cmp"
    assert main(["compare", str(study_dir), str(tmp_path / "other"), "--out", str(out_dir),
                 "--ref", "val_top1=0", "--ref", "macs=1e8"]) == 0
    text = capsys.readouterr().out
    assert "| micro |" in text and "| other |" in text
    for name in ("compare.png", "compare.md", "hypervolume.csv", "fronts.csv"):
        assert (out_dir / name).stat().st_size > 0, name
    curves = pd.read_csv(out_dir / "hypervolume.csv")
    final = curves.groupby("study")["hypervolume"].last()
    ref = {"val_top1": 0.0, "macs": 1e8}
    assert final["micro"] == pytest.approx(hypervolume(load(study_dir), OBJ, ref))
    assert final["micro"] > final["other"] > 0
    assert curves.groupby("study")["hypervolume"].apply(lambda s: s.is_monotonic_increasing).all()


def test_a_rewrite_keeps_the_first_created_stamp(tmp_path):
    records, epochs = build_study("again")
    write_outputs(tmp_path, records[:2], epochs, OBJ, {"command": "c"})
    meta = yaml.safe_load((tmp_path / "study.yaml").read_text())
    meta_path = tmp_path / "study.yaml"
    meta["created"] = "2020-01-01T00:00:00+00:00"  # as if written long ago
    meta_path.write_text(yaml.safe_dump(meta))
    write_outputs(tmp_path, records, epochs, OBJ, {"command": "c"})
    again = yaml.safe_load(meta_path.read_text())
    assert again["created"] == "2020-01-01T00:00:00+00:00" and again["updated"] > "2020"
    assert again["n_trials"] == len(ARCHS) and again["study"] == "again"
