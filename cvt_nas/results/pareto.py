"""Non-dominated sorting, Pareto fronts and exact hypervolume over a trials DataFrame.

Objectives are a mapping ``{"val_top1": "max", "macs": "min"}``. Internally every objective is
turned into minimization (max columns are negated), so one dominance rule serves all mixes:
``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better in one.
Identical objective vectors do not dominate each other, so ties share a rank.

Only rows that can be compared take part: rows whose ``status`` is ``complete`` (when the frame
has a status column) and whose objective values are all finite numbers. Every other row gets no
rank (``<NA>``) and adds nothing to a hypervolume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cvt_nas.results.objectives import DIRECTIONS, Objectives, check_objectives


def eligible(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """Boolean mask of rows that take part: status ``complete`` and finite objective values."""
    objectives = check_objectives(df, objectives)
    mask = pd.Series(True, index=df.index)
    if "status" in df.columns:
        mask &= df["status"].astype("string").eq("complete").fillna(False).astype(bool)
    for name in objectives:
        values = pd.to_numeric(df[name], errors="coerce").astype("float64")
        mask &= np.isfinite(values.to_numpy(na_value=np.nan))
    return mask


def _minimization_matrix(df: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    cols = [
        pd.to_numeric(df[name], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        * DIRECTIONS[direction]
        for name, direction in objectives.items()
    ]
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def _dominates_any(points: np.ndarray, by: np.ndarray) -> np.ndarray:
    """For each row of ``points``: is it dominated by some row of ``by`` (minimization)?"""
    out = np.zeros(len(points), dtype=bool)
    step = max(1, 4_000_000 // max(1, len(by) * points.shape[1]))  # bound memory per chunk
    for start in range(0, len(points), step):
        p = points[start:start + step, None, :]  # (chunk, 1, M)
        no_worse = np.all(by[None, :, :] <= p, axis=2)  # (chunk, |by|)
        better = np.any(by[None, :, :] < p, axis=2)
        out[start:start + step] = np.any(no_worse & better, axis=1)
    return out


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Pareto rank of each row of a minimization matrix: 1 for the front, 2 for the next, ...

    Peels fronts one after another (O(M N^2) per front); fine for the hundreds to few thousands
    of trials a search produces.
    """
    n = len(points)
    ranks = np.zeros(n, dtype=np.int64)
    remaining = np.arange(n)
    rank = 1
    while remaining.size:
        pts = points[remaining]
        front = ~_dominates_any(pts, pts)
        ranks[remaining[front]] = rank
        remaining = remaining[~front]
        rank += 1
    return ranks


