"""Plots of a study's front (pareto.png) and of several studies side by side (compare.png).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, no display needed) and saved atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cvt_nas.common.atomic import atomic_path
from cvt_nas.results.objectives import check_objectives
from cvt_nas.results.pareto import (
    eligible,
    hypervolume_history,
    pareto_rank,
)

_LABELS = {"val_top1": "val top-1 (%)", "val_top5": "val top-5 (%)", "test_top1": "test top-1 (%)",
           "macs": "MACs (M)", "params": "params (M)", "wall_time_s": "train time (s)"}
_SCALES = {"macs": 1e-6, "params": 1e-6}  # plotted in millions

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    # matplotlib is imported only to draw (about 1 s), not by everything that imports results
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label(col: str) -> str:
    return _LABELS.get(col, col)


def plot_axes(objectives: Mapping[str, str], columns: Sequence[str]) -> tuple[str, list[str]]:
    """The accuracy column (y) and up to two cost columns (x panels) to plot.

    y is the first maximized objective; the panels show the minimized objectives, then ``macs``
    and ``params`` when not already shown.
    """
    maxed = [k for k, d in objectives.items() if d == "max"]
    y = maxed[0] if maxed else next(iter(objectives))
    xs = [k for k, d in objectives.items() if d == "min" and k != y]
    xs += [c for c in ("macs", "params") if c in columns and c not in xs and c != y]
    return y, xs[:2]


def _numeric(s: pd.Series) -> np.ndarray:
    values = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
    return values * _SCALES.get(str(s.name), 1.0)


def _use_log(values: np.ndarray) -> bool:
    v = values[np.isfinite(values) & (values > 0)]
    return len(v) > 1 and v.max() / v.min() > 20


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _status_line(df: pd.DataFrame) -> str:
    if "status" not in df.columns or df.empty:
        return f"{len(df)} trials"
    counts = df["status"].value_counts()
    parts = [f"{int(n)} {s}" for s, n in counts.items()]
    return f"{len(df)} trials: " + ", ".join(parts)


def plot_pareto(df: pd.DataFrame, objectives: Mapping[str, str], path: str | Path, *,
                title: str | None = None) -> Path:
    """Accuracy against cost (one panel per cost column), front highlighted, rest faint.

    The front is the study's (under all its objectives), so with more than two objectives some
    front points can look dominated in a 2-D panel. Front points are labelled with their trial
    number; trials that are not complete are left out and counted in the subtitle.
    """
    objectives = check_objectives(df, objectives)
    y, xs = plot_axes(objectives, list(df.columns))
    fig = _new_figure(5.2 * max(1, len(xs)), 4.4)
    axes = fig.subplots(1, max(1, len(xs)), squeeze=False)[0]
    ok = eligible(df, objectives)
    rank = pareto_rank(df, objectives)
    front = (rank == 1).fillna(False).to_numpy(dtype=bool)
    yv = _numeric(df[y]) if y in df.columns else np.full(len(df), np.nan)
    for ax, x in zip(axes, xs or [y], strict=False):
        xv = _numeric(df[x])
        rest = ok.to_numpy() & ~front
        ax.scatter(xv[rest], yv[rest], s=18, color="0.55", alpha=0.35, label="dominated")
        order = np.argsort(xv[front], kind="stable")
        fx, fy = xv[front][order], yv[front][order]
        ax.scatter(fx, fy, s=42, color="tab:red", edgecolor="black", linewidth=0.6, zorder=3,
                   label="Pareto front")
        if len(objectives) == 2 and x in objectives and len(fx):
            ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, zorder=2)
        trials = df["trial"].to_numpy()[front][order] if "trial" in df.columns else []
        for tx, ty, t in zip(fx, fy, trials, strict=False):
            ax.annotate(str(t), (tx, ty), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
        if _use_log(xv[ok.to_numpy()]):
            ax.set_xscale("log")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if not ok.any():
        axes[0].text(0.5, 0.5, "no complete trials yet", transform=axes[0].transAxes,
                     ha="center", va="center")
    heading = title or "Pareto front"
    objs = ", ".join(f"{k} ({d})" for k, d in objectives.items())
    fig.suptitle(f"{heading}\n{objs}; {_status_line(df)}", fontsize=10)
    return _save(fig, path)


def plot_compare(frames: Mapping[str, pd.DataFrame], objectives: Mapping[str, str],
                 ref: Mapping[str, float], path: str | Path, *, scale: float | None = None
                 ) -> dict[str, pd.DataFrame]:
    """Overlay several studies' fronts and plot hypervolume against trials and wall time.

    Args:
        frames: study label -> trials table.
        objectives: shared objectives.
        ref: shared hypervolume reference point.
        path: where to write the PNG.
        scale: divide hypervolumes by this (e.g. `ideal_box` of all studies) so the curves read
            as fractions; None plots raw values.

    Returns:
        Study label -> its `hypervolume_history` table (raw values; the curves drawn divide
        them by ``scale``).
    """
    fig = _new_figure(15.5, 4.6)
    ax_front, ax_trials, ax_time = fig.subplots(1, 3)
    histories: dict[str, pd.DataFrame] = {}
    y, xs = plot_axes(objectives, sorted({c for f in frames.values() for c in f.columns}))
    x = xs[0] if xs else y
    all_x = []
    for i, (name, df) in enumerate(frames.items()):
        color = f"C{i % 10}"
        objectives = check_objectives(df, objectives)
        ok = eligible(df, objectives).to_numpy()
        front = (pareto_rank(df, objectives) == 1).fillna(False).to_numpy(dtype=bool)
        xv, yv = _numeric(df[x]), _numeric(df[y])
        all_x.append(xv[ok])
        ax_front.scatter(xv[ok & ~front], yv[ok & ~front], s=12, color=color, alpha=0.2)
        order = np.argsort(xv[front], kind="stable")
        ax_front.plot(xv[front][order], yv[front][order], marker="o", markersize=5,
                      color=color, label=name,
                      drawstyle="steps-post" if len(objectives) == 2 else "default")
        hist = hypervolume_history(df, objectives, ref)
        histories[name] = hist
        hv = hist["hypervolume"] / (scale or 1.0)
        ax_trials.step(hist["n_trials"], hv, where="post", color=color, label=name)
        ax_time.step(np.r_[0.0, hist["elapsed_s"]], np.r_[0.0, hv], where="post", color=color,
                     label=name)
    if all_x and _use_log(np.concatenate(all_x)):
        ax_front.set_xscale("log")
    ax_front.set(xlabel=_label(x), ylabel=_label(y), title="Pareto fronts")
    ref_text = ", ".join(f"{k}={v:.4g}" for k, v in ref.items())
    ylabel = "hypervolume" if not scale else "hypervolume (fraction of ideal box)"
    ax_trials.set(xlabel="trials finished", ylabel=ylabel,
                  title=f"hypervolume vs trials\n(ref {ref_text})")
    ax_time.set(xlabel="elapsed time (s)", ylabel=ylabel, title="hypervolume vs wall time")
    ax_time.set_xlim(left=0.0)
    for ax in (ax_front, ax_trials, ax_time):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
    return histories
