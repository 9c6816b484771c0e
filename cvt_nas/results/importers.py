"""Rebuild the trials and epochs tables straight from a search backend's own storage.

The search backends store each trial's record (`make_record`) and history (`history_rows`
input) with the trial (docs/CONTRACTS.md):

* Optuna: ``trial.user_attrs["record"]`` and ``trial.user_attrs["history"]``.
* Ray Tune: the trainable's last ``tune.report`` holds ``record_json`` and ``history_json``
  (JSON strings), found in each trial folder's ``result.json``.

Both importers give the same columns as ``load`` of a results directory. A finished trial without
a stored record (it crashed before reporting one) still gets a row: status from the backend,
``reason`` saying the record is missing, costs and metrics empty.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from cvt_nas.results.records import epochs_frame, history_rows, records_frame


class StudyTables(NamedTuple):
    """A study's trials table and long per-epoch table."""

    trials: pd.DataFrame
    epochs: pd.DataFrame


def _stub(study: str, trial: int, backend: str, status: str, reason: str,
          error: str | None = None) -> dict[str, Any]:
    return {"study": study, "trial": trial, "backend": backend, "status": status,
            "reason": reason, "error": error}


def from_optuna(storage: str, study_name: str | None = None) -> StudyTables:
    """The tables of an Optuna study, e.g. ``from_optuna("sqlite:///study.db", "cvt_micro")``.

    Args:
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql+psycopg2://...``) or a
            path to a journal file (``*.log``/``*.journal``).
        study_name: which study; may be left out when the storage holds exactly one.

    Raises:
        ValueError: the storage cannot be opened, or the study is missing or ambiguous.
    """
    import optuna

    storage_obj: Any = storage
    if "://" not in storage:
        path = Path(storage)
        if not path.exists():
            raise ValueError(f"Optuna storage {storage!r}: no such file; give a storage URL such "
                             "as sqlite:///path/to/study.db or a journal file path")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage_obj = JournalStorage(JournalFileBackend(str(path)))
    try:
        names = optuna.study.get_all_study_names(storage=storage_obj)
    except Exception as exc:  # bad URL, unreachable server, not a database
        raise ValueError(f"cannot open Optuna storage {storage!r}: {exc}") from None
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"Optuna storage {storage!r} holds studies {names}; name one")
        study_name = names[0]
    if study_name not in names:
        raise ValueError(f"no study {study_name!r} in Optuna storage {storage!r}; "
                         f"it holds {names}")
    study = optuna.load_study(study_name=study_name, storage=storage_obj)
    state_status = {
        optuna.trial.TrialState.COMPLETE: "complete",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
    }
    records, epochs = [], []
    trials = study.get_trials(deepcopy=False)
    # A dead worker's trial is failed and retried under a new number (system attr failed_trial);
    # a trial that lost the race for the last slot of a multi-worker study is flagged surplus.
    # Neither is a result of its own (the search's own tables leave them out too).
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for t in trials:
        if t.state not in state_status:
            continue  # running or waiting: not a result yet
        record = t.user_attrs.get("record")
        if t.user_attrs.get("surplus") or (record is None and t.number in retried):
            continue
        if isinstance(record, dict):
            records.append(record)
            trial_no = int(record.get("trial", t.number))
            epochs += history_rows(str(record.get("study", study_name)), trial_no,
                                   t.user_attrs.get("history"))
        else:
            records.append(_stub(study_name, t.number, "optuna", state_status[t.state],
                                 "no record stored with the trial",
                                 t.system_attrs.get("fail_reason")))
    return StudyTables(records_frame(records), epochs_frame(epochs))


# Ray names a trial ``<hash5>_<index05>`` and its folder ``<trainable>_<hash5>_<index05>_<tag>``;
# the hash is hex and may be all digits, so the index is the 5 digits that follow it.
_TRIAL_INDEX = re.compile(r"_(\d+)$")
_DIR_INDEX = re.compile(r"_[0-9a-f]{5}_(\d{5})_")


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
    return rows


def from_ray(experiment_dir: str | Path) -> StudyTables:
    """The tables of a Ray Tune experiment directory (``<storage_path>/<name>``).

    Reads each trial folder's ``result.json`` (one JSON object per ``tune.report``); the last
    report with ``record_json`` gives the record. Needs no running Ray cluster.

    Raises:
        FileNotFoundError: the directory holds no Tune trial folders.
    """
    root = Path(experiment_dir)
    trial_dirs = sorted({p.parent for p in root.glob("*/result.json")}
                        | {p.parent for p in root.glob("*/params.json")})
    if not root.is_dir() or not trial_dirs:
        raise FileNotFoundError(
            f"{str(root)!r} is not a Ray Tune experiment directory (no trial folders with "
            "result.json); give the folder Tuner's RunConfig(storage_path=..., name=...) wrote"
        )
    study = root.name
    records, epochs = [], []
    for tdir in trial_dirs:
        reports = _read_results(tdir / "result.json") if (tdir / "result.json").exists() else []
        last = next((r for r in reversed(reports) if "record_json" in r), None)
        if last is not None:
            record = json.loads(last["record_json"])
            records.append(record)
            history = json.loads(last["history_json"]) if last.get("history_json") else []
            epochs += history_rows(str(record.get("study", study)), int(record["trial"]), history)
            continue
        trial_id = str(reports[-1].get("trial_id", tdir.name)) if reports else tdir.name
        match = _TRIAL_INDEX.search(trial_id) or _DIR_INDEX.search(tdir.name)
        error_file = tdir / "error.txt"
        error = error_file.read_text(errors="replace").strip().splitlines()[-1:] \
            if error_file.exists() else []
        records.append(_stub(study, int(match.group(1)) if match else len(records), "ray",
                             "failed", "no record reported by the trial",
                             error[0] if error else None))
    trials = records_frame(records).sort_values("trial", kind="stable", ignore_index=True)
    return StudyTables(trials, epochs_frame(epochs))
