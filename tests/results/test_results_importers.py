"""Importers: a real Optuna SQLite study and a real Ray Tune experiment give the same table."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import optuna
import pandas as pd
import pytest

from cvt_nas.model.presets import get_config
from cvt_nas.results import (
    from_optuna,
    from_ray,
    history_rows,
    make_record,
    records_frame,
)
from cvt_nas.training.config import get_recipe
from cvt_nas.training.trainer import TrialResult

TRAIN = get_recipe("reduced", epochs=2)
# (depths, status, val top-1); one trial per row, the last one crashes before storing a record.
PLAN = [((1, 1, 1), "complete", 80.0), ((1, 2, 3), "complete", 85.0),
        ((1, 2, 2), "pruned", 60.0), ((2, 2, 4), "infeasible", None)]


def _records(backend: str) -> tuple[list[dict], list[list[dict]]]:
    base = get_config("cvt_micro")
    records, histories = [], []
    for i, (depth, status, top1) in enumerate(PLAN):
        cfg = base.replace(depth=list(depth), kv_stride=[2, 2, [1] + [2] * (depth[2] - 1)])
        history = [] if top1 is None else [
            {"epoch": e, "train_loss": 1.0 / e, "val_top1": top1 - 2 + e, "val_top5": 99.0,
             "lr": 1e-3, "time_s": 2.0} for e in (1, 2)]
        result = None if top1 is None else TrialResult(
            status=status, params=1000 + i, macs=2000 + i, val_top1=top1, val_top5=99.0,
            test_top1=None, test_top5=None, train_loss=0.5, epochs=2, wall_time_s=4.0,
            images_per_s=500.0, seed=0, history=history, device="cpu", threads=1)
        records.append(make_record(study="imp", trial=i, backend=backend, model_cfg=cfg,
                                   train_cfg=TRAIN, result=result,
                                   reason="budget" if result is None else None))
        histories.append(history)
    return records, histories


@pytest.fixture(scope="module")
def optuna_tables(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'study.db'}"
    records, histories = _records("optuna")
    study = optuna.create_study(study_name="imp", storage=url, directions=["maximize",
                                                                          "minimize"])
    for record, history in zip(records, histories, strict=True):
        trial = study.ask()
        trial.set_user_attr("record", record)
        trial.set_user_attr("history", history)
        if record["status"] == "complete":
            study.tell(trial, [record["val_top1"], record["macs"]])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    crashed = study.ask()  # a worker died before it stored a record
    study.tell(crashed, state=optuna.trial.TrialState.FAIL)
    study.ask()  # still running: not a result yet
    return url, records, histories, from_optuna(url, "imp")


def test_optuna_import_rebuilds_records_and_epochs(optuna_tables):
    url, records, histories, (trials, epochs) = optuna_tables
    expected = records_frame(records)
    got = trials.iloc[: len(records)]
    pd.testing.assert_frame_equal(got, expected)
    stub = trials.iloc[len(records)]
    assert (stub["trial"], stub["status"], stub["backend"]) == (4, "failed", "optuna")
    assert "no record" in stub["reason"] and pd.isna(stub["macs"])
    assert len(trials) == len(records) + 1  # the running trial is left out
    rows = [r for i, h in enumerate(histories) for r in history_rows("imp", i, h)]
    assert epochs[["trial", "epoch", "val_top1"]].to_dict("records") == \
        [{"trial": r["trial"], "epoch": r["epoch"], "val_top1": r["val_top1"]} for r in rows]
    assert from_optuna(url).trials.shape == trials.shape  # the only study needs no name


def test_optuna_import_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        from_optuna(str(tmp_path / "missing.log"))
    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url)
    with pytest.raises(ValueError, match=r"holds studies \['a', 'b'\]; name one"):
        from_optuna(url)
    with pytest.raises(ValueError, match="no study 'c'"):
        from_optuna(url, "c")


@pytest.fixture(scope="module")
def ray_tables(tmp_path_factory):
    """Run a real 5-trial Tune experiment on a local 1-CPU Ray (about 20 s here)."""
    ray = pytest.importorskip("ray")
    from ray import tune

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    records, histories = _records("ray")
    payload = [(json.dumps(r), json.dumps(h)) for r, h in zip(records, histories, strict=True)]

    def trainable(config):  # nested, so Ray pickles it by value
        from ray import tune as rtune

        i = config["i"]
        if i >= len(payload):
            raise RuntimeError("worker crashed before reporting a record")
        record_json, history_json = payload[i]
        rtune.report({"epoch": 1, "val_top1": 1.0})
        rtune.report({"epoch": 2, "record_json": record_json, "history_json": history_json})

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must be short
    storage = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"i": tune.grid_search(list(range(len(records) + 1)))},
            run_config=tune.RunConfig(storage_path=str(storage), name="exp", verbose=0),
        )
        tuner.fit()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return records, from_ray(storage / "exp")


def test_ray_import_rebuilds_records_and_epochs(ray_tables):
    records, (trials, epochs) = ray_tables
    expected = records_frame(records)
    pd.testing.assert_frame_equal(trials.iloc[: len(records)], expected)
    stub = trials.iloc[len(records)]
    assert (stub["trial"], stub["status"], stub["backend"]) == (4, "failed", "ray")
    assert "worker crashed" in stub["error"]
    assert sorted(set(epochs["trial"])) == [0, 1, 2]


def test_both_backends_give_identical_columns_and_dtypes(optuna_tables, ray_tables):
    optuna_trials, optuna_epochs = optuna_tables[3]
    ray_trials, ray_epochs = ray_tables[1]
    assert optuna_trials.columns.tolist() == ray_trials.columns.tolist()
    assert optuna_trials.dtypes.to_dict() == ray_trials.dtypes.to_dict()
    assert optuna_epochs.columns.tolist() == ray_epochs.columns.tolist()
    same = ["arch_id", "status", "macs", "val_top1", "kv_stride_s3", "train.lr"]
    pd.testing.assert_frame_equal(optuna_trials[same], ray_trials[same])


def test_ray_import_of_a_non_experiment_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Ray Tune experiment directory"):
        from_ray(tmp_path)


def test_ray_trial_number_of_a_crashed_trial_comes_from_its_folder(tmp_path):
    """Ray's 5-character trial hash may be all digits; the index is the 5 digits after it."""
    exp = tmp_path / "exp"
    crashed = exp / "trainable_12345_00004_4_i=4_2026-11-25_12-52-32"
    crashed.mkdir(parents=True)
    (crashed / "result.json").write_text("")
    (crashed / "params.json").write_text('{"i": 4}')
    (crashed / "error.txt").write_text("Traceback ...\nRuntimeError: out of disk\n")
    trials = from_ray(exp).trials
    assert trials[["trial", "status", "error"]].to_dict("records") == [
        {"trial": 4, "status": "failed", "error": "RuntimeError: out of disk"}]


