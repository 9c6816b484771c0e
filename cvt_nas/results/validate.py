"""Checks of the tables a results directory holds, before anything is computed from them.

A trials file cut short by a crash, edited by hand or written by another tool must not flow into
a Pareto front unnoticed: `load` and `load_epochs` check what they read and raise ONE clear
``ValueError`` naming the file, the column, the trial and the fix.

What is checked:

* the file reads at all; a CSV's every line has as many fields as its header (a cut line is
  padded with empty cells by pandas, silently);
* ``trials.csv`` and ``trials.parquet``, when both are there, hold the same trials;
* the columns a table needs are there (trials: ``study``, ``trial``, ``status``; epochs:
  ``study``, ``trial``, ``epoch``);
* every value has its column's schema type (`cvt_nas.results.records.column_kind`): integers,
  numbers, booleans; per-block strings such as ``"1,2,2,1"`` only in per-block columns;
* values: trial numbers are unique integers >= 0, ``status`` is one of `STATUSES`, accuracies
  lie in [0, 100], counts and times are >= 0.
"""

from __future__ import annotations

import csv
import math
import numbers
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from cvt_nas.common import fmt
from cvt_nas.model.config import BLOCK_FIELDS
from cvt_nas.results.records import STATUSES, column_kind

TRIAL_COLUMNS = ("study", "trial", "status")
EPOCH_KEY_COLUMNS = ("study", "trial", "epoch")
PERCENT_COLUMNS = ("val_top1", "val_top5", "test_top1", "test_top5")
NONNEGATIVE_COLUMNS = ("params", "macs", "epochs", "wall_time_s", "images_per_s", "threads")
_BLOCKS = re.compile(r"^\s*\d+(\.\d*)?(\s*,\s*\d+(\.\d*)?)*\s*$")
_BOOL_TEXT = ("true", "false", "1", "0", "yes", "no")


def read_table(path: Path, fix: str) -> pd.DataFrame:
    """A CSV or parquet table, whole: a file that cannot be read, or a CSV line with too few
    or too many fields, is an error naming the file (``fix`` says what to do)."""
    problem = None
    try:
        if path.suffix != ".parquet":
            problem = _csv_problem(path)
        if problem is None:
            return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow / parser / decoding errors of a bad file
        text = str(exc).strip()
        problem = f"cannot be read ({text.splitlines()[0] if text else type(exc).__name__})"
    raise ValueError(f"{path}: {problem}; {fix}")


def _csv_problem(path: Path) -> str | None:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return "empty file"
        for row in reader:
            if row and len(row) != len(header):
                return (f"line {reader.line_num} has {len(row)} of {len(header)} fields "
                        "(cut short or damaged)")
    return None


def check_same_trials(parquet: pd.DataFrame, csv_table: pd.DataFrame, where: Path, fix: str
                      ) -> None:
    """trials.parquet and trials.csv of one directory must hold the same trial numbers."""
    a = sorted(pd.to_numeric(parquet.get("trial", pd.Series(dtype=float)), errors="coerce")
               .dropna().astype(int))
    b = sorted(pd.to_numeric(csv_table.get("trial", pd.Series(dtype=float)), errors="coerce")
               .dropna().astype(int))
    if a != b:
        raise ValueError(f"{where}: trials.parquet ({len(parquet)} rows) and trials.csv "
                         f"({len(csv_table)} rows) hold different trials; one was cut short or "
                         f"edited; {fix}")


def check_trials(df: pd.DataFrame, source: str | Path, fix: str) -> None:
    """Check a raw trials table (as read from a file) against the record schema.

    Raises:
        ValueError: the first problem found, naming ``source``, the column and the trial.
    """
    _require(df, TRIAL_COLUMNS, source, "trials", fix)
    trials = _trial_numbers(df, source, fix)
    for col in df.columns:
        _check_column(df[col], str(col), trials, source, fix)
    bad = ~df["status"].isin(STATUSES) & df["status"].notna()
    if df["status"].isna().any() or bad.any():
        i = int(np.flatnonzero(bad | df["status"].isna())[0])
        _fail(source, "status", trials[i], df["status"].iloc[i], f"one of {list(STATUSES)}", fix)
    for col, lo, hi in [*((c, 0.0, 100.0) for c in PERCENT_COLUMNS),
                        *((c, 0.0, math.inf) for c in NONNEGATIVE_COLUMNS)]:
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce").astype("float64")
            out = ~values.between(lo, hi) & values.notna()
            if out.any():
                i = int(np.flatnonzero(out)[0])
                what = f"in [{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
                _fail(source, col, trials[i], df[col].iloc[i], what, fix)


def check_epochs(df: pd.DataFrame, source: str | Path, fix: str) -> None:
    """Check a raw per-epoch table: key columns present, numbers where numbers belong."""
    if df.empty:
        return
    _require(df, EPOCH_KEY_COLUMNS, source, "per-epoch", fix)
    trials = [str(v) for v in df["trial"]]
    for col in df.columns:
        if col == "study":
            continue
        _check_column(df[col], str(col), trials, source, fix, kind="int" if col in (
            "trial", "epoch") else "float")


def _require(df: pd.DataFrame, columns: tuple[str, ...], source: str | Path, what: str,
             fix: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: no column {missing[0]!r}; a {what} table written by cvt-nas "
                         f"has {list(columns)} (and more); {fix}")


def _trial_numbers(df: pd.DataFrame, source: str | Path, fix: str) -> list[str]:
    out, seen = [], set()
    for i, v in enumerate(df["trial"]):
        number = _number(v)
        if not _integral(v) or number is None or number < 0:
            _fail(source, "trial", f"in row {i + 1}", v, "a trial number (an integer >= 0)", fix)
        if int(number) in seen:
            raise ValueError(f"{source}: trial {int(number)} appears twice; {fix}")
        seen.add(int(number))
        out.append(str(int(number)))
    return out


def _check_column(series: pd.Series, col: str, trials: list[str], source: str | Path, fix: str,
                  kind: str | None = None) -> None:
    kind = kind or column_kind(col)
    if kind not in ("int", "float", "bool"):
        return
    blocks = col.rsplit("_s", 1)[0] in BLOCK_FIELDS
    ok = {"int": _integral, "float": _real, "bool": _boolean}[kind]
    for i, v in enumerate(series):
        if fmt.is_missing(v) or ok(v) or (blocks and isinstance(v, str) and _BLOCKS.match(v)):
            continue
        what = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
        _fail(source, col, trials[i], v, what + (" or per-block values like 1,2,2" if blocks
                                                 else ""), fix)


def _fail(source: str | Path, col: str, trial: str, value: Any, what: str, fix: str) -> NoReturn:
    where = trial if trial.startswith("in row") else f"trial {trial}"
    value = value.item() if isinstance(value, np.generic) else value
    raise ValueError(f"{source}: column {col!r}, {where}: {value!r} is not {what}; {fix}")


def _number(v: Any) -> float | None:
    """``v`` as a float when it is a number or a number's text (a CSV column that also holds
    one bad value is read as text throughout), else None."""
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _real(v: Any) -> bool:
    return _number(v) is not None


def _integral(v: Any) -> bool:
    x = _number(v)
    return x is not None and math.isfinite(x) and x.is_integer()


def _boolean(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return True
    if isinstance(v, str):
        return v.strip().lower() in _BOOL_TEXT
    return _integral(v) and _number(v) in (0.0, 1.0)
