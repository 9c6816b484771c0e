"""`cvt-nas bench build`: a seeded architecture sample trained into a table that grows across
runs without training anything twice (real training on Fashion-MNIST, tiny space)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cvt_nas.bench import load
from cvt_nas.bench.build import (
    FORMAT,
    IDENTITY_ATTR,
    TABLE_COLUMNS,
    bench_train_config,
    build,
    export,
    merge_archs,
    named_archs,
    pinned_train,
    sample_archs,
)
from cvt_nas.cli import main
from cvt_nas.common.proc import cpu_name
from cvt_nas.space import load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 architectures x 1 seed, 1 epoch, then grown to 3 architectures (one more run)."""
    out = tmp_path_factory.mktemp("bench")
    build(TINY, out, archs=2, seeds=1, epochs=1, threads=2, log=_quiet)
    first = pd.read_parquet(out / "table.parquet")
    first.to_parquet(out / "first.parquet")
    build(TINY, out, archs=3, seeds=1, epochs=1, threads=2, log=_quiet)
    return out


def test_sample_is_seeded_feasible_distinct_and_a_prefix_of_longer_samples() -> None:
    space = load_space(ROOT / "search_spaces" / "cvt_micro.yaml")
    short, long = sample_archs(space, 20, seed=0), sample_archs(space, 60, seed=0)
    assert [a.arch_id for a in short] == [a.arch_id for a in long[:20]]
    assert len({a.arch_id for a in long}) == 60
    assert all(not space.violations(a.cfg) for a in long)
    assert [a.arch_id for a in sample_archs(space, 20, seed=1)] != [a.arch_id for a in short]
    # the parameters rebuild the architecture, with the training fields pinned
    assert all(space.build({**a.params, "train.lr": 0.002}).model == a.cfg for a in long[:5])


def test_a_space_smaller_than_asked_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"only 40 feasible, distinct architectures.*--archs 40"):
        sample_archs(load_space(TINY), 41)


def test_sampled_training_fields_are_pinned_to_the_recipe_or_the_range_middle() -> None:
    base = {"name": "p", "base": "cvt_micro", "model": {"depth": [1, 1, 1]}}
    inside = parse_space({**base, "train": {"recipe": "reduced",
                                            "lr": {"float": [1e-3, 4e-3], "log": True}}}, "x")
    outside = parse_space({**base, "train": {"recipe": "reduced",
                                             "lr": {"float": [1e-4, 1e-2], "log": True},
                                             "warmup_epochs": {"float": [2.0, 4.0]}}}, "y")
    assert pinned_train(inside) == {"lr": 0.002}  # the reduced recipe's lr lies in the range
    pinned = pinned_train(outside)
    assert pinned["lr"] == 0.002
    assert pinned["warmup_epochs"] == pytest.approx(3.0)  # recipe's 1.0 is outside: the middle


def test_named_rows_join_the_sample_once_with_their_names() -> None:
    space = load_space(ROOT / "search_spaces" / "cvt_micro.yaml")
    named = named_archs([ROOT / "experiments" / "table7_kv_stride.yaml"], space)
    assert named and all(a.source == "named" and a.names[0].startswith("table7_kv_stride:")
                         for a in named)
    assert all(a.cfg.num_classes == 10 and a.cfg.in_chans == 1 for a in named)
    twice = merge_archs(named, named)
    assert [a.arch_id for a in twice] == list(dict.fromkeys(a.arch_id for a in named))


def test_table_has_every_run_epoch_and_measurement(table: Path) -> None:
    t = pd.read_parquet(table / "table.parquet")
    a = pd.read_parquet(table / "archs.parquet")
    m = json.loads((table / "manifest.json").read_text())
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert len(a) == 3 and a["arch_id"].is_unique and list(a["sample_index"]) == [0, 1, 2]
    space = load_space(TINY)
    want = [x.arch_id for x in sample_archs(space, 3)]
    assert list(a["arch_id"]) == want
    assert set(t["arch_id"]) == set(want) and (t["epoch"] == 1).all() and len(t) == 3
    assert t["val_top1"].between(0, 100).all() and t["test_top1"].between(0, 100).all()
    assert (t["train_time_s"] > 0).all() and (t["eval_time_s"] > 0).all()
    assert (t["time_s"] == t["train_time_s"] + t["eval_time_s"]).all()
    assert (t["cpu_time_s"] > 0).all()  # the process's CPU seconds over each epoch
    assert (a["latency_ms"] > 0).all() and (a["peak_train_mem_mb"] > 0).all()
    for _, row in a.iterrows():  # the p: columns rebuild each architecture
        params = {c[2:]: row[c] for c in a.columns if c.startswith("p:")}
        sample = space.build({**{k: (v.item() if hasattr(v, "item") else v)
                                 for k, v in params.items()}, "train.lr": 0.002})
        assert sample.arch_id == row["arch_id"]
        assert sample.model is not None and row["params"] == space.cost(sample.model).params
    assert m["format"] == FORMAT and m["space"] == "tiny" and m["epochs"] == 1
    assert m["counts"] == {"archs": 3, "runs": 3, "failed": 0} and m["archs_asked"] == 3
    assert m["pinned"] == {"lr": 0.002} and m["train"]["lr"] == 0.002
    assert m["archs_sampled"] == 3 and m["seeds"] == 1
    assert m["devices"] == [f"cpu ({cpu_name()}, 2 threads)"]  # the CPU each run trained on


