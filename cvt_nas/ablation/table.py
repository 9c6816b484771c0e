"""The table of an ablation experiment: our costs, the paper's numbers, our top-1 over seeds.

Columns of ``table.csv`` / ``table.md`` (one row per paper row, in the paper's order):

* ``row``, ``label``, the experiment's descriptive columns, ``run`` (false: paper-only row)
* ``params``, ``macs``: our exact counts of the paper-scale architecture (224 px, 1000 classes
  unless the row says otherwise); ``paper_params_m``, ``paper_gflops``, ``params_err``,
  ``macs_err`` (ours / paper - 1)
* ``paper_top1``, ``paper_delta`` (row - baseline row)
* at the chosen scale: ``run_params``, ``run_macs`` (the trained architecture), ``top1_mean``,
  ``top1_std`` (sample std over seeds, ddof 1), ``seeds``, ``test_top1_mean`` when evaluated,
  ``delta`` (our mean - baseline mean), ``delta_se`` (standard error of that difference,
  ``sqrt(s_r^2/n_r + s_b^2/n_b)``), ``same_sign`` (our delta has the paper's sign; empty for the
  baseline, paper-only rows, rows without a paper top-1 and exact ties), ``within_noise``
  (``|delta| <= 2 delta_se``)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvt_nas.ablation.experiment import Experiment, cost_rows
from cvt_nas.common import fmt
from cvt_nas.common.atomic import atomic_path, atomic_write_text
from cvt_nas.results.importers import StudyTables
from cvt_nas.results.tables import to_markdown

__all__ = ["build_table", "table_markdown", "table_records", "write_table"]


def table_records(tables: StudyTables, seeds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The records a table is made of, and their epochs: the complete trials of seeds
    ``0 .. seeds-1``, one per (row, seed), sorted by row and seed.

    ``tables`` is `cvt_nas.results.read_study` of the experiment's study (its rules leave out
    failed attempts' stand-ins and trials that lost a race for a pair); a study made before
    races were flagged may still hold two complete trials of a pair: the first one counts.
    """
    trials = tables.trials
    done = trials[trials["status"].eq("complete").fillna(False).astype(bool)
                  & trials["seed"].lt(seeds).fillna(False).astype(bool)]
    records = (done.drop_duplicates(["row", "seed"])
               .sort_values(["row", "seed"], kind="stable").reset_index(drop=True))
    epochs = tables.epochs[tables.epochs["trial"].isin(records["trial"])].reset_index(drop=True)
    return records, epochs


def _sign(x: Any) -> int:
    x = float(x)
    return int(x > 0) - int(x < 0)


def build_table(exp: Experiment, scale: str, records: pd.DataFrame | None = None,
                metric: str | None = None) -> pd.DataFrame:
    """The experiment's table; ``records`` (one row per trial, with ``row`` and ``seed``)
    fill the measured columns, and None gives the cost columns only (``--costs-only``)."""
    metric = metric or exp.scales[scale].metric
    table = pd.DataFrame(cost_rows(exp))
    table.insert(2, "run", [r.runs_at(scale) for r in exp.rows])
    paper_base = exp.row(exp.baseline).paper.get("top1")
    table["paper_delta"] = [
        (r.paper["top1"] - paper_base) if r.run and "top1" in r.paper and paper_base is not None
        else None for r in exp.rows
    ]
    if records is None:
        return table
    stats: dict[str, dict[str, Any]] = {}
    ok = records[records["status"] == "complete"] if "status" in records else records
    for key, group in ok.groupby("row"):
        vals = group[metric].dropna().astype(float)
        s: dict[str, Any] = {
            "run_params": int(group["params"].iloc[0]), "run_macs": int(group["macs"].iloc[0]),
            "top1_mean": vals.mean() if len(vals) else None,
            "top1_std": vals.std(ddof=1) if len(vals) > 1 else None,
            "seeds": len(vals),
        }
        if "test_top1" in group and metric != "test_top1" and group["test_top1"].notna().any():
            s["test_top1_mean"] = group["test_top1"].dropna().astype(float).mean()
        stats[str(key)] = s
    for col in ("run_params", "run_macs", "top1_mean", "top1_std", "seeds", "test_top1_mean"):
        table[col] = [stats.get(r.row, {}).get(col) for r in exp.rows]
    table["seeds"] = table["seeds"].fillna(0).astype(int)
    base = stats.get(exp.baseline, {})
    deltas: list[float | None] = []
    ses: list[float | None] = []
    same: list[bool | None] = []
    noise: list[bool | None] = []
    for r, pd_ in zip(exp.rows, table["paper_delta"], strict=True):
        s = stats.get(r.row, {})
        if r.row == exp.baseline or s.get("top1_mean") is None or base.get("top1_mean") is None:
            deltas.append(0.0 if r.row == exp.baseline and s else None)
            ses.append(None)
            same.append(None)
            noise.append(None)
            continue
        d = s["top1_mean"] - base["top1_mean"]
        var = sum((x.get("top1_std") or 0.0) ** 2 / max(x["seeds"], 1) for x in (s, base))
        se = math.sqrt(var) if var > 0 else None
        deltas.append(d)
        ses.append(se)
        # A tie (equal means, e.g. the same val images right on each seed) has no sign.
        tie = abs(d) < 1e-9
        same.append(None if fmt.is_missing(pd_) or _sign(pd_) == 0 or tie else _sign(d) == _sign(pd_))
        noise.append(None if se is None else abs(d) <= 2 * se)
    table["delta"], table["delta_se"] = deltas, ses
    table["same_sign"], table["within_noise"] = same, noise
    return table


