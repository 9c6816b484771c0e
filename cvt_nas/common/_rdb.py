"""Our Optuna storages: an RDB storage that pickles without the password in its URL, rides out
a database server restart and claims trials atomically; both tag their trials with their worker.

Ray Tune pickles its searcher (and with it the study and its storage) into the experiment
folder (``tuner.pkl``, ``searcher-state-*.pkl``); Optuna's own ``RDBStorage`` keeps its URL in
what it pickles. This one keeps the URL without its password; unpickled, it takes the full URL
from the environment variable named at creation (``$CVT_NAS_STORAGE``) when that names the same
database, else it connects without a password (PostgreSQL then reads ``~/.pgpass``).

Server restarts: a call that fails because the connection is gone (SQLAlchemy's
``OperationalError``/``InterfaceError``: the server closed it, refuses, or is starting up) is
tried again for up to `RECONNECT_S` on a fresh connection, for every call whose repeat is
harmless (reads, attributes, parameters, heartbeats, a trial's final state). Creating a study or
a trial is not repeated: a commit cut off mid-way may have happened, and a second one would add a
trial nobody runs. SQLite is not retried (its lock waits have their own timeout).

Claiming a trial: Optuna starts a WAITING (enqueued) trial by reading its state and then writing
RUNNING, with ``SELECT ... FOR UPDATE``, which SQLite ignores; two workers (threads or
processes) could both read WAITING and both run the trial, and the second to finish failed with
"Cannot tell a COMPLETE trial". Failing a dead worker's trial had the same race (two survivors
could both fail it, and both queue its parameters again). Here each is one conditional ``UPDATE
... WHERE state IN (...)``: the database lets exactly one worker through, on SQLite and
PostgreSQL alike.

Tagging a trial: inside `cvt_nas.common.proc.trial_tag(tag)`, a trial this thread creates or
claims carries the ``worker`` user attr from the same commit that makes it RUNNING. Set later
(the objective's first line), a stop or kill in between (Optuna's sampler runs in between) left
a RUNNING trial that no check could tell dead: it counted toward ``--trials`` for ever.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cvt_nas.common.proc import current_tag

RECONNECT_S = 60.0
_PASSWORD_KEYS = ("password", "passwd", "pwd")
# RDBStorage methods whose repeat after a lost connection is harmless (see the module docstring);
# ``_get_trials`` is what Optuna's cached storage reads trials with.
_REPEATABLE = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "get_trial_param", "get_trial",
    "get_all_trials", "_get_trials", "get_trial_id_from_study_id_trial_number",
    "get_best_trial", "set_study_user_attr", "set_study_system_attr", "set_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "record_heartbeat", "_get_stale_trial_ids")
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):\S*@(?=[^@\s]*(?:[/?]|$))")


def tagged_template(template: FrozenTrial | None) -> FrozenTrial | None:
    """What a new trial of this thread is created from: Optuna's plain RUNNING trial, with this
    thread's worker tag (`cvt_nas.common.proc.trial_tag`); ``template`` itself when there is
    no tag or a template."""
    tag = current_tag()
    if tag is None or template is not None:
        return template
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                       datetime_start=datetime.now(), datetime_complete=None, params={},
                       distributions={}, user_attrs={"worker": tag}, system_attrs={},
                       intermediate_values={}, trial_id=-1)


class SecretFreeRDBStorage(RDBStorage):
    """`optuna.storages.RDBStorage` whose pickled state holds its URL without the password."""

    def __init__(self, url: str, *, env: str, **kwargs: Any) -> None:
        self.env = env
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = without_password(self.url)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        full = os.environ.get(state["env"])
        if full and without_password(full) == state["url"]:
            state = {**state, "url": full}
        super().__setstate__(state)

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's, tagged with this thread's worker in the same commit (`trial_tag`)."""
        return super()._create_new_trial(study_id, tagged_template(template_trial))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """Optuna's, except that a change of state alone is one conditional UPDATE: WAITING ->
        RUNNING (a claim) and RUNNING/WAITING -> finished (failing a dead worker's trial) happen
        for exactly one of the workers racing for them (module docstring)."""
        if values is not None or not (state == TrialState.RUNNING or state.is_finished()):
            return super().set_trial_state_values(trial_id, state, values)
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        trial = models.TrialModel
        now = datetime.now(UTC).replace(tzinfo=None)  # Optuna stores naive UTC
        change: dict[Any, Any] = {trial.state: state}
        if state == TrialState.RUNNING:
            before = [TrialState.WAITING]
            change[trial._datetime_start_utc] = now
        else:
            before = [TrialState.RUNNING, TrialState.WAITING]
            change[trial._datetime_complete_utc] = now
        with _create_scoped_session(self.scoped_session) as session:
            changed = (session.query(trial)
                       .filter(trial.trial_id == trial_id, trial.state.in_(before))
                       .update(change, synchronize_session=False))
            if changed and state == TrialState.RUNNING and (tag := current_tag()) is not None:
                self._tag_without_commit(session, trial_id, tag)  # one commit with the claim
            if changed:
                return True
            # as Optuna: a finished trial raises UpdateFinishedTrialError; a running one is
            # someone else's claim
            found: TrialState = trial.find_or_raise_by_id(trial_id, session).state  # type: ignore[assignment]
            self.check_trial_is_updatable(trial_id, found)
            return False

    def beating(self, trial_ids: Sequence[int]) -> set[int]:
        """Which of these trials have recorded a heartbeat (only those can turn stale: Optuna
        skips a RUNNING trial that never beat)."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        if not trial_ids:
            return set()
        beat = models.TrialHeartbeatModel
        with _create_scoped_session(self.scoped_session) as session:
            rows = session.query(beat.trial_id).filter(beat.trial_id.in_(list(trial_ids))).all()
        return {int(r[0]) for r in rows}

    @staticmethod
    def _tag_without_commit(session: Any, trial_id: int, tag: str) -> None:
        from optuna.storages._rdb import models

        attr = models.TrialUserAttributeModel
        row = session.query(attr).filter(attr.trial_id == trial_id, attr.key == "worker").first()
        if row is None:
            session.add(attr(trial_id=trial_id, key="worker", value_json=json.dumps(tag)))
        else:
            row.value_json = json.dumps(tag)


class TaggedJournalStorage(JournalStorage):
    """Optuna's journal storage whose trials carry this thread's worker tag from the start
    (`cvt_nas.common.proc.trial_tag`): a new trial in its creating entry, a claimed one in the
    entry right after the claim."""

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, tagged_template(template_trial))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        claimed = super().set_trial_state_values(trial_id, state, values)
        if claimed and state == TrialState.RUNNING and (tag := current_tag()) is not None:
            self.set_trial_user_attr(trial_id, "worker", tag)
        return claimed


def _connection_lost(exc: BaseException) -> bool:
    """Is a lost or refused database connection behind ``exc`` (Optuna wraps it)?"""
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OperationalError, InterfaceError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reconnecting(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` tried again on a lost connection, for up to `RECONNECT_S` (not for SQLite)."""

    @functools.wraps(method)
    def call(self: SecretFreeRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline, wait = time.monotonic() + RECONNECT_S, 0.25
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if (self.url.startswith("sqlite") or not _connection_lost(exc)
                        or time.monotonic() + wait > deadline):
                    raise
            time.sleep(wait)
            wait = min(2 * wait, 4.0)

    return call


for _name in _REPEATABLE:
    setattr(SecretFreeRDBStorage, _name, _reconnecting(getattr(SecretFreeRDBStorage, _name)))


def without_password(url: str) -> str:
    """``scheme://user:pw@host/db?password=pw&x=1`` -> ``scheme://user@host/db?x=1`` (the
    password may hold '@', ':' or '/'; the last '@' before the host ends it)."""
    url = _USERINFO.sub(r"\g<head>@", url)
    base, sep, query = url.partition("?")
    if not sep:
        return url
    keep = [p for p in query.split("&") if p.split("=", 1)[0].lower() not in _PASSWORD_KEYS]
    return base + ("?" + "&".join(keep) if keep else "")
