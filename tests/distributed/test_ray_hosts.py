"""A Ray head and two worker nodes on three hosts (`netns`), joined with ``ray start
--address``, and what a Ray search survives: a worker node dying mid-trial, the driver dying.

The head has no CPU, so trials run only on the worker nodes; the workers announce one fake GPU
each (``--num-gpus 1``), so the placement of ``--gpus-per-trial`` is tested without a GPU. The
driver (``cvt-nas search --backend ray --address 10.231.0.1:6379``) runs on the head's host and
keeps the study in SQLite in the results directory. Figures are printed (``-s``), not asserted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import netns
import pytest
from cluster import RayCluster, count, cvt_nas, dump, ray_cluster, results_intact, search_args
from conftest import wait_for

from cvt_nas.common.storage import default_storage_url

pytestmark = pytest.mark.slow  # three Ray nodes and real training: a minute or more each


@pytest.fixture
def net() -> Iterator[dict[str, netns.Host]]:
    with netns.hosts_or_skip(["a", "b", "c"]) as hosts:
        yield hosts


@pytest.fixture
def ray(net: dict[str, netns.Host]) -> Iterator[RayCluster]:
    with ray_cluster(net["a"], [net["b"], net["c"]], cpus=1, gpus=1) as cluster:
        yield cluster


def _args(cluster: RayCluster, out: Path, trials: int, epochs: int) -> list[str]:
    return search_args(out, trials, epochs, "--backend", "ray", "--address", cluster.address,
                       "--cpus-per-trial", "1", "--gpus-per-trial", "1")


def _trials(out: Path) -> list[dict]:
    return dump(default_storage_url(out), "tiny") if (out / "study.db").exists() else []


def _host(record: dict) -> str:
    return record["worker"].split(":")[0]


def _trial_on(host: netns.Host) -> list[int]:
    """Processes on ``host`` that run a Tune trial (Ray titles them ``ray::ImplicitFunc...``)."""
    found = []
    for pid in host.pids():
        try:
            if b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _finished_at(record: dict) -> float:
    return datetime.fromisoformat(record["finished_at"]).timestamp()


def test_trials_go_to_the_worker_nodes_that_have_the_gpus_they_ask_for(
        net: dict[str, netns.Host], ray: RayCluster, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    driver = cvt_nas(net["a"], _args(ray, out, trials=3, epochs=1), tmp_path / "a.log", tmp_path)
    assert driver.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()
    trials = _trials(out)
    assert count(trials, 3) == (3, 0, 0)
    hosts = {_host(t["record"]) for t in trials if t["record"]}
    assert hosts <= {net["b"].hostname, net["c"].hostname}  # never the head: it has no GPU
    results_intact(out, trials)


def test_a_worker_node_dying_mid_trial_reruns_its_trial_on_the_other(
        net: dict[str, netns.Host], ray: RayCluster, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    driver = cvt_nas(net["a"], _args(ray, out, trials=3, epochs=2), tmp_path / "a.log", tmp_path)
    wait_for(lambda: _trial_on(net["b"]), "a trial running on node b", 600)
    wait_for(lambda: [t for t in _trials(out) if t["state"] == "RUNNING"], "a running trial")
    time.sleep(3)  # into its training
    net["b"].kill()  # the node dies: its raylet, its trial, everything on it
    killed = time.time()
    assert driver.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()
    trials = _trials(out)
    assert count(trials, 3) == (3, 0, 0)
    assert not [t for t in trials if t["state"] != "COMPLETE"]  # the same study trial, rerun
    failed = sorted(out.glob("ray/ray-*/trial_*/error.txt"))  # Tune's note of the lost attempt
    assert len(failed) == 1, failed
    victim = trials[int(failed[0].parent.name.split("_")[1])]["record"]
    assert _host(victim) == net["c"].hostname  # it ran again elsewhere
    results_intact(out, trials)
    rerun = _finished_at(victim) - victim["wall_time_s"]
    print(f"\nnode b killed in trial {victim['trial']}: rerun on node c started about "
          f"{rerun - killed:.1f} s and finished {_finished_at(victim) - killed:.1f} s after "
          "the kill")


def test_a_killed_driver_resumes_when_run_again(
        net: dict[str, netns.Host], ray: RayCluster, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    args = _args(ray, out, trials=3, epochs=2)
    driver = cvt_nas(net["a"], args, tmp_path / "a.log", tmp_path)
    running = wait_for(lambda: [t for t in _trials(out) if t["state"] == "RUNNING"],
                       "a running trial", 600)
    time.sleep(3)
    os.kill(driver.pid, signal.SIGKILL)  # the `ip netns exec` chain exec'd into the driver
    driver.wait()
    killed = time.time()
    time.sleep(1.1)  # a new experiment folder name (timestamped to the second)
    again = cvt_nas(net["a"], args, tmp_path / "again.log", tmp_path)
    assert again.wait(timeout=900) == 0, (tmp_path / "again.log").read_text()
    trials = _trials(out)
    assert count(trials, 3) == (3, 0, 0)
    for t in running:  # failed by the re-run, its parameters retried once
        assert trials[t["number"]]["state"] == "FAIL" and trials[t["number"]]["record"] is None
        retry = [r for r in trials if r["failed_trial"] == t["number"]]
        assert len(retry) == 1 and retry[0]["record"] is not None
    assert not [t for t in trials if t["state"] in ("RUNNING", "WAITING")]
    results_intact(out, trials)
    first = min(r["start"] for r in trials if r["failed_trial"] is not None)
    print(f"\ndriver killed with trials {[t['number'] for t in running]} running: the re-run "
          f"started their retries {first - killed:.1f} s after the kill and finished "
          f"{max(t['end'] for t in trials) - killed:.1f} s after it")
