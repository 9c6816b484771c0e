"""Shared test setup: quiet Ray, keep torch to the machine's two threads, a private PostgreSQL."""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """`unused_port` (one per test: servers of one test each take their own `unused_port`)."""
    return unused_port()


def pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{d}/initdb") and os.path.exists(f"{d}/pg_ctl"):
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@dataclass(frozen=True)
class PostgresServer:
    """A private server on ``host`` (127.0.0.1 unless a multi-host test put it on a test subnet):
    ``cvtnas`` logs in without a password (trust); users made by `add_user` must give theirs
    (scram-sha-256), in the URL or in a password file."""

    port: int
    host: str = "127.0.0.1"
    ctl: Callable[..., None] | None = field(default=None, repr=False, compare=False)

    def url(self, user: str = "cvtnas", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/postgres"

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every open connection is cut, the data stays."""
        assert self.ctl is not None
        self.ctl("restart")

    def add_user(self, name: str, password: str) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(host=self.host, port=self.port, user="cvtnas",
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD %s").format(
                    sql.Identifier(name)), (password,))
        finally:
            conn.close()


@contextlib.contextmanager
def postgres_server(tmp_path: Path, host: str = "127.0.0.1", trusted: str = "127.0.0.1/32",
                    wrap: Callable[[list[str]], list[str]] = list) -> Iterator[PostgresServer]:
    """A private PostgreSQL server listening on ``host`` on a free port, stopped and deleted
    when the block ends; ``cvtnas`` is trusted from ``trusted``, other users give a password.

    ``wrap`` turns a command into the one to run (a multi-host test runs the server inside a
    network namespace). initdb refuses to run as root, so as root the server runs as the
    ``postgres`` user via ``runuser``, in a directory that user owns: a fresh
    ``/tmp/cvtnas-pg-*`` (pytest's tmp_path lives under a root-only directory the server could
    not enter).
    """
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine; "
                    "apt-get install postgresql to run this test")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to drop to the 'postgres' user")
        base = Path(tempfile.mkdtemp(prefix="cvtnas-pg-", dir="/tmp"))
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        base, prefix = tmp_path / "pg", []
        base.mkdir()
    data, port = base / "data", unused_port()

    def run(*cmd: str | Path) -> None:
        subprocess.run(wrap([*prefix, *map(str, cmd)]), check=True, capture_output=True,
                       timeout=120)

    def ctl(action: str) -> None:
        run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60",
            "-m", "fast", "-o", f"-p {port} -k {base} -c listen_addresses={host} -c fsync=off",
            action)

    try:
        run(bindir / "initdb", "-D", data, "-U", "cvtnas", "--auth=trust", "-E", "UTF8",
            "--no-sync")
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all cvtnas {trusted} trust\n"
            f"host all all {trusted} scram-sha-256\n")
        ctl("start")
        yield PostgresServer(port, host, ctl)
    finally:
        if (data / "postmaster.pid").exists():
            run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A private PostgreSQL server on a free 127.0.0.1 port (`postgres_server`)."""
    with postgres_server(tmp_path) as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a private PostgreSQL server (`postgres`), user ``cvtnas`` without a password."""
    return postgres.url()


def _processes_under(path: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass(frozen=True)
class RayCluster:
    address: str  # host:port of the head
    temp: Path  # its temp dir (session logs)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """``ray start --head`` on a free loopback port with its own temp dir.

    Stopped by ending the ``--block`` process we started (which stops the head's processes) and
    then any process still using our temp dir, by pid: ``ray stop`` would stop every Ray on the
    machine, including other users' clusters.
    """
    ray_exe = Path(sys.executable).parent / "ray"
    if not ray_exe.exists():
        pytest.skip("the ray command line is not installed next to this Python")
    temp = tempfile.mkdtemp(prefix="cvtray-", dir="/tmp")  # short: Ray's socket paths are long
    port = unused_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    log = Path(temp) / "head.log"
    head = subprocess.Popen(
        [str(ray_exe), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--temp-dir", temp, "--num-cpus", "2", "--include-dashboard", "false", "--block"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield RayCluster(f"127.0.0.1:{port}", Path(temp))
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # the head's own process group (new session)
            head.wait(timeout=5)
        except ProcessLookupError:  # it failed to start, or ended
            pass
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        time.sleep(1)
        for pid in _processes_under(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_head(ray_cluster: RayCluster) -> str:
    """The address of a private Ray head on 127.0.0.1 (`ray_cluster`)."""
    return ray_cluster.address


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def cvt_nas_running(args: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``cvt-nas ARGS`` as a real process running this checkout's code, stderr to ``log``;
    killed if the block leaves it running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cvt_nas.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen, signum: int, timeout: float = 300) -> tuple[int, float]:
    """Send ``signum`` and wait for the exit: its code and the seconds it took."""
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - sent


def worker_tags(trials: list[Any], parent: subprocess.Popen) -> list[str]:
    """The worker tags of ``trials`` (Optuna trials), checked to be processes of ``parent``."""
    from cvt_nas.common.proc import parse_tag

    tags = [t.user_attrs["worker"] for t in trials]
    assert {parse_tag(tag).pid for tag in tags} <= set(children(parent.pid))
    return tags


def at_once(target: Callable[..., Any], args: tuple[Any, ...], n: int = 4) -> list[int | None]:
    """Exit codes of ``n`` forked processes running ``target(barrier, *args)``, each released
    by the barrier at the same moment (for races)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=target, args=(barrier, *args)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (Linux ``/proc/<pid>/task/<pid>/children``)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_for(check: Callable[[], Any], what: str, timeout: float = 300.0,
             every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` s.
    Generous timeouts: these are waits for slow shared machines, not timing assertions."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def running_trials(out: Path, at_least: int = 1, study: str = "tiny") -> list[Any]:
    """The RUNNING trials of the search study in ``out``'s default SQLite storage that have
    drawn their parameters and not yet written their record, once there are ``at_least`` (none
    while the study does not exist yet)."""
    import optuna

    from cvt_nas.common.storage import default_storage_url
    from cvt_nas.search import study as store

    if not (out / "study.db").exists():
        return []
    try:
        trials = optuna.load_study(study_name=study, storage=store.make_storage(
            default_storage_url(out), None)).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []
    running = [t for t in trials if t.state.name == "RUNNING" and t.params
               and "worker" in t.user_attrs and "record" not in t.user_attrs]
    return running if len(running) >= at_least else []


def stopped_while_preparing() -> Any:
    """A sampler at which a stop (Ctrl-C) lands while Optuna prepares a new trial: after the
    trial is RUNNING, before the objective runs."""
    import optuna

    class Stopping(optuna.samplers.RandomSampler):
        def before_trial(self, study: Any, trial: Any) -> None:
            raise KeyboardInterrupt

    return Stopping()


def trial_of_killed(trials: list[Any], pid: int) -> Any:
    """The one trial that worker ``pid`` was running when it was killed: failed, without a
    record. (The trial a test saw running may have finished in the moment before the kill; then
    the worker was killed in its next one.)"""
    from cvt_nas.common.proc import parse_tag

    lost = [t for t in trials if t.state.name == "FAIL" and "record" not in t.user_attrs
            and parse_tag(t.user_attrs.get("worker", "")).pid == pid]
    assert len(lost) == 1, [(t.number, t.state.name, t.user_attrs.get("worker")) for t in lost]
    return lost[0]


def stopped_trials(seen: list[Any], states: dict[int, str]) -> list[Any]:
    """Of the trials a test saw running before it stopped the run, those the stop interrupted
    (FAIL); the others must have finished in the moment before the signal (COMPLETE). At least
    one was interrupted."""
    assert {states[t.number] for t in seen} <= {"FAIL", "COMPLETE"}, states
    interrupted = [t for t in seen if states[t.number] == "FAIL"]
    assert interrupted, states
    return interrupted


# -- the bench tests' small real table (tests/data/tiny_bench/, built by
# tests/bench/make_tiny_bench.py) -------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_table() -> Path:
    """The committed table directory (read-only: use `table_copy` to change it)."""
    return Path(__file__).resolve().parent / "data" / "tiny_bench"


@pytest.fixture
def table_copy(tiny_table: Path, tmp_path: Path) -> Path:
    """A copy of the table that a test may break."""
    out = tmp_path / "copy"
    shutil.copytree(tiny_table, out)
    return out
