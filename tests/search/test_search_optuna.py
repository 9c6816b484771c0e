"""`cvt-nas search` on the Optuna backend: a real tiny search, the budget gate, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import at_once, stopped_while_preparing

from cvt_nas.cli import main
from cvt_nas.common.fmt import duration
from cvt_nas.common.proc import worker_tag
from cvt_nas.common.storage import default_storage_url
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.search import study as store
from cvt_nas.search.optuna_backend import SearchRun, make_pruner
from cvt_nas.search.progress import Progress
from cvt_nas.search.rungs import promotable, rung_epochs
from cvt_nas.search.trial import TrialSettings
from cvt_nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
optuna.logging.set_verbosity(optuna.logging.ERROR)


def search(out: Path, *extra: str) -> int:
    return main(["search", str(TINY), "--out", str(out), "--threads", "1", "--quiet", *extra])


def load_study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=store.make_storage(url, heartbeat=None))


def test_search_gates_the_budget_records_every_trial_and_resumes_to_the_total(
        tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    # Random draws with seed 2 give feasible, infeasible, feasible, infeasible under 60k params.
    assert search(out, "--trials", "4", "--sampler", "random", "--seed", "2") == 0
    trials = pd.read_csv(out / "trials.csv")
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert list(trials["trial"]) == [0, 1, 2, 3]
    assert list(trials["status"]) == ["complete", "infeasible", "complete", "infeasible"]
    for _, row in trials.iterrows():
        cfg = CvTConfig.from_dict(json.loads(row["arch"]))
        cost = analytic_cost(cfg)
        assert (row["params"], row["macs"]) == (cost.params, cost.macs)
        assert cfg.in_chans == 1 and cfg.num_classes == 10 and cfg.img_size == 32
        assert load_space(TINY).build(json.loads(row["params_sampled"])).arch_id == row["arch_id"]
        if row["status"] == "infeasible":  # never trained: no epochs, no time, the reason given
            assert row["params"] > 60_000 and row["epochs"] == 0
            assert np.isnan(row["wall_time_s"]) and np.isnan(row["val_top1"])
            assert row["reason"] == f"params {row['params'] / 1e3:.4g}k > max_params 60k"
            assert row["constraint_violation"] == pytest.approx(row["params"] / 60_000 - 1)
            assert row["trial"] not in set(epochs["trial"])
        else:
            assert row["params"] <= 60_000 and row["epochs"] == 1 and 0 <= row["val_top1"] <= 100
            assert row["constraint_violation"] == 0
    assert sorted(epochs["trial"]) == [0, 2]
    study = load_study(default_storage_url(out))
    for t in study.trials:  # the sampler saw every verdict as a constraint, before training
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert (t.constraints["budget"] > 0) == (t.user_attrs["record"]["status"] == "infeasible")
        if t.user_attrs["record"]["status"] == "infeasible":
            assert t.values == [0.0, t.user_attrs["record"]["macs"]]
    meta = yaml.safe_load((out / "study.yaml").read_text())
    assert meta["objectives"] == {"val_top1": "max", "macs": "min"}
    assert meta["settings"]["sampler"] == "random" and meta["status_counts"]["infeasible"] == 2
    front = pd.read_csv(out / "pareto.csv")
    assert set(front["trial"]) <= {0, 2} and len(front) >= 1

    # Same command, --trials 5: the study's total. One more trial; the first four are untouched.
    assert search(out, "--trials", "5", "--sampler", "random", "--seed", "2") == 0
    again = pd.read_csv(out / "trials.csv")
    assert list(again["trial"]) == [0, 1, 2, 3, 4]
    cols = ["status", "val_top1", "wall_time_s", "finished_at"]
    pd.testing.assert_frame_equal(again[cols].iloc[:4], trials[cols])
    assert search(out, "--trials", "5") == 0  # already full: nothing runs
    assert len(load_study(default_storage_url(out)).trials) == 5


@pytest.mark.parametrize("where", ["this-machine-journal", "other-machine-sqlite"])
def test_a_killed_search_resumes_without_retraining_or_losing_trials(
        tmp_path: Path, where: str) -> None:
    """The dead worker's trial is failed and its parameters retried once on restart.

    Journal storage has no heartbeat: a trial of a dead process on this machine is recognized
    by its pid. A trial of another machine (faked by its worker tag) on SQLite is failed by the
    RDB heartbeat once it is older than the grace period (3 x --heartbeat).
    """
    out = tmp_path / "tiny"
    journal = tmp_path / "tiny.journal"
    url = str(journal) if where.endswith("journal") else default_storage_url(out)
    args = ["search", str(TINY), "--out", str(out), "--storage", url, "--trials", "3",
            "--sampler", "random", "--seed", "0", "--threads", "1", "--quiet", "--heartbeat", "1",
            "--set", "constraints.max_params=1M",
            "--set", "train.epochs=3"]  # trials of a few seconds: time to catch one running
    log = tmp_path / "killed.log"
    proc = subprocess.Popen([sys.executable, "-m", "cvt_nas.cli", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    killed = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if journal.exists() or (out / "study.db").exists():
                try:
                    trials = load_study(url).trials
                except KeyError:  # the study is not created yet
                    continue
                done = [t for t in trials if "record" in t.user_attrs]
                # a trial that stored its record but was not told yet is a result (see
                # test_a_dead_trial_that_stored_its_record_is_kept_not_retried): kill one
                # that is still training
                running = [t for t in trials if t.state.name == "RUNNING" and t.params
                           and "record" not in t.user_attrs]
                if done and running:
                    killed = running[0]
                    break
        assert killed is not None, log.read_text()
        first = done[0].user_attrs["record"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    if where.startswith("other"):
        study = load_study(url)
        study._storage.set_trial_user_attr(killed._trial_id, "worker", "elsewhere:1:1")
        time.sleep(4.5)  # past the grace period (SQLite's clock has 1 s steps): it is stale
    assert main(args) == 0  # the same command again
    study = load_study(url)
    records = [t.user_attrs["record"] for t in study.trials if "record" in t.user_attrs]
    assert sorted(r["trial"] for r in records) == sorted({r["trial"] for r in records})
    assert len(records) == 3 and all(r["status"] == "complete" for r in records)
    zombie = study.trials[killed.number]
    assert zombie.state.name == "FAIL" and "record" not in zombie.user_attrs
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    # the retry carries what the dead trial had drawn (it may have died mid-sampling; the retry
    # then draws the rest)
    assert len(retry) == 1 and "record" in retry[0].user_attrs
    assert zombie.params and zombie.params.items() <= retry[0].params.items()
    kept = next(r for r in records if r["trial"] == first["trial"])
    assert kept["finished_at"] == first["finished_at"]  # never retrained
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == sorted(r["trial"] for r in records)


def test_constraints_from_the_budget_gate_steer_nsga2_and_tpe_away_from_infeasible_configs(
) -> None:
    """No training here: maximize params, minimize MACs on CvT-13-NAS under its 4.6 G budget."""
    space = load_space(ROOT / "search_spaces" / "cvt13_nas.yaml")

    def objective(trial: optuna.Trial) -> list[float]:
        sample = space.sample(trial)
        trial.set_constraint("budget", sum(v.amount for v in space.violations(sample)))
        cost = space.cost(sample.model)
        return [cost.params, cost.macs]

    late = {}
    for name, sampler in (("random", optuna.samplers.RandomSampler(seed=0)),
                          ("tpe", optuna.samplers.TPESampler(seed=0, n_startup_trials=10)),
                          ("nsga2", optuna.samplers.NSGAIISampler(seed=0, population_size=10))):
        study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
        study.optimize(objective, n_trials=80)
        late[name] = sum(any(v > 0 for v in t.constraints.values()) for t in study.trials[40:])
    assert late["random"] >= 15  # ~60% of this space is over budget
    assert late["tpe"] <= late["random"] / 2 and late["nsga2"] <= late["random"] / 2


def test_pareto_successive_halving_promotes_the_best_ranks_by_brute_force() -> None:
    assert rung_epochs(30, 1, 3) == [1, 3, 9, 27] and rung_epochs(3) == [1] and rung_epochs(1) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 4))
        pts = rng.integers(0, 4, size=(n, m)).astype(float)  # small ints: many ties
        # brute force: rank = 1 + length of the longest chain of dominators
        dom = [[bool((pts[j] <= pts[i]).all() and (pts[j] < pts[i]).any()) for j in range(n)]
               for i in range(n)]
        rank = [0] * n
        for _ in range(n):
            rank = [1 + max((rank[j] for j in range(n) if dom[i][j]), default=0)
                    for i in range(n)]
        keep = max(1, n // 3)
        threshold = sorted(rank)[keep - 1]
        assert promotable(pts[-1], pts[:-1], 3) == (rank[-1] <= threshold)
    # a cheap model behind in accuracy still goes on (its cost keeps it on the front)
    assert promotable((-50.0, 1.0), [(-80.0, 9.0), (-70.0, 8.0), (-60.0, 7.0)], 3)
    assert not promotable((-50.0, 10.0), [(-80.0, 9.0), (-70.0, 8.0), (-60.0, 7.0)], 3)


def test_pruners_that_cannot_work_are_refused_with_the_alternative() -> None:
    space = load_space(TINY)

    def run(objectives: dict[str, str], pruner: str) -> SearchRun:
        return SearchRun(space=space, settings=TrialSettings("t", "optuna", objectives),
                         storage_url="sqlite://", trials=2, pruner=pruner)

    with pytest.raises(ValueError, match="cannot prune multi-objective.*pareto-sha"):
        make_pruner(run({"val_top1": "max", "macs": "min"}, "median"))
    with pytest.raises(ValueError, match="needs the val_top1 objective"):
        make_pruner(run({"macs": "min"}, "sha"))
    with pytest.raises(ValueError, match="asha is the Ray backend's"):
        make_pruner(run({"val_top1": "max"}, "asha"))
    assert isinstance(make_pruner(run({"val_top1": "max"}, "hyperband")),
                      optuna.pruners.HyperbandPruner)


def test_command_line_errors_are_one_clear_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    nas = ROOT / "search_spaces" / "cvt13_nas.yaml"
    assert main(["search", str(nas), "--out", str(tmp_path / "a"), "--trials", "1"]) == 2
    assert "/data/imagenet/train is not a directory" in capsys.readouterr().err
    bad = ["search", str(TINY), "--out", str(tmp_path / "b"), "--quiet"]
    assert main([*bad, "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:9/db"]) == 2
    err = capsys.readouterr().err
    assert "cannot open Optuna storage postgresql+psycopg2://u:***@127.0.0.1:9/db" in err
    assert "secret" not in err
    assert main([*bad, "--storage", "study.txt"]) == 2
    assert "--storage 'study.txt': not a storage URL" in capsys.readouterr().err
    assert main([*bad, "--set", "train.epochs=0"]) == 2
    assert "tiny_space.yaml: train.epochs: recipe 'reduced': field 'epochs': must be an integer" \
        in capsys.readouterr().err
    assert main([*bad, "--sampler", "grid"]) == 2
    assert "train.lr: grid search needs a finite set" in capsys.readouterr().err
    assert main(["search", str(TINY), "--dry-run"]) == 0
    assert "params 22,778 - 94,026" in capsys.readouterr().out


def test_resuming_with_a_changed_space_is_refused_and_names_the_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny"
    assert search(out, "--trials", "1", "--sampler", "random", "--seed", "0") == 0
    assert search(out, "--trials", "2", "--sampler", "random", "--seed", "0",
                  "--set", "train.epochs=2", "--set", "constraints.max_params=50k") == 2
    err = capsys.readouterr().err
    assert "created from a different search space" in err
    assert "(train.epochs, constraints.max_params changed" in err
    study = load_study(default_storage_url(out))
    assert len(study.trials) == 1  # nothing was added by the refused run
    # the search section (trials, sampler, seed) may change between runs of one study
    assert search(out, "--trials", "2", "--sampler", "tpe", "--seed", "5") == 0
    assert len(load_study(default_storage_url(out)).trials) == 2
    # a default that changed in the code (here: as if the study was made when the reduced
    # recipe shifted by 4 px) is caught as well as an edit of the file
    study = load_study(default_storage_url(out))
    ident = study.user_attrs["space"]
    assert ident["resolved_recipe"]["shift"] == 2
    study.set_user_attr("space", {**ident, "resolved_recipe": {**ident["resolved_recipe"], "shift": 4}})
    assert search(out, "--trials", "3") == 2
    assert "(resolved_recipe.shift changed" in capsys.readouterr().err
    # a study stamped by an older cvt-nas (without the resolved parts) resumes, and is completed
    older = {k: v for k, v in ident.items() if not k.startswith("resolved_")}
    study.set_user_attr("space", older)
    assert search(out, "--trials", "2") == 0
    assert load_study(default_storage_url(out)).user_attrs["space"] == ident


def test_a_resampled_architecture_reuses_the_result_and_retraining_would_match_it(
        tmp_path: Path) -> None:
    fixed = ["--set", "model.embed_dim=[16,16,32]", "--set", "model.mlp_ratio=2",
             "--set", "model.kv_stride=[2,2,1]", "--set", "train.lr=0.002"]  # one point
    assert search(tmp_path / "reuse", "--trials", "3", *fixed) == 0
    trials = pd.read_csv(tmp_path / "reuse" / "trials.csv")
    assert list(trials["status"]) == ["complete"] * 3
    assert trials.loc[0, "wall_time_s"] > 0 and pd.isna(trials.loc[0, "reason"])
    for i in (1, 2):
        assert trials.loc[i, "wall_time_s"] == 0
        assert trials.loc[i, "reason"] == "same parameters as trial 0: its result, not retrained"
        assert trials.loc[i, "val_top1"] == trials.loc[0, "val_top1"]
    epochs = pd.read_parquet(tmp_path / "reuse" / "epochs.parquet")
    assert sorted(set(epochs["trial"])) == [0, 1, 2]

    # --retrain-duplicates trains every trial; seeded CPU training gives the same numbers, which
    # is what makes reusing them sound.
    assert search(tmp_path / "retrain", "--trials", "2", "--retrain-duplicates", *fixed) == 0
    again = pd.read_csv(tmp_path / "retrain" / "trials.csv")
    assert (again["wall_time_s"] > 0).all() and again["reason"].isna().all()
    assert list(again["val_top1"]) == [trials.loc[0, "val_top1"]] * 2
    # with the pareto-sha pruner a reused trial also carries the learning curve rungs compare
    psha = tmp_path / "psha"
    assert search(psha, "--trials", "2", "--pruner", "pareto-sha", "--set", "train.epochs=2",
                  *fixed) == 0
    first, second = load_study(default_storage_url(psha)).trials
    assert len(first.user_attrs["curve"]) == 2
    assert second.user_attrs["curve"] == first.user_attrs["curve"]
    # single-objective studies: the curve is replayed through trial.report for Optuna's pruners
    med = tmp_path / "median"
    assert search(med, "--trials", "2", "--objectives", "val_top1:max", "--pruner", "median",
                  "--set", "train.epochs=2", *fixed) == 0
    first, second = load_study(default_storage_url(med), "tiny").trials
    assert len(first.intermediate_values) == 2
    assert second.intermediate_values == first.intermediate_values


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_another_machines_dead_trial_is_failed_and_queued_before_the_study_is_counted(
        tmp_path: Path) -> None:
    """A dead RUNNING trial counts toward --trials; it must be failed by its stale heartbeat
    before a resumed run counts the study, or a run whose last trial died would end short."""
    storage = store.make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    study = store.open_study(storage, "s", {"val_top1": "max"})
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study._storage.set_trial_user_attr(trial._trial_id, "worker", "elsewhere:1:1")
    storage.record_heartbeat(trial._trial_id)  # its machine then dies
    assert store.tally(study).counted == 1
    time.sleep(4.5)  # past the grace period (3 x heartbeat; SQLite's clock has 1 s steps)
    assert store.fail_dead_trials(study) == [trial.number]
    assert store.tally(study).counted == 0
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[trial.number] == "FAIL"
    queued = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert len(queued) == 1 and queued[0].params == {"x": trial.params["x"]}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_full_study_waits_for_another_machine_s_trial_and_retries_it_when_that_machine_dies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The last worker standing must not end at "the study is full" while another machine's
    trial still runs: if that machine dies, nobody would retry its trial."""
    import threading

    out = tmp_path / "tiny"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert search(out, "--trials", "1", "--storage", url) == 0
    storage = store.make_storage(url, heartbeat=1)
    study = optuna.load_study(study_name="tiny", storage=storage)
    remote = study.ask(study.trials[0].distributions)  # another machine's trial
    study._storage.set_trial_user_attr(remote._trial_id, "worker", "elsewhere:1:1")

    def other_machine() -> None:  # beats for 2 s, then its machine dies
        for _ in range(7):
            storage.record_heartbeat(remote._trial_id)
            time.sleep(0.3)

    beating = threading.Thread(target=other_machine, daemon=True)
    beating.start()
    assert search(out, "--trials", "2", "--storage", url, "--heartbeat", "1") == 0
    beating.join()
    assert f"trial(s) [{remote.number}] of other machines still run; waiting" in \
        capsys.readouterr().err
    trials = load_study(url).trials
    assert trials[remote.number].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == remote.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == remote.params  # the dead trial's draw, trained here
    assert store.tally(load_study(url)).counted == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_full_study_does_not_wait_for_a_remote_trial_that_never_beat(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial whose worker died before its first heartbeat (or runs with --heartbeat 0) can
    never turn stale: waiting for it would last for ever."""
    out = tmp_path / "tiny"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert search(out, "--trials", "1", "--storage", url) == 0
    study = optuna.load_study(study_name="tiny", storage=store.make_storage(url, heartbeat=1))
    remote = study.ask(study.trials[0].distributions)
    study._storage.set_trial_user_attr(remote._trial_id, "worker", "elsewhere:1:1")
    assert search(out, "--trials", "2", "--storage", url, "--heartbeat", "1") == 0
    assert "waiting" not in capsys.readouterr().err
    assert load_study(url).trials[remote.number].state.name == "RUNNING"  # left as it was


def test_a_worker_goes_on_when_another_fails_its_trial_under_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A survivor that finds this worker's heartbeat stale (after a database outage longer than
    the grace period) fails its trial while it still runs. The tell then raised inside Optuna's
    optimize ("AssertionError: Should not reach.") and the worker died."""
    from cvt_nas.search import optuna_backend

    class FailedUnderIt(optuna.samplers.RandomSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            if trial.number == 0:  # Optuna calls this after its state check, before the tell
                study._storage.set_trial_state_values(trial._trial_id,
                                                      optuna.trial.TrialState.FAIL)
            super().after_trial(study, trial, state, values)

    monkeypatch.setattr(optuna_backend, "make_sampler",
                        lambda run, seed: FailedUnderIt(seed=seed))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert search(tmp_path / "tiny", "--trials", "3", "--storage", url) == 0
    assert "trial 0 was failed by another worker while it ran here" in capsys.readouterr().err
    trials = load_study(url).trials
    assert trials[0].state.name == "FAIL" and "record" in trials[0].user_attrs
    assert len(trials) == 3 and store.tally(load_study(url)).counted == 3


def test_a_worker_goes_on_when_its_trial_is_failed_as_stale_mid_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The usual case: the survivor fails the trial (and queues its draw) while it trains, so
    storing its record already fails; the draw is trained again, the study still fills."""
    from cvt_nas.search import optuna_backend

    url = f"sqlite:///{tmp_path / 'study.db'}"
    evaluate = optuna_backend.evaluate

    def failed_mid_training(space: Any, sample: Any, number: int, *args: Any) -> Any:
        outcome = evaluate(space, sample, number, *args)
        if number == 0:  # as the stale check of another worker: fail, queue the draw again
            study = load_study(url)
            study._storage.set_trial_state_values(study.trials[0]._trial_id,
                                                  optuna.trial.TrialState.FAIL)
            store.retry_trial(study, load_study(url).trials[0])
        return outcome

    monkeypatch.setattr(optuna_backend, "evaluate", failed_mid_training)
    assert search(tmp_path / "tiny", "--trials", "3", "--storage", url) == 0
    assert "trial 0 was failed by another worker while it ran here" in capsys.readouterr().err
    trials = load_study(url).trials
    assert trials[0].state.name == "FAIL" and "record" not in trials[0].user_attrs
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params
    assert store.tally(load_study(url)).counted == 3


def test_a_stop_while_optuna_prepares_a_trial_fails_it_and_queues_it_again(
        tmp_path: Path) -> None:
    """Optuna makes a trial RUNNING before our objective runs; a stop in between is abandoned
    by the worker's tag (the trial was never its ``current``)."""
    from cvt_nas.common.proc import trial_tag
    from cvt_nas.search.optuna_backend import Objective

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = store.open_study(store.make_storage(url, heartbeat=None), "t", {"val_top1": "max"})
    run = SearchRun(space=load_space(TINY), settings=TrialSettings("t", "optuna",
                                                                   {"val_top1": "max"}),
                    storage_url=url, trials=2)
    objective = Objective(run, study, tag="here:1:1#0")
    other = study.ask()  # another worker's trial, not to be touched
    study._storage.set_trial_user_attr(other._trial_id, "worker", "here:2:2")
    study.sampler = stopped_while_preparing()
    with trial_tag(objective.tag), pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    objective.abandon()  # what run_worker does on a stop
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "WAITING"]
    assert trials[2].system_attrs["failed_trial"] == 1


def test_a_dead_trial_that_stored_its_record_is_kept_not_retried(tmp_path: Path) -> None:
    """A worker killed between storing a trial's record and telling Optuna leaves a RUNNING
    trial that holds a finished result: it is failed (its worker is gone) but counts, shows in
    the results, and is not trained again."""
    from cvt_nas.results.importers import study_records

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid of this machine that no longer runs
    storage = store.make_storage(str(tmp_path / "study.journal"))
    study = store.open_study(storage, "s", {"val_top1": "max"})
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study._storage.set_trial_user_attr(trial._trial_id, "worker", worker_tag(dead.pid))
    record = {"study": "s", "trial": trial.number, "status": "complete", "val_top1": 50.0}
    study._storage.set_trial_user_attr(trial._trial_id, "record", record)
    assert store.fail_dead_trials(study) == [trial.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL"]  # nothing queued again
    assert store.tally(study).counted == 1
    rows, _ = study_records(study)
    assert [(r["trial"], r["status"]) for r in rows] == [(trial.number, "complete")]


def test_progress_line_shows_elapsed_time_and_an_estimate_of_the_rest(tmp_path: Path) -> None:
    assert [duration(s) for s in (4.6, 185, 7620)] == ["5 s", "3 min 05 s", "2 h 07 min"]
    progress = Progress("sqlite:///x.db", "s", total=10, objectives={"val_top1": "max"},
                              out_dir=tmp_path, meta={}, show=False)
    progress._start -= 60  # this run started a minute ago, when 4 trials were already done
    assert progress.timing(4) == "1 min 00 s elapsed"
    assert progress.timing(6) == "1 min 00 s elapsed, ~2 min 00 s left"  # 30 s a trial, 4 to go
    assert progress.timing(10) == "1 min 00 s elapsed"


def _open_after(barrier, url: str) -> None:  # noqa: ANN001 - a multiprocessing.Barrier
    barrier.wait()
    store.make_storage(url, heartbeat=None)


def test_many_workers_opening_a_new_sqlite_study_at_once_all_succeed(tmp_path: Path) -> None:
    """Creating the schema of a new database races ("table ... already exists"); the losers wait
    for the winner instead of failing."""
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        assert at_once(_open_after, (url,)) == [0, 0, 0, 0]
