"""A PostgreSQL server on one host and search workers on two others (`netns` hosts), and what
the study survives: a worker's host dying mid-trial, the server restarting mid-search.

Each worker is ``cvt-nas search --storage postgresql+psycopg2://cvtnas@10.231.0.1:PORT/...``
on its own host; the figures (kill to retry, restart to recovery) are printed (``-s``), not
asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from cluster import count, cvt_nas, results_intact, search_args, trials_on
from conftest import PostgresServer, postgres_server, wait_for

pytestmark = pytest.mark.slow  # real training on three hosts: a minute or more each


@pytest.fixture
def net() -> Iterator[dict[str, netns.Host]]:
    with netns.hosts_or_skip(["a", "b", "c"]) as hosts:
        yield hosts


@pytest.fixture
def db(net: dict[str, netns.Host], tmp_path: Path) -> Iterator[PostgresServer]:
    """The study's server on host a, trusting the test subnet."""
    a = net["a"]
    with postgres_server(tmp_path, host=a.ip, trusted=f"{netns.SUBNET}.0/24",
                         wrap=a.wrap) as server:
        yield server


def _workers(net: dict[str, netns.Host], db: PostgresServer, tmp_path: Path, trials: int,
             epochs: int) -> tuple[list[str], dict[str, object]]:
    args = search_args(tmp_path / "tiny", trials, epochs, "--storage", db.url(),
                       "--heartbeat", "2")
    procs = {name: cvt_nas(net[name], args, tmp_path / f"{name}.log", tmp_path)
             for name in ("b", "c")}
    return args, procs


def _running(net: dict[str, netns.Host], db: PostgresServer, on: str | None = None,
             at_least: int = 1) -> list[dict]:
    """RUNNING trials that drew their parameters (on host ``on`` only, when given)."""
    trials = trials_on(net["a"], db.url())
    running = [t for t in trials if t["state"] == "RUNNING" and t["params"] and t["worker"]
               and (on is None or t["worker"].startswith(net[on].hostname + ":"))]
    return running if len(running) >= at_least else []


def test_workers_on_two_hosts_share_a_study_on_a_third(
        net: dict[str, netns.Host], db: PostgresServer, tmp_path: Path) -> None:
    _, procs = _workers(net, db, tmp_path, trials=4, epochs=1)
    for name, proc in procs.items():
        assert proc.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()
    trials = trials_on(net["a"], db.url())
    assert count(trials, 4) == (4, 0, 0)
    hosts = {t["record"]["worker"].split(":")[0] for t in trials if t["record"]}
    assert hosts == {net["b"].hostname, net["c"].hostname}  # both hosts trained
    results_intact(tmp_path / "tiny", trials)


def test_a_worker_host_dying_mid_trial_is_retried_by_heartbeat(
        net: dict[str, netns.Host], db: PostgresServer, tmp_path: Path) -> None:
    _, procs = _workers(net, db, tmp_path, trials=4, epochs=2)
    victim = wait_for(lambda: _running(net, db, on="b"), "a trial running on host b")[0]
    net["b"].kill()  # the host dies: its worker and everything else on it
    killed = time.time()
    assert procs["c"].wait(timeout=900) == 0, (tmp_path / "c.log").read_text()
    trials = trials_on(net["a"], db.url())
    assert count(trials, 4) == (4, 0, 0)
    dead = trials[victim["number"]]
    assert dead["state"] == "FAIL" and dead["record"] is None
    retry = [t for t in trials if t["failed_trial"] == victim["number"]]
    assert len(retry) == 1 and retry[0]["record"]["status"] == "complete"
    assert retry[0]["record"]["worker"].startswith(net["c"].hostname + ":")
    assert not [t for t in trials if t["state"] in ("RUNNING", "WAITING")]
    results_intact(tmp_path / "tiny", trials)
    print(f"\nhost b killed in trial {victim['number']}: retried as trial {retry[0]['number']} "
          f"on host c, started {retry[0]['start'] - killed:.1f} s and finished "
          f"{retry[0]['end'] - killed:.1f} s after the kill (heartbeat 2 s, grace 6 s)")


def test_a_server_restart_mid_search_loses_nothing_and_the_search_resumes(
        net: dict[str, netns.Host], db: PostgresServer, tmp_path: Path) -> None:
    args, procs = _workers(net, db, tmp_path, trials=4, epochs=2)
    running = wait_for(lambda: _running(net, db, at_least=2), "trials running on both hosts")
    db.restart()  # every connection is cut while both workers train
    restarted = time.time()
    codes = {name: proc.wait(timeout=900) for name, proc in procs.items()}
    ended = time.time()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    for name, code in codes.items():
        # each worker either carried on (reconnected) or stopped with one line, no traceback
        assert code == 0 or (code != 0 and "Traceback" not in logs[name]), logs[name]
    print(f"\nserver restarted with trials {[t['number'] for t in running]} running; workers "
          f"exited {codes} {ended - restarted:.1f} s later")
    if any(codes.values()):
        for name in procs:
            print(f"{name}: {logs[name].strip().splitlines()[-1:]}")
        again = cvt_nas(net["b"], args, tmp_path / "again.log", tmp_path)
        assert again.wait(timeout=900) == 0, (tmp_path / "again.log").read_text()
    trials = trials_on(net["a"], db.url())
    assert count(trials, 4) == (4, 0, 0)
    assert not [t for t in trials if t["state"] in ("RUNNING", "WAITING")]
    results_intact(tmp_path / "tiny", trials)