def test_growing_the_table_trains_only_the_new_architecture(table: Path) -> None:
    first = pd.read_parquet(table / "first.parquet")
    now = pd.read_parquet(table / "table.parquet")
    kept = now[now["arch_id"].isin(first["arch_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first)  # the same runs, not retrained
    storage = optuna.storages.RDBStorage(f"sqlite:///{table / 'bench.db'}")
    trained = {s.study_name: sum("reused_from" not in t.user_attrs for t in
                                 storage.get_all_trials(s._study_id))
               for s in storage.get_all_studies()}
    assert trained == {"bench-tiny-2x1-reduced": 2, "bench-tiny-3x1-reduced": 1}
    assert {t.user_attrs.get("cpu") for s in storage.get_all_studies()  # where each ran
            for t in storage.get_all_trials(s._study_id)} == {cpu_name()}


def test_a_table_only_grows_with_its_own_recipe(table: Path) -> None:
    with pytest.raises(ValueError, match=r"manifest.json: this table was built with a "
                                         r"different train \(epochs 1, now 2\); use another --out"):
        build(TINY, table, archs=3, seeds=1, epochs=2, log=_quiet)
    with pytest.raises(ValueError, match="different sample_seed"):
        build(TINY, table, archs=3, seeds=1, epochs=1, sample_seed=3, log=_quiet)


@pytest.mark.parametrize(("args", "message"), [
    (["--archs", "0"], "--archs: expected an integer >= 1"),
    (["--archs", "2", "--set", "lr=0.1"], "--set lr: a table's runs share one recipe"),
    (["--archs", "41"], "only 40 feasible"),
    (["--archs", "2", "--named", "nope.yaml"], "nope.yaml"),
    (["--archs", "2", "--gpus", "1"], "--gpus 1: no GPU is visible here"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    out = tmp_path / "t"
    assert main(["bench", "build", str(TINY), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "bench.db").exists()  # nothing trained, no study opened


def test_out_naming_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["bench", "build", str(TINY), "--archs", "1", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "Traceback" not in err


def test_the_manifest_records_the_recipe_the_runs_used(tmp_path: Path) -> None:
    build(TINY, tmp_path, archs=1, epochs=1, train_overrides={"train_subset": 200}, log=_quiet)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["train"]["train_subset"] == 200 and m["split"]["train_subset"] == 200
    build(TINY, tmp_path, archs=1, epochs=1, train_overrides={"train_subset": 200}, log=_quiet)
    with pytest.raises(ValueError, match="different train"):
        build(TINY, tmp_path, archs=1, epochs=1, log=_quiet)


def test_no_train_exports_what_the_storage_holds(table: Path) -> None:
    before = pd.read_parquet(table / "table.parquet")
    (table / "table.parquet").unlink()
    assert main(["bench", "build", str(TINY), "--archs", "3", "--epochs", "1", "--out",
                 str(table), "--no-train"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(table / "table.parquet"), before)


def test_a_storage_shared_with_another_table_s_study_name_is_refused(table: Path,
                                                                     tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    shutil.copy(table / "bench.db", shared)  # its study bench-tiny-3x1-reduced: 1 epoch
    runs = optuna.storages.RDBStorage(f"sqlite:///{shared}")
    before = {s.study_name: len(runs.get_all_trials(s._study_id)) for s in runs.get_all_studies()}
    with pytest.raises(ValueError, match=r"shared.db: study 'bench-tiny-3x1-reduced' holds the "
                                         r"runs of another table .*its own --storage"):
        build(TINY, tmp_path / "t", archs=3, seeds=1, epochs=2, storage=f"sqlite:///{shared}",
              log=_quiet)
    assert {s.study_name: len(runs.get_all_trials(s._study_id))
            for s in runs.get_all_studies()} == before  # no new run


def _copy_trial(study: optuna.Study, t: optuna.trial.FrozenTrial, state: str,
                attrs: dict[str, object] | None = None, **record: object) -> None:
    """Add a copy of trial ``t`` to ``study`` in ``state``: its record changed by ``record``,
    its other user attributes by ``attrs``."""
    user = {**t.user_attrs, **(attrs or {}), "record": {**t.user_attrs["record"], **record}}
    if record.get("status") in ("failed", "oom"):
        user["history"] = []  # it stopped before its first epoch ended
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState[state], params=t.params, distributions=t.distributions,
        value=t.value if state == "COMPLETE" else None, user_attrs=user))


def test_export_keeps_one_last_attempt_per_failed_pair_and_only_this_table_s_runs(
        table: Path, tmp_path: Path) -> None:
    source = optuna.load_study(study_name="bench-tiny-2x1-reduced",
                               storage=f"sqlite:///{table / 'bench.db'}")
    a, b = sorted(source.get_trials(), key=lambda t: t.number)
    storage = f"sqlite:///{tmp_path / 'mixed.db'}"
    other = optuna.create_study(study_name="bench-tiny-9x1-reduced", storage=storage,
                                direction="maximize")
    other.set_user_attr(IDENTITY_ATTR, "another-table")
    _copy_trial(other, a, "COMPLETE", seed=2)  # another table's study: left out ...
    study = optuna.create_study(study_name="bench-tiny-2x1-reduced", storage=storage,
                                direction="maximize")
    _copy_trial(study, a, "COMPLETE", {"cpu": "Test CPU"})
    _copy_trial(study, b, "FAIL", status="diverged")  # b never completes: failed twice,
    _copy_trial(study, b, "FAIL", status="failed")  # the last attempt (it raised) is exported
    _copy_trial(study, a, "COMPLETE", seed=1, **{"train.epochs": 2})  # another recipe's run
    _copy_trial(study, a, "COMPLETE", {"reused_from": "bench-tiny-9x1-reduced#0"}, seed=2,
                reused_from="bench-tiny-9x1-reduced#0")  # ... but a copy of its run is ours
    _copy_trial(study, a, "COMPLETE", {"cpu": None}, seed=3)  # recorded before the CPU was kept
    out, lines = tmp_path / "t", []
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"devices": ["cpu (Earlier CPU, 2 threads)"]}))
    space = load_space(TINY)
    m = export(out, storage, space_path=TINY, epochs=1, sample_seed=0,
               archs=sample_archs(space, 2), train=bench_train_config(space, 1),
               log=lines.append)
    bench = load(out)  # loads: every arch with a row has one in archs.parquet, no duplicate rows
    rows = bench.table
    arch_a, arch_b = a.user_attrs["record"]["arch_id"], b.user_attrs["record"]["arch_id"]
    assert sorted(zip(rows["arch_id"], rows["seed"], rows["status"], strict=True)) == sorted(
        [(arch_a, 0, "complete"), (arch_a, 2, "complete"), (arch_a, 3, "complete"),
         (arch_b, 0, "error")])
    assert set(bench.archs["arch_id"]) == {arch_a, arch_b}
    assert m["counts"] == {"archs": 1, "runs": 3, "failed": 1}
    assert any("left out 1 runs of another recipe and 1 studies of another table" in x
               for x in lines)
    assert bench.seeds(arch_a) == [0, 2, 3] and bench.seeds(arch_b) == []
    # the trial's CPU; a run from before that was kept adds none to an earlier export's list
    assert m["devices"] == ["cpu (Earlier CPU, 2 threads)", "cpu (Test CPU, 2 threads)"]


def test_an_export_that_matches_none_of_the_storage_s_runs_is_refused(table: Path,
                                                                      tmp_path: Path) -> None:
    space = load_space(TINY)
    with pytest.raises(ValueError, match=r"none of its runs has this table's recipe \(0 runs of "
                                         r"another, 2 other tables' studies\); check --epochs"):
        export(tmp_path, f"sqlite:///{table / 'bench.db'}", space_path=TINY, epochs=2,
               sample_seed=0, train=bench_train_config(space, 2), log=_quiet)
    assert not (tmp_path / "table.parquet").exists()


def test_a_broken_manifest_is_one_line_naming_it(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    assert main(["bench", "build", str(TINY), "--archs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: not valid JSON" in err[0] and "--no-train" in err[0]
    assert not (out / "bench.db").exists()
