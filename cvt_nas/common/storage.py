"""The one way to open an Optuna storage, for search, ablation and the importers alike.

A storage is named by a URL (``sqlite:///study.db``, ``postgresql+psycopg2://user@host/db``) or
a journal file path (``*.journal``, ``*.log``, ``*.jsonl``, or ``journal:///path``). RDB
storages get heartbeats, so a trial whose process died is failed after ``grace`` seconds and its
parameters retried once (``on_stale``); SQLite waits up to 60 s for a lock; a database server
that restarts is reconnected to (`cvt_nas.common._rdb`); workers that create the schema of a new
database at the same moment wait for each other instead of failing.

Secrets: a password may be given in the URL, in ``$CVT_NAS_STORAGE`` (read when ``--storage`` is
not given, so the URL is not on a command line) or, better, in PostgreSQL's own password file
(``~/.pgpass``, or the file ``$PGPASSFILE`` names; mode 0600), which psycopg2 reads: then the URL
holds no password at all. Every URL we print or write goes through `redact` first, and an opened
RDB storage pickles without its password (Ray pickles its searcher, and so the storage, into its
experiment folder).

Dead workers: `fail_dead_trials` fails the RUNNING trials of workers that are gone (this
machine: by pid, `cvt_nas.common.proc`; other machines: by their stale heartbeat) before anyone
counts the study, since a dead RUNNING trial still looks busy.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
STORAGE_ENV = "CVT_NAS_STORAGE"
DEFAULT_DB = "study.db"

# What losing the race to create a new database's schema looks like (SQLite, PostgreSQL).
_SCHEMA_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")
_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "journal")

# user:password@ in any URL (the password may itself hold '@' or ':'), and password=... in a
# query string or a libpq keyword string
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@"
                       r"(?=[^@\s]*(?:[/?\s]|$))")
_PASSWORD_PARAM = re.compile(r"(?i)(?P<key>\b(?:password|passwd|pwd)=)[^&\s]*")


class StorageError(ValueError):
    """A storage that cannot be opened or is not a storage at all (the message says which)."""


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    >>> redact("postgresql://me:s3cr@t@db:5432/x?password=y")
    'postgresql://me:***@db:5432/x?password=***'
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['key']}***", text)


def shown_url(url: str) -> str:
    """``url`` as written into results files: redacted (`redact`), and a SQLite or journal file
    under the working directory named relative to it, so no machine's folder layout is kept.

    >>> shown_url(f"sqlite:///{Path.cwd() / 'results' / 'study.db'}")
    'sqlite:///results/study.db'
    """
    prefix = "sqlite:///" if url.startswith("sqlite:///") else "" if "://" not in url else None
    if prefix is not None and Path(url[len(prefix):]).is_absolute():
        with contextlib.suppress(ValueError):
            return prefix + str(Path(url[len(prefix):]).relative_to(Path.cwd()))
    return redact(url)


def default_storage_url(out_dir: str | Path) -> str:
    """``sqlite:///<out_dir>/study.db``: the embedded default, nothing to start."""
    return f"sqlite:///{Path(out_dir).resolve() / DEFAULT_DB}"


def resolve_url(arg: str | None, default: str) -> tuple[str, str]:
    """The storage a command uses and how the user named it (for messages): ``--storage`` when
    given, else ``$CVT_NAS_STORAGE`` when set, else ``default``."""
    if arg is not None:
        return arg, "--storage"
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env, f"${STORAGE_ENV}"
    return default, "--storage"


def is_journal(url: str) -> bool:
    return url.startswith("journal://") or ("://" not in url and url.endswith(JOURNAL_SUFFIXES))


def check_url(url: str, flag: str = "--storage") -> str:
    """The URL, or a `StorageError` saying what a storage URL looks like."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"{flag}: empty; give sqlite:///path/study.db, "
                           "postgresql+psycopg2://user@host/db or a *.journal file")
    if is_journal(url):
        return url
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise StorageError(f"{flag} {redact(url)!r}: not a storage URL; give sqlite:///path/"
                           "study.db, postgresql+psycopg2://user@host/db (password in "
                           f"${STORAGE_ENV} or ~/.pgpass) or a file ending in "
                           f"{'/'.join(JOURNAL_SUFFIXES)}")
    return url


def open_storage(url: str, heartbeat: int | None = 10,
                 on_stale: Callable[[Any, Any], None] | None = None,
                 flag: str = "--storage") -> Any:
    """An Optuna storage from a URL or a journal-file path.

    Args:
        url: the storage (see the module docstring).
        heartbeat: seconds between RDB heartbeats of a running trial (None: none); a trial is
            stale after three missed beats.
        on_stale: Optuna's ``heartbeat_stale_trial_callback`` (e.g. retry the parameters).
        flag: how the user named the storage, for messages.

    Raises:
        StorageError: the storage cannot be opened; the message names it (password hidden) and
            what to check.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from cvt_nas.common._rdb import SecretFreeRDBStorage, TaggedJournalStorage

    url = check_url(url, flag)
    if is_journal(url):
        path = Path(url.removeprefix("journal://"))
        if path.is_dir():
            raise StorageError(f"{flag} {path}: is a directory; name a journal file inside it")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return TaggedJournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001 - unreadable or not a journal
            raise StorageError(f"{flag} {path}: cannot open the journal file: "
                               f"{_first_line(exc)}") from None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        db = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if db and Path(db).is_dir():
            raise StorageError(f"{flag} {redact(url)}: is a directory; name a .db file inside it")
        if db:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:  # a server: check a pooled connection before use, so a restart costs no error
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
        if on_stale is not None:
            kwargs["heartbeat_stale_trial_callback"] = on_stale
    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return SecretFreeRDBStorage(url, env=STORAGE_ENV, **kwargs)
        except Exception as exc:  # unreachable server, missing driver, bad URL, schema race
            msg = redact(_first_line(exc))
            if any(m in msg for m in _SCHEMA_RACE) and attempt < 7:
                # another process is creating the schema of this new database right now (many
                # workers starting at once): it is there in a moment
                time.sleep(0.25 * (attempt + 1))
                continue
            raise StorageError(f"cannot open Optuna storage {redact(url)}: {msg}; check the URL, "
                               "that the database server runs and accepts this user, and that "
                               "its driver is installed (pip install psycopg2-binary for "
                               "PostgreSQL)") from None
    raise AssertionError("unreachable")