def pareto_rank(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """Pareto rank of every row (1 = non-dominated); ``<NA>`` for rows that take no part."""
    objectives = check_objectives(df, objectives)
    mask = eligible(df, objectives)
    out = pd.Series(pd.NA, index=df.index, dtype="Int64", name="pareto_rank")
    if mask.any():
        out[mask] = nondominated_ranks(_minimization_matrix(df[mask], objectives))
    return out


def pareto_front(
    df: pd.DataFrame, objectives: Objectives, *, all_ranks: bool = False
) -> pd.DataFrame:
    """The non-dominated complete trials, best first, with a ``pareto_rank`` column.

    Args:
        df: a trials table (one row per trial).
        objectives: column -> ``"max"`` or ``"min"``.
        all_ranks: return every comparable row with its rank (non-dominated sorting), not only
            rank 1.

    Returns:
        A copy of the selected rows, sorted by rank, then by the first objective in its preferred
        direction, then by the others; rows with equal objectives keep their original order.
    """
    objectives = check_objectives(df, objectives)
    ranks = pareto_rank(df, objectives)
    keep = ranks.notna() if all_ranks else ranks.eq(1).fillna(False).astype(bool)
    out = df[keep].copy()
    out["pareto_rank"] = ranks[keep]
    by = ["pareto_rank", *objectives]
    ascending = [True, *(d == "min" for d in objectives.values())]
    return out.sort_values(by, ascending=ascending, kind="stable")


def _as_reference(ref: Mapping[str, float] | Sequence[float], objectives: Mapping[str, str]
                  ) -> np.ndarray:
    if isinstance(ref, Mapping):
        missing = [k for k in objectives if k not in ref]
        if missing:
            raise ValueError(f"reference point lacks objective(s) {missing}")
        values = [ref[k] for k in objectives]
    else:
        values = list(ref)
        if len(values) != len(objectives):
            raise ValueError(
                f"reference point has {len(values)} values for {len(objectives)} objectives "
                f"{list(objectives)}"
            )
    return np.array(
        [float(v) * DIRECTIONS[d] for v, d in zip(values, objectives.values(), strict=True)]
    )


def hypervolume(
    df: pd.DataFrame, objectives: Objectives, ref: Mapping[str, float] | Sequence[float]
) -> float:
    """Exact hypervolume dominated by the comparable rows, bounded by the reference point.

    The reference point is given in the objectives' own units and directions (for
    ``{"val_top1": "max", "macs": "min"}`` a ref ``{"val_top1": 0, "macs": 1e8}`` bounds accuracy
    from below and MACs from above). Points that are not strictly better than the reference in
    every objective add nothing.
    """
    objectives = check_objectives(df, objectives)
    r = _as_reference(ref, objectives)
    mask = eligible(df, objectives)
    return hypervolume_points(_minimization_matrix(df[mask], objectives), r)


def hypervolume_points(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of a minimization point set with respect to ``ref``.

    2-D uses a sort-and-sweep (O(n log n)); more dimensions slice along the last objective
    (HSO-style recursion), exact and fast enough for the fronts of a few hundred trials.
    """
    points = np.asarray(points, dtype=float).reshape(-1, len(ref))
    points = points[(points < ref).all(axis=1)]
    if not len(points):
        return 0.0
    points = points[~_dominates_any(points, points)]
    return float(_hv(np.unique(points, axis=0), np.asarray(ref, dtype=float)))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    # points: non-dominated, strictly inside ref, minimization.
    d = points.shape[1]
    if d == 1:
        return float(ref[0] - points[:, 0].min())
    if d == 2:
        pts = points[np.lexsort((points[:, 1], points[:, 0]))]
        area, best_y = 0.0, ref[1]
        for x, y in pts:
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(area)
    pts = points[np.argsort(points[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        height = upper - pts[i, -1]
        if height > 0:
            sub = pts[: i + 1, :-1]
            sub = sub[~_dominates_any(sub, sub)]
            volume += height * _hv(np.unique(sub, axis=0), ref[:-1])
    return volume


def default_reference(df: pd.DataFrame, objectives: Objectives, margin: float = 0.1
                      ) -> dict[str, float]:
    """A reference point just past the worst comparable value of each objective.

    Worst value pushed outward by ``margin`` times the objective's range (or of its magnitude when
    the range is zero), so that the worst points still add a little volume. Compare studies with
    one shared reference: compute it on the concatenated frame.
    """
    objectives = check_objectives(df, objectives)
    sub = df[eligible(df, objectives)]
    ref = {}
    for name, direction in objectives.items():
        values = pd.to_numeric(sub[name], errors="coerce").astype("float64")
        if values.empty:
            raise ValueError(f"no complete trials with a value for {name!r}; give a reference")
        lo, hi = float(values.min()), float(values.max())
        pad = margin * (hi - lo) or margin * max(abs(lo), abs(hi)) or margin
        ref[name] = lo - pad if direction == "max" else hi + pad
    return ref


def ideal_box(df: pd.DataFrame, objectives: Objectives, ref: Mapping[str, float]) -> float:
    """Volume of the box between the best value of each objective and the reference point.

    Dividing a hypervolume by it gives a unit-free fraction in [0, 1] (1 would mean one trial
    best in every objective at once), comparable across studies that share ``ref``.
    """
    objectives = check_objectives(df, objectives)
    sub = df[eligible(df, objectives)]
    volume = 1.0
    for name, direction in objectives.items():
        values = pd.to_numeric(sub[name], errors="coerce").astype("float64")
        if values.empty:
            return float("nan")
        best = values.max() if direction == "max" else values.min()
        volume *= max(0.0, (best - ref[name]) if direction == "max" else (ref[name] - best))
    return volume


def hypervolume_history(
    df: pd.DataFrame,
    objectives: Objectives,
    ref: Mapping[str, float] | Sequence[float],
) -> pd.DataFrame:
    """Any-time performance: the hypervolume after each trial, in finishing order.

    Trials are ordered by ``finished_at`` when every row has one, else by ``trial``. Elapsed
    time is seconds since the study's first trial started (``finished_at - wall_time_s``), or the
    running sum of ``wall_time_s`` when finishing times are missing (then it is compute time).

    Returns:
        One row per trial: ``n_trials``, ``trial``, ``elapsed_s``, ``hypervolume``.
    """
    objectives = check_objectives(df, objectives)
    r = _as_reference(ref, objectives)
    wall = np.zeros(len(df))
    if "wall_time_s" in df.columns:
        wall = pd.to_numeric(df["wall_time_s"], errors="coerce").astype("float64")
        wall = wall.fillna(0.0).to_numpy()
    finished = None
    if "finished_at" in df.columns and len(df):
        finished = pd.to_datetime(df["finished_at"], utc=True, errors="coerce", format="ISO8601")
    if finished is not None and finished.notna().all():
        end = (finished - finished.min()).dt.total_seconds().to_numpy()
        elapsed = end - min(0.0, float((end - wall).min()))
        order = np.argsort(elapsed, kind="stable")
        elapsed = elapsed[order]
    else:
        keys = np.arange(len(df))
        if "trial" in df.columns:
            keys = pd.to_numeric(df["trial"]).to_numpy()
        order = np.argsort(keys, kind="stable")
        elapsed = np.cumsum(wall[order])
    ordered = df.iloc[order]
    mask = eligible(ordered, objectives).to_numpy()
    points = _minimization_matrix(ordered, objectives)
    trials = ordered["trial"].to_numpy() if "trial" in ordered.columns else np.arange(len(df))
    rows, current, front = [], 0.0, np.empty((0, len(objectives)))
    for k in range(len(ordered)):
        if mask[k] and (points[k] < r).all():
            front = np.vstack([front, points[k]])
            front = front[~_dominates_any(front, front)]
            current = hypervolume_points(front, r)
        rows.append({"n_trials": k + 1, "trial": trials[k], "elapsed_s": float(elapsed[k]),
                     "hypervolume": current})
    return pd.DataFrame(rows, columns=["n_trials", "trial", "elapsed_s", "hypervolume"])
