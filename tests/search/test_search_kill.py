"""Killing a search's workers: real processes on a real SQLite study.

A worker killed mid-trial (``kill -9``) costs the study nothing: the other worker fails the dead
trial by its pid and runs its parameters again, and the search ends normally. SIGTERM to the
search stops every worker, leaves no RUNNING trial, and the same command then completes the study.
The recovery and stop times are printed (``-s``), not asserted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import (
    cvt_nas_running,
    running_trials,
    stop,
    stopped_trials,
    trial_of_killed,
    wait_for,
    worker_tags,
)

from cvt_nas.cli import main
from cvt_nas.common.proc import alive, parse_tag
from cvt_nas.common.storage import default_storage_url
from cvt_nas.search import study as store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
pytestmark = pytest.mark.slow  # real training in two workers: a minute or more each


def _args(out: Path, epochs: int) -> list[str]:
    return ["search", str(TINY), "--out", str(out), "--trials", "6", "--n-workers", "2",
            "--sampler", "random", "--seed", "0", "--threads", "1", "--quiet",
            "--set", "constraints.max_params=1M",  # every trial trains
            "--set", f"train.epochs={epochs}"]  # trials of some seconds: time to catch one


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny",
                             storage=store.make_storage(default_storage_url(out), None))


def test_a_worker_killed_mid_trial_costs_the_study_nothing(tmp_path: Path) -> None:
    out, log = tmp_path / "tiny", tmp_path / "search.log"
    with cvt_nas_running(_args(out, epochs=2), tmp_path, log) as proc:
        victim = wait_for(lambda: running_trials(out), "a running trial")[0]
        pid = parse_tag(worker_tags([victim], proc)[0]).pid  # a worker, not the parent
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert proc.wait(timeout=900) == 0, log.read_text()
    study = _study(out)
    trials = study.get_trials(deepcopy=False)
    records = [t.user_attrs["record"] for t in trials if "record" in t.user_attrs]
    assert len(records) == 6  # none lost
    assert len({r["trial"] for r in records}) == 6  # none twice
    assert len({r["params_sampled"] for r in records}) == 6  # no architecture trained twice
    zombie = trial_of_killed(trials, pid)  # the victim, unless it finished just before
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == zombie.number]
    assert len(retry) == 1 and "record" in retry[0].user_attrs
    assert zombie.params.items() <= retry[0].params.items()  # the dead trial's draw, again
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    err = log.read_text()
    assert f"cvt-nas search: lost 1 worker(s): pid {pid} (SIGKILL)" in err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert retry[0].datetime_start is not None
    print(f"\nkill -9 of worker {pid} in trial {zombie.number}: retried as trial "
          f"{retry[0].number}, started {retry[0].datetime_start.timestamp() - killed_at:.1f} s "
          "after the kill")


def test_sigterm_stops_every_worker_and_the_same_command_completes_the_study(
        tmp_path: Path) -> None:
    out, log = tmp_path / "tiny", tmp_path / "search.log"
    args = _args(out, epochs=3)
    with cvt_nas_running(args, tmp_path, log) as proc:
        running = wait_for(lambda: running_trials(out, at_least=2), "both workers training")
        tags = worker_tags(running, proc)
        code, stopped = stop(proc, signal.SIGTERM)
    err = log.read_text()
    assert code == 128 + signal.SIGTERM, err
    assert err.rstrip().splitlines()[-1] == (
        "cvt-nas search: stopped by SIGTERM; running trials were failed so that the study can "
        "resume: re-run the same command")
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(tag) for tag in tags), "the workers to be gone", 60)
    study = _study(out)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert "RUNNING" not in states.values()
    for t in stopped_trials(running, states):  # failed, and queued again with its parameters
        assert any(q.system_attrs.get("failed_trial") == t.number and q.state.name == "WAITING"
                   for q in study.get_trials(deepcopy=False))
    print(f"\nSIGTERM: search exited {stopped:.1f} s later, 2 workers stopped")

    assert main(args) == 0  # resume: the same command
    trials = _study(out).get_trials(deepcopy=False)
    records = [t.user_attrs["record"] for t in trials if "record" in t.user_attrs]
    assert len(records) == 6
    trained = [r["params_sampled"] for r in records if r["wall_time_s"] > 0]
    assert len(set(trained)) == len(trained)  # none trained twice
    retried = {t.system_attrs.get("failed_trial") for t in trials if "record" in t.user_attrs}
    assert {t.number for t in running} <= retried
