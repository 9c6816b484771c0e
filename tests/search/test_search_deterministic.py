"""Reproducible parallel search (``--deterministic``): the same trials, and on CPU the same
results, for 1, 2 or 4 workers; real processes on real SQLite studies, tiny data.

The slot bookkeeping and the planner are tested on in-memory studies (no training); the
end-to-end runs are slow (workers import torch and train)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import (
    PostgresServer,
    cvt_nas_running,
    running_trials,
    trial_of_killed,
    wait_for,
    worker_tags,
)

from cvt_nas.cli import main
from cvt_nas.common.proc import parse_tag
from cvt_nas.common.storage import default_storage_url
from cvt_nas.search import deterministic as det
from cvt_nas.search import study as store
from cvt_nas.search.optuna_backend import SearchRun, keyed_sampler
from cvt_nas.search.trial import TrialSettings
from cvt_nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
OBJECTIVES = {"val_top1": "max", "macs": "min"}
# Only the smallest architecture passes: nearly every trial ends at once, over budget, so the
# samplers' history is real (costs) and a search takes seconds.
NEARLY_ALL_OVER = ["--set", "constraints.max_params=22.8k"]
RUNNING, WAITING, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING,
                          optuna.trial.TrialState.FAIL)


def _run(sampler: str = "tpe", trials: int = 8, population_size: int | None = None,
         seed: int = 0) -> SearchRun:
    settings = TrialSettings(study="tiny", backend="optuna", objectives=OBJECTIVES, threads=1)
    fixed_lr = {"train.lr": 2e-3} if sampler == "grid" else {}  # a grid needs finite ranges
    return SearchRun(space=load_space(TINY, overrides=fixed_lr), settings=settings,
                     storage_url="sqlite://", trials=trials, sampler=sampler, seed=seed,
                     population_size=population_size, deterministic=True)


def _memory_study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def _finish(study: optuna.Study, trial: optuna.Trial, value: float) -> None:
    """Give a trial a record and tell it (what a worker does at the end of a trial)."""
    trial.set_user_attr("record", {"status": "complete"})
    study.tell(trial, [value, 1e6 * value])


# -- slots -------------------------------------------------------------------------------------


def test_new_trials_take_the_next_slot_and_retries_keep_theirs() -> None:
    study = _memory_study()
    for _ in range(3):
        study.ask()  # trials 0, 1, 2: slots 0, 1, 2
    dead = study.trials[1]
    study._storage.set_trial_state_values(dead._trial_id, state=FAIL)
    store.retry_trial(study, study.trials[1])  # trial 3: slot 1 again
    study.ask()  # trial 4 pops the retry
    study.ask()  # trial 5: a new trial, slot 3
    slots = det.Slots.read(study)
    assert slots.slot == {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
    assert slots.claimed == 4
    assert slots.missing(10) == []  # slot 1 runs again as trial 3
    assert slots.held_elsewhere(1, 3) is False  # the dead trial does not hold it
    assert slots.held_elsewhere(0, 7) is True  # trial 0 runs it


def test_a_slot_left_by_a_trial_that_died_twice_is_queued_again() -> None:
    study = _memory_study()
    study.ask()
    study.ask()
    study._storage.set_trial_state_values(study.trials[1]._trial_id, state=FAIL)  # no retry
    slots = det.Slots.read(study)
    assert slots.missing(10) == [1]
    assert det.requeue(study, slots, total=10) == 1
    queued = study.trials[-1]
    assert queued.state == WAITING and queued.system_attrs[det.REQUEUED] == 1
    assert det.Slots.read(study).slot[queued.number] == 1
    assert det.Slots.read(study).missing(10) == []
    assert det.requeue(study, det.Slots.read(study), total=10) == 0


def test_of_two_trials_running_one_slot_the_later_numbered_gives_way() -> None:
    study = _memory_study()
    study.ask()
    for _ in range(2):  # two workers queued the same missing slot 0 at once
        study.add_trial(optuna.trial.create_trial(state=WAITING, system_attrs={det.REQUEUED: 0}))
    study._storage.set_trial_state_values(study.trials[0]._trial_id, state=FAIL)
    study.ask()
    study.ask()  # trials 1 and 2 both run slot 0
    slots = det.Slots.read(study)
    assert slots.slot[1] == slots.slot[2] == 0
    assert not slots.held_elsewhere(0, 1) and slots.held_elsewhere(0, 2)


# -- the plan ----------------------------------------------------------------------------------


def _stamped(run: SearchRun) -> optuna.Study:
    study = _memory_study()
    det.check_study(study, run, keyed_sampler)
    return study


def _run_generation(study: optuna.Study, run: SearchRun,
                    plan: list[tuple[dict, dict]], values: list[float]) -> None:
    """Run a planned generation as workers do (`deterministic._Step`), with made-up results."""
    sampler = det.PlannedSampler()
    study.sampler = sampler
    for (params, attrs), value in zip(plan, values, strict=True):
        sampler.params = params
        trial = study.ask()
        for key, attr in attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, attr)
        assert run.space.sample(trial).params == {k: run.space.build(params).params[k]
                                                  for k in params}
        _finish(study, trial, value)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "grid", "random"])
def test_a_plan_depends_only_on_the_seed_and_earlier_generations(sampler: str) -> None:
    run = _run(sampler, population_size=4)
    study = _stamped(run)
    size = det.plan_size(study)
    assert size == (1 if sampler == "random" else 4)

    def plan(g: int) -> list[tuple[dict, dict]]:  # a new planner each time: another worker
        return det.Planner(run, keyed_sampler, size).plan(det.Slots.read(study), g,
                                                          study.directions)

    first = plan(0)
    assert plan(0) == first and len(first) == size
    _run_generation(study, run, first, [0.1 * (i + 1) for i in range(size)])
    second = plan(1)
    _run_generation(study, run, second[:1], [0.9])  # a later slot finishes meanwhile
    assert plan(1) == second
    if sampler == "nsga2":  # what NSGA-II sets on a trial travels with the plan
        assert [a for _, a in first] == [{"NSGAIISampler:generation": 0}] * 4
        assert [a for _, a in second] == [{"NSGAIISampler:generation": 1}] * 4
    if sampler == "tpe":  # and the plan does depend on the earlier results
        other = _stamped(run)
        _run_generation(other, run, first, [0.4, 0.3, 0.2, 0.1])
        changed = det.Planner(run, keyed_sampler, size).plan(det.Slots.read(other), 1,
                                                             other.directions)
        assert [p for p, _ in changed] != [p for p, _ in second]


# -- refusals --------------------------------------------------------------------------------


def test_a_deterministic_study_resumes_only_with_its_own_settings() -> None:
    study = _stamped(_run("tpe"))
    assert study.user_attrs[det.STAMP] == {"seed": 0, "sampler": "tpe", "generation_size": 4}
    det.check_study(study, _run("tpe"), keyed_sampler)  # the same settings: fine
    with pytest.raises(ValueError, match=r"planned with --seed 0 \(now 1\); resume it with the "
                                         "same settings"):
        det.check_study(study, _run("tpe", seed=1), keyed_sampler)
    with pytest.raises(ValueError, match=r"generations of \(--population-size\) 4 \(now 6\)"):
        det.check_study(study, _run("tpe", population_size=6), keyed_sampler)
    default = _run("tpe")
    object.__setattr__(default, "deterministic", False)
    with pytest.raises(ValueError, match="was run with --deterministic; add --deterministic"):
        det.check_study(study, default, keyed_sampler)


def test_a_study_of_a_default_search_cannot_turn_deterministic() -> None:
    study = _memory_study()
    trial = study.ask()
    _finish(study, trial, 0.5)
    with pytest.raises(ValueError, match="holds trials of a search without --deterministic; "
                                         "pick a new --study"):
        det.check_study(study, _run(), keyed_sampler)


@pytest.mark.parametrize(("args", "message"), [
    (["--pruner", "pareto-sha"], "--deterministic with --pruner pareto-sha: a pruner compares"),
    (["--objectives", "val_top1:max,latency:min"], "--deterministic with the latency objective"),
    (["--backend", "ray"], "--deterministic is for the optuna backend"),
    (["--set", "search.deterministic=maybe"], "search.deterministic: expected true or false, "
                                              "got 'maybe'"),
])
def test_what_depends_on_timing_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["search", str(TINY), "--out", str(tmp_path / "x"), "--deterministic", "--quiet",
                 *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x" / "study.db").exists()


def test_the_space_file_can_ask_for_it_and_the_default_search_is_unchanged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--trials", "3", "--sampler", "random", "--quiet", *NEARLY_ALL_OVER]
    plain, exact = tmp_path / "plain", tmp_path / "exact"
    assert main(["search", str(TINY), "--out", str(plain), "--seed", "7", "--threads", "1",
                 *common]) == 0
    assert main(["search", str(TINY), "--out", str(exact), "--set", "search.deterministic=true",
                 *common]) == 0
    settings = {d: yaml.safe_load((d / "study.yaml").read_text())["settings"]
                for d in (plain, exact)}
    assert "deterministic" not in settings[plain]  # the default writes what it always wrote
    assert settings[exact]["deterministic"] is True
    assert settings[exact]["threads"] == 1 and settings[exact]["seed"] == 0
    assert det.STAMP not in _study(plain).user_attrs
    assert _study(exact).user_attrs[det.STAMP]["generation_size"] == 1
    capsys.readouterr()
    assert main(["search", str(TINY), "--out", str(plain), "--deterministic", *common]) == 2
    assert "holds trials of a search without --deterministic" in capsys.readouterr().err


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny",
                             storage=store.make_storage(default_storage_url(out), None))


# -- end to end: 1, 2 and 4 workers ----------------------------------------------------------

SAME = ["trial", "status", "params_sampled", "arch_id", "params", "macs", "val_top1"]


def _search(out: Path, workers: int, args: list[str]) -> pd.DataFrame:
    assert main(["search", str(TINY), "--out", str(out), "--deterministic", "--seed", "3",
                 "--n-workers", str(workers), "--quiet", *args]) == 0
    table = pd.read_csv(out / "trials.csv").sort_values("trial").reset_index(drop=True)
    if workers > 1:  # the workers shared the trials (else this proves nothing)
        assert table["worker"].nunique() >= 2, table["worker"]
    return table


@pytest.mark.slow  # 3 searches with up to 4 workers that import torch and train: minutes
@pytest.mark.parametrize(("args", "trains"), [
    # NSGA-II, 2 generations of 4; about half the draws train (1 epoch, 1,200 images)
    (["--sampler", "nsga2", "--population-size", "4", "--trials", "8"], True),
    # TPE, 3 generations of 4; nearly every draw over budget (its costs are the history)
    (["--sampler", "tpe", "--trials", "12", *NEARLY_ALL_OVER], False),
], ids=["nsga2-training", "tpe-over-budget"])
def test_one_two_and_four_workers_sample_and_score_the_same_trials(
        tmp_path: Path, args: list[str], trains: bool) -> None:
    tables = {n: _search(tmp_path / f"w{n}", n, args) for n in (1, 2, 4)}
    one = tables[1]
    assert len(one) == int(args[args.index("--trials") + 1])
    assert one["val_top1"].notna().any() == trains
    for n in (2, 4):
        pd.testing.assert_frame_equal(tables[n][SAME], one[SAME], check_exact=True)
    drawn = [json.loads(p) for p in one["params_sampled"]]
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) > 1


def test_a_killed_worker_changes_no_trial(tmp_path: Path) -> None:
    args = ["search", str(TINY), "--deterministic", "--sampler", "nsga2", "--population-size",
            "2", "--trials", "6", "--quiet", "--set", "constraints.max_params=1M",
            "--set", "train.epochs=2"]  # every trial trains for some seconds: time to catch one
    calm, killed, log = tmp_path / "calm", tmp_path / "killed", tmp_path / "search.log"
    assert main([*args, "--out", str(calm)]) == 0
    with cvt_nas_running([*args, "--out", str(killed), "--n-workers", "2"], tmp_path,
                         log) as proc:
        victim = wait_for(lambda: running_trials(killed), "a running trial")[0]
        pid = parse_tag(worker_tags([victim], proc)[0]).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, log.read_text()
    assert f"lost 1 worker(s): pid {pid} (SIGKILL)" in log.read_text()
    trials = _study(killed).get_trials(deepcopy=False)
    by_slot = {t.user_attrs["slot"]: t.user_attrs["record"] for t in trials
               if "record" in t.user_attrs}
    assert sorted(by_slot) == list(range(6))
    victim = trial_of_killed(trials, pid)  # the trial seen, unless it finished just before
    assert victim.user_attrs["slot"] in by_slot  # its slot ran again, in another trial
    baseline = pd.read_csv(calm / "trials.csv").set_index("trial")
    for slot, record in by_slot.items():
        assert record["params_sampled"] == baseline.loc[slot, "params_sampled"]
        assert record["val_top1"] == baseline.loc[slot, "val_top1"]


@pytest.mark.slow  # a PostgreSQL server and three searches that import torch
def test_two_processes_on_one_postgresql_study_match_one_worker_on_sqlite(
        tmp_path: Path, postgres: PostgresServer) -> None:
    """What machines sharing a server do: two separate ``cvt-nas search`` processes, started
    together on one PostgreSQL study, draw and score the trials one SQLite worker does."""
    args = ["--sampler", "nsga2", "--population-size", "4", "--trials", "8"]  # half train
    one = _search(tmp_path / "sqlite", 1, args)
    assert one["val_top1"].notna().any()
    url = postgres.url()
    outs = [tmp_path / f"pg{i}" for i in range(2)]
    common = ["search", str(TINY), "--deterministic", "--seed", "3", "--quiet", "--storage", url,
              *args]
    with cvt_nas_running([*common, "--out", str(outs[0])], tmp_path, tmp_path / "a.log") as a, \
            cvt_nas_running([*common, "--out", str(outs[1])], tmp_path, tmp_path / "b.log") as b:
        assert a.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()
        assert b.wait(timeout=900) == 0, (tmp_path / "b.log").read_text()
    assert main(["report", str(outs[0]), "--storage", url, "--write"]) == 0
    shared = pd.read_csv(outs[0] / "trials.csv").sort_values("trial").reset_index(drop=True)
    assert shared["worker"].nunique() == 2, shared["worker"]  # both processes ran trials
    pd.testing.assert_frame_equal(shared[SAME], one[SAME], check_exact=True)
