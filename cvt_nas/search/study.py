"""The Optuna study as the store of a search, whichever backend runs the trials.

Both backends keep their trials in an Optuna study (the Ray backend through `OptunaSearch`), so
resuming, counting, the progress line and the results tables work the same way for both. Each
finished trial holds ``user_attrs["record"]`` and ``user_attrs["history"]`` (docs/architecture.md).

Counting toward ``--trials N`` (the study's total): a trial counts once it holds a record
(complete, pruned, failed, diverged, oom, infeasible) or while it runs. A trial that failed
without a record (its process was killed) does not count; its parameters are retried once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from cvt_nas.common.proc import alive, is_local
from cvt_nas.common.storage import fail_dead_trials as fail_trials_of_dead_workers
from cvt_nas.common.storage import open_storage, redact
from cvt_nas.space import SearchSpace
from cvt_nas.training.config import get_recipe

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
RECENT_S = 600.0  # another machine's worker that finished a trial this recently may be live


def make_storage(url: str, heartbeat: int | None = 10) -> BaseStorage:
    """The study's storage (`cvt_nas.common.storage.open_storage`); a dead trial's parameters
    are retried once (`retry_trial`)."""
    return open_storage(url, heartbeat, on_stale=retry_trial)


# The parts of a space file that decide what a trial means; `search` (trials, sampler, ...) may
# change between runs of one study.
SPACE_KEYS = ("base", "model", "train", "constraints")


def space_identity(space: SearchSpace) -> dict[str, Any]:
    """What decides the meaning of a study's trials, in JSON-normal form.

    The file's ``base``, ``model``, ``train`` and ``constraints`` sections (after ``--set``), plus
    the base `CvTConfig` and the recipe's `TrainConfig` as this version of cvt-nas resolves them,
    so that a changed default (e.g. a recipe's augmentation) is caught as well as an edit. A
    simulated search adds its table's identity (``table``): its trials are not trained ones, and
    another table's are not its own.
    """
    ident: dict[str, Any] = {k: space.raw.get(k) for k in SPACE_KEYS}
    ident["resolved_base"] = space.base.to_dict()
    ident["resolved_recipe"] = get_recipe(space.recipe).to_dict()
    bench = getattr(space, "bench", None)  # a simulated search's table (`TableSpace`)
    if bench is not None:
        ident["table"] = bench.identity
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def _changed_keys(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    order = {k: i for i, k in enumerate(SPACE_KEYS)}
    for key in sorted(set(before) | set(now), key=lambda k: (order.get(k, len(order)), k)):
        a, b = before.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{f}" for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        else:
            out.append(key)
    return out


def open_study(storage: BaseStorage, name: str, objectives: dict[str, str],
               sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None,
               space: SearchSpace | None = None) -> optuna.Study:
    """Create the study or load it.

    An existing study must have the same objectives and, when ``space`` is given, the same
    `space_identity`: resuming with another space would mix incomparable trials in one Pareto
    front. A study made before this check existed is stamped with the current identity; one
    stamped by an older cvt-nas is compared on the parts that version recorded, then completed.
    """
    directions: list[Literal["maximize", "minimize"]] = [
        "maximize" if d == "max" else "minimize" for d in objectives.values()]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(objectives))
    elif list(stored) != list(objectives):
        raise ValueError(f"study {name!r} was created with objectives {stored}; re-run with "
                         f"--objectives {','.join(stored)} or pick a new --study name")
    if space is not None:
        ident = space_identity(space)
        before = stamped = study.user_attrs.get("space")
        if before is not None and "table" in ident and "table" not in before \
                and _backend(study) == "table":
            before = {**before, "table": ident["table"]}  # simulated before tables were stamped
        if before is not None and ("table" in before) != ("table" in ident):
            kind = "simulated (--backend table)" if "table" in before else "trained"
            raise ValueError(f"study {name!r} holds {kind} trials, which this search must not "
                             "mix with its own; pick a new --study name (or --out directory)")
        if before is not None:
            # compare the parts both versions record: an older cvt-nas stamped fewer of them
            changed = _changed_keys(before, {k: v for k, v in ident.items() if k in before})
            if "table" in changed:
                raise ValueError(f"study {name!r} simulated its trials on another table (another "
                                 "space, recipe or sample); pick a new --study name (or --out "
                                 "directory)")
            if changed:
                raise ValueError(f"study {name!r} was created from a different search space "
                                 f"({', '.join(changed)} changed, e.g. by an edit or --set); its "
                                 "trials are not comparable with new ones. Undo the change to "
                                 "resume, or pick a new --study name (or --out directory)")
        if stamped != ident:  # a new study, or one stamped by an older version: complete the stamp
            study.set_user_attr("space", ident)
    return study


def _backend(study: optuna.Study) -> str | None:
    """The backend of a study's first recorded trial (None: no trial yet)."""
    for t in study.get_trials(deepcopy=False):
        record = t.user_attrs.get("record")
        if record:
            return str(record.get("backend"))
    return None


def counts(t: FrozenTrial) -> bool:
    """Does this trial count toward the study's total?"""
    if t.user_attrs.get("surplus"):
        return False
    return t.state == TrialState.RUNNING or (t.state in FINISHED and "record" in t.user_attrs)


@dataclass
class Tally:
    """Where a study stands."""

    counted: int = 0  # finished with a record, or running
    running: int = 0
    statuses: Counter = field(default_factory=Counter)  # record status -> finished trials

    @property
    def done(self) -> int:
        return self.counted - self.running


def tally(study: optuna.Study) -> Tally:
    """Count a study's trials (see the module docstring for what counts)."""
    out = Tally()
    for t in study.get_trials(deepcopy=False):
        if not counts(t):
            continue
        out.counted += 1
        if t.state == TrialState.RUNNING:
            out.running += 1
        else:
            out.statuses[t.user_attrs["record"].get("status", "?")] += 1
    return out


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a dead trial's parameters again (once), unless it already recorded a result."""
    if "record" in trial.user_attrs or trial.system_attrs.get("retry_history"):
        return
    if any(t.system_attrs.get("failed_trial") == trial.number  # another worker queued it already
           for t in study.get_trials(deepcopy=False)):
        return
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]}))