def _cell(col: str, v: Any) -> str:
    """One cell of table.md: counts in M/G, relative errors in %, signed differences."""
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if col in ("params", "run_params"):
        return fmt.params(v)
    if col in ("macs", "run_macs"):
        return fmt.macs(v)
    if col.endswith("_err"):
        return fmt.percent(v)
    if col in ("delta", "paper_delta"):
        return fmt.signed(v)
    return fmt.cell(v)


def table_markdown(exp: Experiment, scale: str, table: pd.DataFrame) -> str:
    """A markdown rendering of `build_table`'s output with a short header."""
    sc = exp.scales[scale]
    cols = ["row", "label", *exp.columns, "params", "paper_params_m", "params_err", "macs",
            "paper_gflops", "macs_err", "paper_top1"]
    if "top1_mean" in table:
        cols += ["run_params", "run_macs", "top1_mean", "top1_std", "seeds", "delta",
                 "delta_se", "paper_delta", "same_sign", "within_noise"]
        if table.get("test_top1_mean") is not None and table["test_top1_mean"].notna().any():
            cols.insert(cols.index("seeds"), "test_top1_mean")
    cols = [c for c in cols if c in table and (c in ("row", "label") or table[c].notna().any())]
    lines = [f"# {exp.title}", "", f"Source: {exp.source}. Baseline row: {exp.baseline}.", ""]
    if "top1_mean" in table:
        lines += [f"Scale `{scale}`: base `{sc.base}`, recipe `{sc.recipe}`, metric `{sc.metric}` "
                  f"(mean and sample std over seeds). {sc.notes}", ""]
    lines += ["`params`/`macs`: our exact counts of the paper-scale architecture; "
              "`run_*` columns and top-1 are at the chosen scale.", ""]
    lines.append(to_markdown(table, cols, cell=_cell, align=False))
    notes = [f"- {r.row}: {r.note}" for r in exp.rows if r.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_table(exp: Experiment, scale: str, table: pd.DataFrame, out_dir: str | Path,
                records: pd.DataFrame | None = None, epochs: pd.DataFrame | None = None) -> None:
    """Write ``table.csv`` and ``table.md`` into ``out_dir``, and with them the records and
    epochs they were made of (``records.csv``, ``epochs.csv``), each file atomically."""
    out = Path(out_dir)
    frames = {"table.csv": table, "records.csv": records, "epochs.csv": epochs}
    for name, frame in frames.items():
        if frame is not None:
            with atomic_path(out / name) as tmp:
                frame.to_csv(tmp, index=False)
    atomic_write_text(out / "table.md", table_markdown(exp, scale, table))
