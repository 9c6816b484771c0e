"""Two worker processes on one study: SQLite, and a real PostgreSQL server the test starts."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cvt_nas.cli import main
from cvt_nas.common.storage import default_storage_url
from cvt_nas.search import study as store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{d}/initdb") and os.path.exists(f"{d}/pg_ctl"):
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@pytest.fixture
def postgres_url(tmp_path: Path, free_port: int) -> Iterator[str]:
    """A private PostgreSQL server on a free 127.0.0.1 port, stopped and deleted afterwards.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user via
    ``runuser``, in a directory that user owns: a fresh ``/tmp/cvtnas-pg-*`` (pytest's tmp_path
    lives under a root-only directory the server could not enter).
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
    data, port = base / "data", free_port

    def run(*cmd: str | Path) -> None:
        subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, timeout=120)

    try:
        run(bindir / "initdb", "-D", data, "-U", "cvtnas", "--auth=trust", "-E", "UTF8",
            "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql+psycopg2://cvtnas@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _two_workers(url: str, out: Path) -> None:
    assert main(["search", str(TINY), "--out", str(out), "--storage", url, "--n-workers", "2",
                 "--trials", "4", "--sampler", "tpe", "--seed", "0", "--threads", "1", "--quiet",
                 "--set", "constraints.max_params=1M"]) == 0
    study = optuna.load_study(study_name="tiny", storage=store.make_storage(url, None))
    trials = study.get_trials(deepcopy=False)
    recorded = [t for t in trials if "record" in t.user_attrs]
    numbers = [t.user_attrs["record"]["trial"] for t in recorded]
    assert sorted(numbers) == sorted(t.number for t in recorded)  # records carry their number
    assert len(recorded) == 4 and len(set(numbers)) == 4  # none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in recorded)
    # anything else is a trial that found the study full and stopped before sampling
    extra = [t for t in trials if "record" not in t.user_attrs]
    assert all(t.user_attrs.get("surplus") and not t.params for t in extra)
    workers = Counter(t.user_attrs["worker"].split(":")[1] for t in recorded)
    assert len(workers) == 2 and os.getpid() not in map(int, workers), workers
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == sorted(numbers)
    assert set(table["train.threads"]) == {1}


def test_two_workers_share_a_sqlite_study(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    _two_workers(default_storage_url(out), out)


def test_two_workers_share_a_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    _two_workers(postgres_url, tmp_path / "tiny")
