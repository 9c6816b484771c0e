"""The one storage opener: URL kinds, one-line errors, passwords never shown, dead workers."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import PostgresServer, at_once, stopped_while_preparing

from cvt_nas.common._rdb import without_password
from cvt_nas.common.proc import worker_tag
from cvt_nas.common.storage import (
    STORAGE_ENV,
    StorageError,
    check_url,
    fail_dead_trials,
    open_storage,
    redact,
    resolve_url,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql+psycopg2://me:s3cret@db:5432/x", "postgresql+psycopg2://me:***@db:5432/x"),
    ("postgresql://me:p@ss:w@rd@db/x", "postgresql://me:***@db/x"),  # '@' and ':' in it
    ("postgresql://me:pa/ss@db/x", "postgresql://me:***@db/x"),
    ("postgresql://me@db/x?password=s3cret&sslmode=require",
     "postgresql://me@db/x?password=***&sslmode=require"),
    ("postgresql://me@db/x?sslmode=require&PASSWORD=s3cret", "postgresql://me@db/x?sslmode"
     "=require&PASSWORD=***"),
    ("mysql://me:s3cret@db/x", "mysql://me:***@db/x"),
    ("host=db user=me password=s3cret dbname=x", "host=db user=me password=*** dbname=x"),
    ("cannot open postgresql://me:s3cret@db/x: refused", "cannot open postgresql://me:***@db/x:"
     " refused"),
    ("postgresql://me@db/x", "postgresql://me@db/x"),  # nothing to hide
    ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db"),
    ("runs/my:study@1.journal", "runs/my:study@1.journal"),
])
def test_redact_hides_every_form_of_password(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_storage_comes_from_the_flag_then_the_environment_then_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_url(None, "sqlite:///d.db") == ("sqlite:///d.db", "--storage")
    monkeypatch.setenv(STORAGE_ENV, "postgresql://me:pw@db/x")
    assert resolve_url(None, "sqlite:///d.db") == ("postgresql://me:pw@db/x", "$CVT_NAS_STORAGE")
    assert resolve_url("a.journal", "sqlite:///d.db") == ("a.journal", "--storage")


@pytest.mark.parametrize("name", ["s.journal", "s.log", "s.jsonl"])
def test_journal_files_sqlite_and_their_errors(tmp_path: Path, name: str) -> None:
    journal = open_storage(str(tmp_path / "sub" / name))
    assert isinstance(journal, optuna.storages.JournalStorage)
    optuna.create_study(storage=journal, study_name="s").optimize(lambda t: 1.0, n_trials=1)
    assert (tmp_path / "sub" / name).stat().st_size > 0
    db = open_storage(f"sqlite:///{tmp_path / 'x' / 'study.db'}")
    assert isinstance(db, optuna.storages.RDBStorage) and (tmp_path / "x" / "study.db").exists()
    (tmp_path / "dir.journal").mkdir()
    with pytest.raises(StorageError, match="dir.journal: is a directory; name a journal file"):
        open_storage(str(tmp_path / "dir.journal"))


@pytest.mark.parametrize(("url", "fragment"), [
    ("bogus://x", "--storage 'bogus://x': not a storage URL; give sqlite:///path/study.db"),
    ("bogus://me:s3cret@x/db", "--storage 'bogus://me:***@x/db': not a storage URL"),
    ("study.txt", "--storage 'study.txt': not a storage URL"),
    ("", "--storage: empty"),
])
def test_a_bad_storage_is_one_line_naming_it_without_its_password(url: str,
                                                                  fragment: str) -> None:
    with pytest.raises(StorageError) as err:
        check_url(url)
    text = str(err.value)
    assert fragment in text and "\n" not in text and "s3cret" not in text


def test_an_unreachable_server_is_one_line_without_the_password(free_port: int) -> None:
    url = f"postgresql+psycopg2://me:p@ss?word@127.0.0.1:{free_port}/db?password=s3cret"
    with pytest.raises(StorageError) as err:
        open_storage(url, flag="$CVT_NAS_STORAGE")
    text = str(err.value)
    assert text.startswith(f"cannot open Optuna storage postgresql+psycopg2://me:***@127.0.0.1:"
                           f"{free_port}/db?password=***: ")
    assert "\n" not in text and "s3cret" not in text and "ss?word" not in text


def test_a_pickled_storage_holds_no_password_and_a_pgpass_file_replaces_it(
        postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray pickles the searcher and its storage into the experiment folder. PostgreSQL's password
    file lets the URL hold no password at all."""
    postgres.add_user("alice", "pw-s3cret@x")
    url = postgres.url("alice", "pw-s3cret%40x")  # '@' URL-encoded in the URL
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    storage = open_storage(url, heartbeat=None)
    optuna.create_study(storage=storage, study_name="s")
    blob = pickle.dumps(storage)
    assert b"s3cret" not in blob
    monkeypatch.setenv(STORAGE_ENV, url)  # unpickled, the full URL comes from the environment
    assert [s.study_name for s in pickle.loads(blob).get_all_studies()] == ["s"]
    monkeypatch.delenv(STORAGE_ENV)
    bare = postgres.url("alice")
    with pytest.raises(StorageError, match="no password supplied") as err:
        open_storage(bare, heartbeat=None)
    assert "\n" not in str(err.value)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:postgres:alice:pw-s3cret@x\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert [s.study_name for s in open_storage(bare, heartbeat=None).get_all_studies()] == ["s"]
    # without $CVT_NAS_STORAGE an unpickled storage connects without a password: the file's
    assert pickle.loads(blob).url == bare