def fail_stale_trials(study: Any) -> None:
    """Optuna's heartbeat check (FAIL trials with a stale heartbeat, run the storage's callback),
    without its experimental-API warning; a no-op for storages without heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def abandon_trials(study: Any, tag: str, current: Iterable[Any] = (),
                   on_failed: Callable[[Any, Any], None] | None = None) -> None:
    """Leave a stopped worker's trials resumable: fail those still RUNNING among ``current``
    and those carrying its ``tag`` (one stopped while Optuna prepared it was never current);
    ``on_failed(study, trial)`` runs for each that ends FAIL (Optuna fails the trial a stop
    interrupted itself), e.g. to queue its parameters again."""
    from optuna.trial import TrialState

    ids = [t._trial_id for t in current]
    ids += [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == tag and t._trial_id not in ids]
    storage = study._storage
    for trial_id in ids:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - it finished meanwhile
                continue
        frozen = storage.get_trial(trial_id)
        if on_failed is not None and frozen.state == TrialState.FAIL:
            on_failed(study, frozen)


def finished_elsewhere(exc: BaseException, study: Any, trial: Any | None) -> bool:
    """Did ``exc`` come out of Optuna's tell of ``trial`` because another worker had already
    finished it (failed it as stale after a database outage, or abandoned it on a stop)?

    Optuna's tell then raises "Cannot tell a FAIL trial." or ``UpdateFinishedTrialError``, and
    its optimize loop turns that into "AssertionError: Should not reach.". The trial stays as the
    other worker left it (a result stored in its record still counts); the worker can go on.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    if trial is None or not study._storage.get_trial(trial._trial_id).state.is_finished():
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UpdateFinishedTrialError) or (
                isinstance(seen, ValueError) and str(seen).startswith("Cannot tell a ")):
            return True
        seen = seen.__context__
    return False


def optimize_one(study: Any, func: Callable[[Any], Any], current: Callable[[], Any | None],
                 say: Callable[[str], None], stop: threading.Event | None = None,
                 **kwargs: Any) -> None:
    """``study.optimize(func, n_trials=1, **kwargs)``, going on past a trial that another worker
    failed under this one (`finished_elsewhere`; ``current()`` is the trial ``func`` ran), which
    is said with ``say``. A stop meanwhile (Optuna's tell error replaced it) still stops: the
    main thread raises the stop's `Interrupted`; a loop thread (``stop`` set) just returns."""
    from cvt_nas.common.pool import STOP, stop_exception

    try:
        study.optimize(func, n_trials=1, **kwargs)
    except (ValueError, AssertionError) as exc:
        trial = current()
        if trial is None or not finished_elsewhere(exc, study, trial):
            raise
        if STOP.is_set() and threading.current_thread() is threading.main_thread():
            raise stop_exception() from exc
        if STOP.is_set() or (stop is not None and stop.is_set()):
            return
        say(f"trial {trial.number} was failed by another worker while it ran here (its "
            "heartbeat looked stale); going on")


def fail_dead_trials(study: Any, on_dead: Callable[[Any, Any], None] | None = None,
                     only_local: bool = True) -> list[int]:
    """Fail the RUNNING trials whose worker is gone; returns their numbers.

    Other machines' trials are failed by a stale heartbeat (RDB storages; the storage's
    ``on_stale`` callback runs for each). This machine's are failed when the process named by
    their ``worker`` user attr (`cvt_nas.common.proc.worker_tag`) no longer runs, without
    waiting for a heartbeat, and ``on_dead`` runs for each (e.g. queue the parameters again).
    Without ``only_local`` every RUNNING or WAITING trial is failed: for a driver that is the
    study's only user (the Ray backend).
    """
    from optuna.trial import TrialState

    from cvt_nas.common.proc import alive

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    fail_stale_trials(study)  # a no-op without heartbeats
    failed = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.number in running)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        tag = t.user_attrs.get("worker")
        if only_local and (t.state != TrialState.RUNNING or tag is None or alive(tag)):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile by its own process
            continue
        failed.append(t.number)
        if on_dead is not None and t.state == TrialState.RUNNING:
            on_dead(study, t)
    return failed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