def fail_dead_trials(study: optuna.Study, only_local: bool = True) -> list[int]:
    """The search's recovery: fail the trials of dead workers (`cvt_nas.common.storage.
    fail_dead_trials`) and queue each one's parameters again, once (`retry_trial`)."""
    return fail_trials_of_dead_workers(study, on_dead=retry_trial, only_local=only_local)


def other_live_worker(study: optuna.Study, tag: str, before: int | None = None) -> bool:
    """Does a worker other than ``tag`` work on this study now (so that two workers seeded
    alike would draw the same trials)? Only trials numbered below ``before`` are looked at.

    Another worker is live when one of its trials is RUNNING (dead workers' trials have been
    failed first), when it is a process of this machine that still runs, or when it is another
    machine's and finished a trial within `RECENT_S` (the only sign left of a worker whose
    trials all finish at once, e.g. over budget).
    """
    now = datetime.now()
    for t in study.get_trials(deepcopy=False):
        other = t.user_attrs.get("worker")
        if (before is not None and t.number >= before) or other == tag:
            continue
        if t.state == TrialState.RUNNING:
            return True
        if other is None:
            continue
        if is_local(other):
            if alive(other):
                return True
        elif t.datetime_complete and (now - t.datetime_complete).total_seconds() < RECENT_S:
            return True
    return False


def collect(study: optuna.Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records and per-epoch rows of the study's finished trials (`results.study_records`)."""
    from cvt_nas.results import study_records

    return study_records(study)


def write_results(study: optuna.Study, out_dir: str | Path, objectives: dict[str, str],
                  meta: dict[str, Any]) -> Path | None:
    """Write ``out_dir`` (trials, epochs, Pareto table, study.yaml) from the study's records.

    study.yaml's ``created`` is when the study's first trial started (not an earlier study's
    stamp left in the folder)."""
    from cvt_nas.results import write_outputs

    records, epochs = collect(study)
    if not records:
        return None
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if starts and "created" not in meta:
        first = min(starts)
        first = first if first.tzinfo else first.astimezone()  # Optuna stores local time
        meta = {**meta, "created": first.astimezone(UTC).isoformat(timespec="seconds")}
    return write_outputs(out_dir, records, epochs, objectives, meta)


@contextlib.contextmanager
def results_on_exit(study: optuna.Study, out_dir: str | Path, objectives: dict[str, str],
                    meta: dict[str, Any]) -> Iterator[None]:
    """Write the results when the block ends, also when it is interrupted (Ctrl-C)."""
    try:
        yield
    finally:
        try:
            write_results(study, out_dir, objectives, meta)
        except Exception as exc:  # noqa: BLE001 - never hide the block's own error
            print(f"cvt-nas search: could not write {out_dir}: {redact(str(exc))}",
                  file=sys.stderr)
