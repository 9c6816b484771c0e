"""Where an ablation keeps its study: journal files, SQLite, PostgreSQL, the environment; many
workers opening it at once; a pair another machine was training when it died."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import PostgresServer, at_once

from cvt_nas.ablation.experiment import load_experiment
from cvt_nas.ablation.runner import open_study, run_experiment
from cvt_nas.cli import main
from cvt_nas.common.storage import STORAGE_ENV, open_storage

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "table7_kv_stride.yaml"
TINY = {"train_subset": 256, "epochs": 1, "val_fraction": 0.005, "batch_size": 64}
TINY_ARGS = ["--seeds", "1", "--threads", "1",
             *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
NAME = "table7_kv_stride-reduced"


def _open_after(barrier, url: str) -> None:  # noqa: ANN001 - a multiprocessing.Barrier
    exp = load_experiment(EXPERIMENT)
    barrier.wait()
    open_study(exp, "reduced", 2, url)


def test_many_workers_opening_one_new_ablation_study_at_once_all_succeed(
        tmp_path: Path) -> None:
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        assert at_once(_open_after, (url,)) == [0, 0, 0, 0]
        studies = open_storage(url, heartbeat=None).get_all_studies()
        assert [s.study_name for s in studies] == [NAME]  # one study, not four


def _ablate(out: Path, *extra: str) -> int:
    return main(["ablate", str(EXPERIMENT), "--scale", "reduced", "--out", str(out), *TINY_ARGS,
                 *extra])


def _complete_pairs(url: str) -> set[tuple[str, int]]:
    study = optuna.load_study(study_name=NAME, storage=open_storage(url, heartbeat=None))
    return {(t.params["row"], t.params["seed"]) for t in study.trials
            if t.state.name == "COMPLETE" and "record" in t.user_attrs}


@pytest.mark.parametrize("kind", ["x.journal", "x.log", "x.jsonl", "postgresql"])
def test_an_ablation_runs_on_journal_files_and_postgresql(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "postgresql":
        url = request.getfixturevalue("postgres").url()
    else:
        url = str(tmp_path / kind)
    assert _ablate(tmp_path / "t7", "--storage", url) == 0
    assert _complete_pairs(url) == {("a", 0), ("b", 0)}
    table = pd.read_csv(tmp_path / "t7" / "table.csv").set_index("row")
    assert list(table["seeds"]) == [1, 1]
    assert not (tmp_path / "studies.db").exists()  # the default storage was not used


def test_a_bad_storage_is_one_line_and_the_environment_names_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        postgres: PostgresServer) -> None:
    assert _ablate(tmp_path / "t7", "--storage", "bogus://x") == 2
    err = capsys.readouterr().err
    assert err.startswith("cvt-nas ablate: error: --storage 'bogus://x': not a storage URL")
    assert err.count("\n") == 1
    monkeypatch.setenv(STORAGE_ENV, "bogus://me:s3cret@x")
    assert _ablate(tmp_path / "t7") == 2
    err = capsys.readouterr().err
    assert "$CVT_NAS_STORAGE 'bogus://me:***@x': not a storage URL" in err
    assert "s3cret" not in err
    # $CVT_NAS_STORAGE is used when --storage is not given (the password stays off the
    # command line); a password user on a real server
    postgres.add_user("bob", "b0b-s3cret")
    monkeypatch.setenv(STORAGE_ENV, postgres.url("bob", "b0b-s3cret"))
    assert _ablate(tmp_path / "t7") == 0
    assert _complete_pairs(postgres.url("bob", "b0b-s3cret")) == {("a", 0), ("b", 0)}
    assert "s3cret" not in (tmp_path / "t7" / "command.txt").read_text()
    assert "s3cret" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_pair_another_machine_is_training_is_waited_for_and_trained_when_it_goes_stale(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the heartbeat tells about another machine's worker. While it beats, the run waits
    for its pair instead of ending (and writing a table) without it; once the beats stop (the
    machine died), the trial goes stale and the pair is trained here."""
    exp = load_experiment(EXPERIMENT)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url, heartbeat=1)
    open_study(exp, "reduced", 1, url, heartbeat=1)
    study = optuna.load_study(study_name=NAME, storage=storage)
    study.enqueue_trial({"row": "a", "seed": 0})
    trial = study.ask({"row": optuna.distributions.CategoricalDistribution(["a", "b"]),
                       "seed": optuna.distributions.IntDistribution(0, 0)})
    assert trial.params == {"row": "a", "seed": 0}
    trial.set_user_attr("worker", "elsewhere:1:1")

    def other_machine() -> None:  # beats until this run has trained the other pair, then dies
        others_done = 0.0
        while not others_done or time.monotonic() < others_done + 2:
            storage.record_heartbeat(trial._trial_id)
            if not others_done and ("b", 0) in _complete_pairs(url):
                others_done = time.monotonic()
            time.sleep(0.3)

    beating = threading.Thread(target=other_machine, daemon=True)
    beating.start()
    run_experiment(exp, "reduced", 1, url, threads=1, train_overrides=TINY, heartbeat=1)
    beating.join()
    out = capsys.readouterr().out
    assert "waiting for trial 0 (row a seed 0, worker elsewhere:1:1)" in out
    assert _complete_pairs(url) == {("a", 0), ("b", 0)}
    assert study.trials[trial.number].state.name == "FAIL"


def test_an_ablation_worker_goes_on_when_another_fails_its_trial_under_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """As in the search: a trial failed as stale while it still ran made the tell raise inside
    Optuna's optimize, and the worker died. Now its pair is trained again."""
    from cvt_nas.ablation import runner

    after_trial = runner._PairGrid.after_trial

    def failed_under_it(self, study, trial, state, values) -> None:  # noqa: ANN001
        if trial.number == 0:  # after Optuna's state check, before the tell
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        after_trial(self, study, trial, state, values)

    monkeypatch.setattr(runner._PairGrid, "after_trial", failed_under_it)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert _ablate(tmp_path / "t7", "--storage", url) == 0
    assert "trial 0 was failed by another worker while it ran here" in capsys.readouterr().out
    study = optuna.load_study(study_name=NAME, storage=open_storage(url, heartbeat=None))
    first = study.trials[0]
    assert first.state.name == "FAIL" and "record" in first.user_attrs
    pair = (first.params["row"], first.params["seed"])
    assert pair in _complete_pairs(url)  # trained again
    assert runner.failed_pairs(study)[pair] == 0  # its run completed: not a failure
    assert len(_complete_pairs(url)) == len(load_experiment(EXPERIMENT).runnable("reduced"))
