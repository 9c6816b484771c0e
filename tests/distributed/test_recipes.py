"""The launch recipes in examples/, run as their users would, on this machine.

SLURM is not installed here: the array job's script runs as two local processes with the
variables SLURM sets for an array task (SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID,
SLURM_CPUS_PER_TASK), both on one PostgreSQL study on 127.0.0.1. The Ray recipe starts a head
and a worker on two network-namespace hosts (`netns`) and runs the search on the head's host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import netns
import optuna
import pytest
from cluster import ROOT, TINY, count, dump, host_env, results_intact, search_args

from cvt_nas.common.storage import default_storage_url

SLURM = ROOT / "examples" / "slurm" / "search_array.sbatch"
RAY_RECIPE = ROOT / "examples" / "ray" / "cluster.sh"
CVT_NAS = f"{sys.executable} -m cvt_nas.cli"  # this checkout's cvt-nas, as the recipes' $CVT_NAS


def _task(index: int, storage: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CVT_NAS": CVT_NAS,
           "CVT_NAS_STORAGE": storage, "SLURM_ARRAY_JOB_ID": "4242",
           "SLURM_ARRAY_TASK_ID": str(index), "SLURM_CPUS_PER_TASK": "1"}
    return subprocess.Popen(["bash", str(SLURM), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), cwd=log.parent)


def test_the_slurm_script_without_a_storage_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CVT_NAS_STORAGE"}
    done = subprocess.run(["bash", str(SLURM), str(TINY)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "search_array.sbatch: set CVT_NAS_STORAGE to the study's PostgreSQL URL "
        "(postgresql+psycopg2://user@host/db, password in ~/.pgpass)"]


@pytest.mark.slow
def test_two_slurm_array_tasks_share_one_postgresql_study(postgres_url: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    # what the user passes after the script: cvt-nas search's arguments, no storage
    args = [a for a in search_args(out, 4, 1) if a not in ("--threads", "1", "--quiet")][1:]
    tasks = [_task(i, postgres_url, args, tmp_path / f"task{i}.log") for i in (0, 1)]
    for i, task in enumerate(tasks):
        log = (tmp_path / f"task{i}.log").read_text
        assert task.wait(timeout=900) == 0, log()
        assert f"task {i} of job 4242 on " in log() and "1 thread(s)" in log()
    trials = dump(postgres_url, "tiny")
    assert count(trials, 4) == (4, 0, 0)
    workers = {t["record"]["worker"] for t in trials if t["record"]}
    assert {w.split(":")[1] for w in workers} <= {str(t.pid) for t in tasks}  # exec'd: same pid
    results_intact(out, trials)


@pytest.mark.slow
def test_the_ray_recipe_starts_a_head_and_a_worker_and_runs_the_search(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    temp = Path(tempfile.mkdtemp(prefix="cvtray-", dir="/tmp"))  # short: Ray's socket paths
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, temp, ignore_errors=True)  # after the hosts are gone
        hosts = cleanup.enter_context(netns.hosts_or_skip(["a", "b"]))
        a, b = hosts["a"], hosts["b"]
        env = {**host_env(), "RAY": str(Path(sys.executable).parent / "ray"), "CVT_NAS": CVT_NAS,
               "OBJECT_STORE_MB": "100"}
        started = a.run(["bash", str(RAY_RECIPE), "head"], env={
            **env, "NODE_IP": a.ip, "HEAD_CPUS": "0", "RAY_TEMP_DIR": str(temp / "a")})
        assert started.returncode == 0, started.stderr[-3000:]
        joined = b.run(["bash", str(RAY_RECIPE), "worker", f"{a.ip}:6379"], env={
            **env, "NODE_IP": b.ip, "CPUS": "1", "RAY_TEMP_DIR": str(temp / "b")})
        assert joined.returncode == 0, joined.stderr[-3000:]
        search = a.run(["bash", str(RAY_RECIPE), "search", f"{a.ip}:6379",
                        *search_args(out, 2, 1)[1:]], env=env, timeout=900)
        assert search.returncode == 0, search.stderr[-3000:]
    trials = dump(default_storage_url(out), "tiny")
    assert count(trials, 2) == (2, 0, 0)
    assert {t["record"]["worker"].split(":")[0] for t in trials} == {b.hostname}  # the worker
    assert all(t["state"] == optuna.trial.TrialState.COMPLETE.name for t in trials)
    results_intact(out, trials)
