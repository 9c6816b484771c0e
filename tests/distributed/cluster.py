"""What the multi-host tests run on their hosts (`netns`): Ray nodes, cvt-nas, study read-outs.

Run as a script on a host, ``python cluster.py URL STUDY`` prints the study's trials as JSON
(the test process itself cannot reach the test subnet, by design).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from netns import Host

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
RAY = Path(sys.executable).parent / "ray"
RAY_PORT = 6379  # each host has its own network: no clash with other Rays on the machine

# Every process on a test host: this checkout's code, one thread, Ray quiet and tokenless.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1: with 0 (what loopback tests need, ENVIRONMENT.md) Ray
# refuses to join a node to a head; a host's only non-loopback address is its test address.
HOST_ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


def host_env() -> dict[str, str]:
    return {**os.environ, **HOST_ENV}


def wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout: float = 300) -> None:
    """Wait until ``log`` holds ``line``; fail with the log if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"{log.name} ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{log.name}: no {line!r} after {timeout:.0f} s"
        time.sleep(0.5)


@dataclass(frozen=True)
class RayCluster:
    """A Ray head and worker nodes on test hosts."""

    address: str  # host:port of the head
    temp: Path  # the nodes' temp dirs (logs) are under it


@contextlib.contextmanager
def ray_cluster(head: Host, workers: Sequence[Host], cpus: int = 1,
                gpus: int = 0) -> Iterator[RayCluster]:
    """A head with no CPU (the driver's node: trials run only on ``workers``) and workers joined
    with ``ray start --address``, each with ``cpus`` CPUs and ``gpus`` fake GPUs (Ray's
    ``--num-gpus`` is a count it schedules by; nothing checks for a device). The hosts' `netns.hosts`
    block stops their processes; this removes the temp dirs."""
    if not RAY.exists():
        pytest.skip("the ray command line is not installed next to this Python")
    temp = Path(tempfile.mkdtemp(prefix="cvtray-", dir="/tmp"))  # short: Ray's socket paths
    address = f"{head.ip}:{RAY_PORT}"
    small = ["--object-store-memory", str(100 * 2**20), "--block"]
    try:
        log = temp / "head.log"
        proc = head.popen([str(RAY), "start", "--head", "--node-ip-address", head.ip, "--port",
                           str(RAY_PORT), "--temp-dir", str(temp / "head"), "--num-cpus", "0",
                           "--num-gpus", "0", "--include-dashboard", "false", *small], log,
                          host_env())
        wait_for_line(proc, log, "Ray runtime started")
        for host in workers:
            log = temp / f"{host.hostname}.log"
            proc = host.popen([str(RAY), "start", "--address", address, "--node-ip-address",
                               host.ip, "--temp-dir", str(temp / host.hostname), "--num-cpus",
                               str(cpus), "--num-gpus", str(gpus), *small], log, host_env())
            wait_for_line(proc, log, "Ray runtime started")
        yield RayCluster(address, temp)
    finally:
        for host in (head, *workers):
            host.kill()
        shutil.rmtree(temp, ignore_errors=True)


def search_args(out: Path, trials: int, epochs: int, *extra: str) -> list[str]:
    """``cvt-nas search`` on the tiny space: every draw trains (``max_params=1M``), one thread."""
    return ["search", str(TINY), "--out", str(out), "--trials", str(trials), "--sampler",
            "random", "--seed", "0", "--threads", "1", "--quiet",
            "--set", "constraints.max_params=1M", "--set", f"train.epochs={epochs}", *extra]


def cvt_nas(host: Host, args: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen:
    """``cvt-nas ARGS`` on ``host``, running this checkout's code."""
    return host.popen([sys.executable, "-m", "cvt_nas.cli", *args], log, host_env(), cwd)


def trials_on(host: Host, url: str, study: str = "tiny") -> list[dict[str, Any]]:
    """The study's trials, read on ``host`` (`main` below), oldest first."""
    done = host.run([sys.executable, __file__, url, study], env=host_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def dump(url: str, study: str) -> list[dict[str, Any]]:
    """Each trial: number, state, its record's trial/status/worker/params_sampled/finished_at/
    wall_time_s, the trial it retries, start and end (epoch seconds)."""
    import optuna

    from cvt_nas.search import study as store

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        loaded = optuna.load_study(study_name=study, storage=store.make_storage(url, None))
    except KeyError:  # not created yet
        return []
    out = []
    for t in loaded.get_trials(deepcopy=False):
        rec = t.user_attrs.get("record") or {}
        out.append({
            "number": t.number, "state": t.state.name, "params": bool(t.params),
            "worker": t.user_attrs.get("worker"), "surplus": bool(t.user_attrs.get("surplus")),
            "failed_trial": t.system_attrs.get("failed_trial"),
            "record": {k: rec.get(k) for k in ("trial", "status", "worker", "params_sampled",
                                               "finished_at", "wall_time_s")} if rec else None,
            "start": t.datetime_start.timestamp() if t.datetime_start else None,
            "end": t.datetime_complete.timestamp() if t.datetime_complete else None})
    return out


if __name__ == "__main__":
    print(json.dumps(dump(sys.argv[1], sys.argv[2])))


class Count(NamedTuple):
    """What a fault cost a study: its records, and those lost or held twice."""

    records: int
    lost: int  # the study's total minus its trials with a record
    duplicates: int  # records beyond one per trial number, or a trial number trained twice


def count(trials: list[dict[str, Any]], total: int) -> Count:
    """Count a study's records (`dump`) against its total; a record must carry its own trial's
    number (Ray records arrive through the driver)."""
    records = [t for t in trials if t["record"]]
    assert all(t["record"]["trial"] == t["number"] for t in records)
    numbers = [t["number"] for t in records]
    return Count(len(records), max(0, total - len(records)), len(numbers) - len(set(numbers)))


def results_intact(out: Path, trials: list[dict[str, Any]]) -> None:
    """The results directory holds exactly the study's records, readable, and no temp files."""
    import pandas as pd

    recorded = sorted(t["number"] for t in trials if t["record"])
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == recorded
    assert sorted(pd.read_parquet(out / "trials.parquet")["trial"]) == recorded
    assert set(pd.read_parquet(out / "epochs.parquet")["trial"]) <= set(recorded)
    assert (out / "study.yaml").is_file() and (out / "pareto.csv").is_file()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers, leftovers
