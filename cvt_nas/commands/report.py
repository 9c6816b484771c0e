"""`cvt-nas report DIR`: print a results directory's Pareto table; rewrite its files on request.

Report reads; it writes nothing unless asked (``--write``). It reads the study itself when it can
(the storage study.yaml names, or ``DIR/study.db``), so a damaged or stale trials file never
hides the intact study beside it; otherwise it reads the tables, checked (`results.load`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cvt_nas.common.storage import DEFAULT_DB, STORAGE_ENV, redact
from cvt_nas.results import (
    StudyTables,
    from_optuna,
    load,
    load_epochs,
    load_meta,
    pareto_front,
    pareto_table,
    parse_objectives,
    study_objectives,
    to_latex,
    to_markdown,
    write_outputs,
)
from cvt_nas.results.importers import storage_file
from cvt_nas.results.io import OUTPUT_FILES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="print a results directory's Pareto table (--write: rewrite its files)",
        description="Print the Pareto table of a results directory, read from its study (the "
        "storage study.yaml names, or study.db in DIR) when there is one, else from its checked "
        "trials table. Nothing is written unless --write is given: then trials.csv/.parquet, "
        "epochs.parquet, pareto.csv/.md, pareto.png and study.yaml are rewritten from what was "
        "read.",
    )
    p.add_argument("dir", help="a results/<study>/ directory")
    p.add_argument("--objective", action="append", metavar="NAME:max|min",
                   help="objective and direction, as a search takes them (repeat; default: "
                   "study.yaml's)")
    p.add_argument("--storage", help="read the study from this Optuna storage (default: the one "
                   f"study.yaml names, else DIR/{DEFAULT_DB}, else the tables in DIR)")
    p.add_argument("--write", action="store_true",
                   help="rewrite the directory's tables, plot and study.yaml from what was read")
    p.add_argument("--latex", action="store_true", help="print the Pareto table as LaTeX")
    p.add_argument("--all-ranks", action="store_true",
                   help="print every complete trial with its Pareto rank, not only the front")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    meta = load_meta(directory)  # also: a clear error when DIR is no results directory
    objectives = (parse_objectives(args.objective, "--objective") if args.objective is not None
                  else study_objectives(directory))
    tables, source = _read(directory, meta, args.storage)
    trials = tables.trials
    front = pareto_front(trials, objectives, all_ranks=args.all_ranks)
    table = pareto_table(front, objectives)
    if args.all_ranks:
        table.insert(0, "rank", front["pareto_rank"].to_numpy())
    counts = trials["status"].value_counts() if "status" in trials.columns else {}
    summary = ", ".join(f"{int(n)} {s}" for s, n in counts.items())
    print(f"{args.dir}: {len(trials)} trials ({summary}) from {source}; objectives "
          + ", ".join(f"{k} {d}" for k, d in objectives.items()))
    print(to_latex(table) if args.latex else to_markdown(table))
    if args.write:
        write_outputs(directory, trials, tables.epochs, objectives, meta)
        print(f"wrote {', '.join(OUTPUT_FILES)} in {args.dir}")
    elif source != "its tables" and (note := _stale(directory, len(trials))):
        print(f"cvt-nas report: {note}; --write rebuilds them from the study", file=sys.stderr)
    return 0


def _read(directory: Path, meta: dict[str, Any], storage: str | None) -> tuple[StudyTables, str]:
    """The tables from the study when it can be found, else from the directory's files."""
    settings = meta.get("settings")
    stored = settings.get("storage") if isinstance(settings, dict) else None
    url = storage or _stored_url(str(stored or ""))
    if url is None and (directory / DEFAULT_DB).is_file():
        url = f"sqlite:///{(directory / DEFAULT_DB).resolve()}"
    if url is None:
        return StudyTables(load(directory), load_epochs(directory)), "its tables"
    name = meta.get("study") or _stored_study(directory)
    try:
        return from_optuna(url, name), f"the study in {redact(url)}"
    except ValueError as exc:
        if storage is not None:  # asked for by name: its error is the answer
            raise
        print(f"cvt-nas report: cannot read the study ({exc}); reading the tables instead",
              file=sys.stderr)
        return StudyTables(load(directory), load_epochs(directory)), "its tables"


def _stored_url(url: str) -> str | None:
    """The storage study.yaml names, when it can be read here: a SQLite or journal file that
    exists (a copied results directory may name one it left behind), or a database server
    (its password, hidden in study.yaml, from $CVT_NAS_STORAGE)."""
    if "***" in url:
        url = os.environ.get(STORAGE_ENV, "")
    if not url:
        return None
    path = storage_file(url)
    return url if path is None or path.is_file() else None


def _stored_study(directory: Path) -> str | None:
    """The study name the directory's trials carry (None: let the storage's only study be it)."""
    try:
        studies = load(directory)["study"].dropna().unique()
    except (ValueError, FileNotFoundError, KeyError):
        return None
    return str(studies[0]) if len(studies) == 1 else None


def _stale(directory: Path, n_trials: int) -> str | None:
    """What is wrong with the directory's tables next to the study's ``n_trials`` (None: they
    agree in number, or there are none)."""
    try:
        stored = len(load(directory))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        return f"the tables in {directory} cannot be used ({str(exc).split('; ')[0]})"
    if stored != n_trials:
        return f"the tables in {directory} hold {stored} trials, the study {n_trials}"
    return None