@pytest.mark.parametrize(("url", "kept"), [
    ("sqlite:////abs/study.db", "sqlite:////abs/study.db"),
    ("sqlite:///rel/study.db", "sqlite:///rel/study.db"),
    ("postgresql://me:p@ss/w:rd@db:5432/x?sslmode=require&PWD=1",
     "postgresql://me@db:5432/x?sslmode=require"),
    ("postgresql://me@db/x?password=pw", "postgresql://me@db/x"),
])
def test_what_a_pickled_storage_keeps_of_its_url(url: str, kept: str) -> None:
    assert without_password(url) == kept


def test_a_dead_local_worker_s_trial_is_failed_a_live_or_remote_one_is_not(
        tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = worker_tag(child.pid)
    child.wait()
    tags = {"dead": dead, "me": worker_tag(), "remote": "elsewhere:1:1", "untagged": None}
    trials = {}
    for name, tag in tags.items():
        trials[name] = study.ask()
        if tag is not None:
            trials[name].set_user_attr("worker", tag)
    seen: list[int] = []
    assert fail_dead_trials(study, on_dead=lambda s, t: seen.append(t.number)) == [
        trials["dead"].number]
    assert seen == [trials["dead"].number]
    states = {n: study.trials[t.number].state.name for n, t in trials.items()}
    assert states == {"dead": "FAIL", "me": "RUNNING", "remote": "RUNNING",
                      "untagged": "RUNNING"}
    assert fail_dead_trials(study, only_local=False) == sorted(
        trials[n].number for n in ("me", "remote", "untagged"))  # the Ray driver's reset


QUEUED = 24


def _ask_until_new(barrier: Any, url: str, out: Path) -> None:
    """A worker (a forked process): take queued trials until ask() creates a new one."""
    study = optuna.load_study(storage=open_storage(url, heartbeat=None), study_name="q")
    barrier.wait()
    got = []
    while (number := study.ask().number) < QUEUED:
        got.append(number)
    (out / f"{os.getpid()}.txt").write_text(" ".join(map(str, got)))


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_each_queued_trial_starts_in_exactly_one_of_many_workers(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    # SQLite ignores Optuna's SELECT ... FOR UPDATE: before the storage's atomic claim, workers
    # took some queued trials twice (a retried trial trained twice, and the second to finish
    # failed with "Cannot tell a COMPLETE trial")
    url = {"sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": str(tmp_path / "s.journal"),
           "postgresql": request.getfixturevalue("postgres_url") if kind == "postgresql"
           else ""}[kind]
    study = optuna.create_study(storage=open_storage(url, heartbeat=None), study_name="q")
    for i in range(QUEUED):
        study.enqueue_trial({"x": i})
    out = tmp_path / "taken"
    out.mkdir()
    assert at_once(_ask_until_new, (url, out)) == [0] * 4
    taken = [int(n) for f in out.iterdir() for n in f.read_text().split()]
    assert sorted(taken) == list(range(QUEUED))
    queued = study.get_trials(deepcopy=False)[:QUEUED]
    assert {t.state.name for t in queued} == {"RUNNING"}
    assert all(t.datetime_start is not None for t in queued)


def _fail_dead(barrier: Any, url: str, out: Path) -> None:
    """A surviving worker (a forked process): fail the dead worker's trials, noting each one
    it failed itself (where the search queues the parameters again)."""
    study = optuna.load_study(storage=open_storage(url, heartbeat=None), study_name="d")
    barrier.wait()
    fail_dead_trials(study, on_dead=lambda s, t: (out / f"{os.getpid()}-{t.number}").touch())


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_dead_worker_s_trial_is_failed_by_exactly_one_of_the_survivors(
        tmp_path: Path, kind: str) -> None:
    # two survivors failing the same trial would both queue its parameters again
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    study = optuna.create_study(storage=open_storage(url, heartbeat=None), study_name="d")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = [study.ask() for _ in range(8)]
    for t in dead:
        t.set_user_attr("worker", worker_tag(child.pid))
    out = tmp_path / "failed"
    out.mkdir()
    assert at_once(_fail_dead, (url, out)) == [0] * 4
    failed = sorted(int(f.name.split("-")[1]) for f in out.iterdir())
    assert failed == [t.number for t in dead]
    assert {t.state.name for t in study.get_trials(deepcopy=False)} == {"FAIL"}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_carries_its_worker_from_its_first_commit(tmp_path: Path, kind: str) -> None:
    # the tag used to be set in the objective's first line: a stop or kill before it left a
    # RUNNING trial that no check could tell dead, counted toward --trials for ever
    from cvt_nas.common.proc import trial_tag

    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    study = optuna.create_study(storage=open_storage(url, heartbeat=None), study_name="t")
    study.enqueue_trial({"x": 1})
    study.sampler = stopped_while_preparing()
    with trial_tag("host:1:1#0"):
        with pytest.raises(KeyboardInterrupt):
            study.optimize(lambda t: 0.0, n_trials=1)  # claims the queued trial
        with pytest.raises(KeyboardInterrupt):
            study.optimize(lambda t: 0.0, n_trials=1)  # creates one
    study.sampler = optuna.samplers.RandomSampler()
    untagged = study.ask()  # outside trial_tag: as Optuna makes it
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["RUNNING"] * 3
    assert [t.user_attrs.get("worker") for t in trials] == ["host:1:1#0", "host:1:1#0", None]
    assert trials[1].datetime_start is not None and untagged.number == 2


def test_shown_url_names_local_files_relative_and_hides_passwords(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvt_nas.common.storage import shown_url

    monkeypatch.chdir(tmp_path)
    assert shown_url(f"sqlite:///{tmp_path / 'results' / 'study.db'}") == \
        "sqlite:///results/study.db"
    assert shown_url(str(tmp_path / "runs" / "a.journal")) == "runs/a.journal"
    assert shown_url("sqlite:////elsewhere/study.db") == "sqlite:////elsewhere/study.db"
    assert shown_url("postgresql+psycopg2://me:s3cret@db/x") == "postgresql+psycopg2://me:***@db/x"


def test_a_postgresql_storage_rides_out_a_server_restart_and_an_outage(
        postgres: PostgresServer) -> None:
    import threading

    storage = open_storage(postgres.url(), heartbeat=None)
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    postgres.restart()  # every pooled connection is now dead: checked before use, replaced
    assert [t.value for t in study.get_trials()] == [1.0]
    assert postgres.ctl is not None
    postgres.ctl("stop")  # down for a few seconds while the study is read: the call waits
    later = threading.Timer(3.0, postgres.ctl, args=("start",))
    later.start()
    try:
        trial = study.trials[0]
        study.set_user_attr("after", "outage")
        assert trial.value == 1.0 and study.user_attrs["after"] == "outage"
    finally:
        later.join()


def test_optimize_one_goes_on_past_a_trial_failed_elsewhere_but_not_past_a_bug_or_a_stop(
) -> None:
    import signal

    from cvt_nas.common.pool import STOP, Interrupted, stop_on_signals
    from cvt_nas.common.storage import optimize_one

    study = optuna.create_study()
    ran: list[optuna.Trial] = []
    said: list[str] = []

    def failed_under_it(trial: optuna.Trial, then: Any = None) -> float:
        ran.append(trial)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        if then is not None:
            then()
        return 1.0

    optimize_one(study, failed_under_it, lambda: ran[-1], said.append)
    assert said == ["trial 0 was failed by another worker while it ran here (its heartbeat "
                    "looked stale); going on"]

    def bug(trial: optuna.Trial) -> float:
        ran.append(trial)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        optimize_one(study, bug, lambda: ran[-1], said.append)
    try:
        with stop_on_signals(), pytest.raises(Interrupted) as stopped:
            # a stop that lands in a trial failed elsewhere: Optuna's tell error replaces it
            optimize_one(study, lambda t: failed_under_it(
                t, lambda: os.kill(os.getpid(), signal.SIGTERM)), lambda: ran[-1], said.append)
    finally:
        STOP.clear()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert len(said) == 1