# -- the one study reader: which trials are results ----------------------------------------


def test_one_rule_set_for_every_reader_of_a_study(tmp_path):
    """Surplus, raced, retried, crashed, running and waiting trials, read by the search's own
    tables, the importer and an ablation table alike."""
    from cvt_nas.ablation.table import table_records
    from cvt_nas.results import read_study, study_records
    from cvt_nas.search.study import collect

    url = f"sqlite:///{tmp_path / 'rules.db'}"
    records, histories = _records("optuna")
    study = optuna.create_study(study_name="imp", storage=url, directions=["maximize",
                                                                          "minimize"])
    dist = {"x": optuna.distributions.IntDistribution(0, 9)}

    def add(state, number_params, record=None, **attrs):
        system = attrs.pop("system", {})
        study.add_trial(optuna.trial.create_trial(
            state=state, params={"x": number_params}, distributions=dist,
            values=[1.0, 1.0] if state == optuna.trial.TrialState.COMPLETE else None,
            user_attrs={**({"record": record, "history": [{"epoch": 1, "val_top1": 50.0}]}
                           if record else {}), **attrs},
            system_attrs=system))

    C, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    add(C, 0, {**records[0], "trial": 0, "row": "a", "seed": 0})            # 0: a result
    add(F, 1)                                                               # 1: died, retried
    add(C, 1, {**records[1], "trial": 2, "row": "b", "seed": 0},
        system={"failed_trial": 1})                                        # 2: the retry
    add(F, 3, system={"fail_reason": "boom"})                               # 3: crashed: a row
    add(C, 4, {**records[0], "trial": 4, "row": "a", "seed": 0},
        duplicate_of=0)                                                     # 4: lost a race
    add(F, 5, surplus=True)                                                 # 5: study was full
    add(optuna.trial.TrialState.WAITING, 6)                                 # 6: not yet
    study.ask()                                                             # 7: running

    recs, epochs = study_records(study)
    assert [r["trial"] for r in recs] == [0, 2, 3]
    stub = recs[2]
    assert (stub["status"], stub["backend"], stub["error"]) == ("failed", "optuna", "boom")
    assert stub["reason"] == "no record stored with the trial" and stub["finished_at"]
    assert [e["trial"] for e in epochs] == [0, 2]
    assert collect(study) == (recs, epochs)  # the search's results directory
    trials, frame_epochs = from_optuna(url, "imp")
    assert trials["trial"].tolist() == [0, 2, 3] and frame_epochs["trial"].tolist() == [0, 2]
    pd.testing.assert_frame_equal(trials, read_study(study).trials)
    table, _ = table_records(read_study(study), seeds=1)  # an ablation table's records
    assert table[["row", "seed", "trial"]].to_dict("records") == [
        {"row": "a", "seed": 0, "trial": 0}, {"row": "b", "seed": 0, "trial": 2}]


def test_reading_a_missing_storage_creates_nothing(tmp_path):
    for url in (f"sqlite:///{tmp_path / 'new' / 'study.db'}", str(tmp_path / "new" / "s.journal")):
        with pytest.raises(ValueError, match=r"no such file .*new"):
            from_optuna(url)
    assert list(tmp_path.iterdir()) == []  # no empty database, not even its folder
    with pytest.raises(ValueError, match="not a storage URL"):
        from_optuna(str(tmp_path / "study.db"))  # a bare path is not a journal
    (tmp_path / "junk.db").write_text("not sqlite")
    with pytest.raises(ValueError, match="cannot (open|read) Optuna storage"):
        from_optuna(f"sqlite:///{tmp_path / 'junk.db'}")
