"""Read the trials and epochs tables back from where a study keeps them.

Every trial of a search (either backend) or an ablation stores its record (`make_record`) and
history (`history_rows` input) with the trial (docs/architecture.md):

* Optuna: ``trial.user_attrs["record"]`` and ``trial.user_attrs["history"]``, read by
  `study_records` (the one reader: the search's own tables, ``cvt-nas ablate``,
  ``cvt-nas report`` and `from_optuna` all go through it).
* Ray Tune: the trainable's last ``tune.report`` holds ``record_json`` and ``history_json``
  (JSON strings), found in each trial folder's ``result.json`` (`from_ray`).

Both give the same columns as ``load`` of a results directory. A finished trial without a
stored record (it crashed before reporting one) still gets a row: status from the backend,
``reason`` saying the record is missing, costs and metrics empty.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from cvt_nas.results.records import epochs_frame, history_rows, make_record, records_frame


class StudyTables(NamedTuple):
    """A study's trials table and long per-epoch table."""

    trials: pd.DataFrame
    epochs: pd.DataFrame


def _missing_record(study: str, trial: int, backend: str, status: str, reason: str,
                    error: str | None, finished_at: datetime | None) -> dict[str, Any]:
    """The row of a finished trial that stored no record: who it was and why it has no data."""
    return make_record(study=study, trial=trial, backend=backend, model_cfg=None, train_cfg=None,
                       result={"status": status, "error": error}, reason=reason,
                       finished_at=finished_at)


def study_records(study: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records and per-epoch rows of an Optuna study, one rule set for every reader.

    * Only finished trials (COMPLETE, PRUNED, FAIL) are results; RUNNING and WAITING ones are
      not yet.
    * A trial flagged ``surplus`` (it found a search's study already full) or ``duplicate_of``
      (it raced another worker for an ablation's row and seed) is no result of its own.
    * A finished trial without a record whose parameters were retried (a later trial's system
      attr ``failed_trial`` names it: its worker died) is left out: the retry stands for it.
    * Any other finished trial without a record still gets a row (status from its state,
      ``reason`` saying no record was stored, ``error`` Optuna's fail reason), so a crash
      shows instead of vanishing.
    * Rows are in trial order; a reused result (``reused_from``) is a row of its own.

    Args:
        study: an ``optuna.Study``.

    Returns:
        (records, epoch rows) as plain dicts, for `records_frame` / `epochs_frame`.
    """
    import optuna

    state_status = {
        optuna.trial.TrialState.COMPLETE: "complete",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
    }
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    records: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for t in trials:
        if t.state not in state_status or "surplus" in t.user_attrs \
                or "duplicate_of" in t.user_attrs:
            continue
        record = t.user_attrs.get("record")
        if isinstance(record, dict):
            records.append(record)
            epochs += history_rows(str(record.get("study", study.study_name)),
                                   int(record.get("trial", t.number)), t.user_attrs.get("history"))
        elif t.number not in retried:
            records.append(_missing_record(
                study.study_name, t.number, "optuna", state_status[t.state],
                "no record stored with the trial", t.system_attrs.get("fail_reason"),
                t.datetime_complete))
    order = sorted(range(len(records)), key=lambda i: int(records[i].get("trial", -1)))
    epochs.sort(key=lambda row: (row["trial"], row["epoch"]))
    return [records[i] for i in order], epochs


def read_study(study: Any) -> StudyTables:
    """The trials and per-epoch tables of an Optuna study (rules: `study_records`)."""
    records, epochs = study_records(study)
    return StudyTables(records_frame(records), epochs_frame(epochs))


def from_optuna(storage: str, study_name: str | None = None) -> StudyTables:
    """The tables of an Optuna study, e.g. ``from_optuna("sqlite:///study.db", "cvt_micro")``.

    Args:
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql+psycopg2://...``) or a
            path to a journal file (``*.journal``/``*.log``/``*.jsonl``). A file that does not
            exist is an error (it is never created).
        study_name: which study; may be left out when the storage holds exactly one.

    Raises:
        ValueError: the storage cannot be opened, or the study is missing or ambiguous.
    """
    import optuna

    from cvt_nas.common.storage import open_storage, redact

    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise ValueError(f"Optuna storage {redact(storage)!r}: no such file {str(path)!r}; give "
                         "the study's storage, e.g. sqlite:///results/<study>/study.db or a "
                         "journal file")
    storage_obj = open_storage(storage, heartbeat=None)
    try:
        names = optuna.study.get_all_study_names(storage=storage_obj)
    except Exception as exc:  # noqa: BLE001 - not a database, unreachable server
        raise ValueError(f"cannot read Optuna storage {redact(storage)!r}: {exc}") from None
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"Optuna storage {redact(storage)!r} holds studies {names}; name one")
        study_name = names[0]
    if study_name not in names:
        raise ValueError(f"no study {study_name!r} in Optuna storage {redact(storage)!r}; "
                         f"it holds {names}")
    return read_study(optuna.load_study(study_name=study_name, storage=storage_obj))


def storage_file(url: str) -> Path | None:
    """The local file behind a SQLite URL or journal path (None for a database server)."""
    from cvt_nas.common.storage import is_journal

    if is_journal(url):
        return Path(url.removeprefix("journal://"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


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
        ended = (error_file if error_file.exists() else tdir).stat().st_mtime
        records.append(_missing_record(
            study, int(match.group(1)) if match else len(records), "ray", "failed",
            "no record reported by the trial", error[0] if error else None,
            datetime.fromtimestamp(ended, UTC)))
    trials = records_frame(records).sort_values("trial", kind="stable", ignore_index=True)
    return StudyTables(trials, epochs_frame(epochs))
