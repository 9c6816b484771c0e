"""Killing an ablation: SIGTERM stops its workers and leaves it resumable; a run killed outright
is completed by the next one at once (its trials are failed by pid, not after a heartbeat)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import cvt_nas_running, stop, stopped_trials, trial_of_killed, wait_for, worker_tags

from cvt_nas.cli import main
from cvt_nas.common.proc import alive, parse_tag
from cvt_nas.common.storage import open_storage

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "table7_kv_stride.yaml"
NAME = "table7_kv_stride-reduced"
pytestmark = pytest.mark.slow  # real training in worker processes


def _args(out: Path, seeds: int, workers: int) -> list[str]:
    return ["ablate", str(EXPERIMENT), "--scale", "reduced", "--out", str(out),
            "--seeds", str(seeds), "--n-workers", str(workers), "--threads", "1",
            "--set", "train_subset=512", "--set", "epochs=3", "--set", "val_fraction=0.01",
            "--set", "batch_size=64"]


def _trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    if not db.exists():
        return []
    try:
        study = optuna.load_study(study_name=NAME,
                                  storage=open_storage(f"sqlite:///{db}", heartbeat=None))
    except KeyError:  # not created yet
        return []
    return study.get_trials(deepcopy=False)


def _running(db: Path, at_least: int) -> list[optuna.trial.FrozenTrial]:
    running = [t for t in _trials(db) if t.state.name == "RUNNING" and "row" in t.params
               and "worker" in t.user_attrs]
    return running if len(running) >= at_least else []


def _table_seeds(out: Path) -> list[int]:
    return list(pd.read_csv(out / "table.csv").set_index("row")["seeds"])


def test_sigterm_stops_the_ablation_workers_and_the_same_command_completes_it(
        tmp_path: Path) -> None:
    out, db, log = tmp_path / "t7", tmp_path / "studies.db", tmp_path / "ablate.log"
    args = _args(out, seeds=2, workers=2)
    with cvt_nas_running(args, tmp_path, log) as proc:
        running = wait_for(lambda: _running(db, 2), "both workers training")
        tags = worker_tags(running, proc)
        code, stopped = stop(proc, signal.SIGTERM)
    err = log.read_text()
    assert code == 128 + signal.SIGTERM, err
    assert err.rstrip().splitlines()[-1].startswith("cvt-nas ablate: stopped by SIGTERM; ")
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(tag) for tag in tags), "the workers to be gone", 60)
    states = {t.number: t.state.name for t in _trials(db)}
    assert "RUNNING" not in states.values()
    stopped_trials(running, states)  # failed (or finished just before the signal)
    assert not (out / "table.csv").exists()  # no table from a stopped run
    print(f"\nSIGTERM: ablate exited {stopped:.1f} s later, 2 workers stopped")

    assert main(args) == 0  # the same command finishes every pair
    assert _table_seeds(out) == [2, 2]
    complete = [(t.params["row"], t.params["seed"]) for t in _trials(db)
                if t.state.name == "COMPLETE" and "reused_from" not in t.user_attrs]
    assert sorted(complete) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # each trained once


def test_a_run_killed_outright_is_completed_by_the_next_without_waiting_for_a_heartbeat(
        tmp_path: Path) -> None:
    out, db, log = tmp_path / "t7", tmp_path / "studies.db", tmp_path / "ablate.log"
    args = _args(out, seeds=1, workers=1)
    with cvt_nas_running(args, tmp_path, log) as proc:
        victim = wait_for(lambda: _running(db, 1), "a pair in training")[0]
        assert parse_tag(victim.user_attrs["worker"]).pid == proc.pid
        assert stop(proc, signal.SIGKILL, 60)[0] == -signal.SIGKILL
    # the pair it was training (the one seen, unless that finished just before the kill)
    left = [t.number for t in _trials(db) if t.state.name == "RUNNING"]
    assert len(left) <= 1
    started = time.monotonic()
    assert main(args) == 0  # right away: within the heartbeat grace
    print(f"\nre-run after kill -9 finished in {time.monotonic() - started:.1f} s")
    assert _table_seeds(out) == [1, 1]
    assert [t.state.name for t in _trials(db) if t.number in left] == ["FAIL"] * len(left)


def test_an_ablation_worker_killed_mid_pair_costs_the_table_nothing(tmp_path: Path) -> None:
    out, db, log = tmp_path / "t7", tmp_path / "studies.db", tmp_path / "ablate.log"
    with cvt_nas_running(_args(out, seeds=2, workers=2), tmp_path, log) as proc:
        victim = wait_for(lambda: _running(db, 1), "a pair in training")[0]
        pid = parse_tag(worker_tags([victim], proc)[0]).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert proc.wait(timeout=900) == 0, log.read_text()
    assert _table_seeds(out) == [2, 2]
    trials = _trials(db)
    victim = trial_of_killed(trials, pid)  # the pair seen, unless it finished just before
    pair = (victim.params["row"], victim.params["seed"])
    again = [t for t in trials if t.state.name == "COMPLETE" and t.number != victim.number
             and (t.params["row"], t.params["seed"]) == pair]
    assert len(again) == 1
    complete = sorted((t.params["row"], t.params["seed"]) for t in trials
                      if t.state.name == "COMPLETE")
    assert complete == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # none lost, none twice
    err = log.read_text()
    assert f"cvt-nas ablate: lost 1 worker(s): pid {pid} (SIGKILL)" in err
    assert "Traceback" not in err
    assert again[0].datetime_start is not None
    print(f"\nkill -9 of ablation worker {pid}: pair {pair} started again "
          f"{again[0].datetime_start.timestamp() - killed_at:.1f} s after the kill")
