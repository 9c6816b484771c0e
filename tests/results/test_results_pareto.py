"""Pareto ranks and hypervolume against brute force and hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvt_nas.results import (
    default_reference,
    hypervolume,
    hypervolume_history,
    hypervolume_points,
    pareto_front,
    pareto_rank,
)

STATUSES = ["complete", "complete", "complete", "pruned", "failed", "infeasible"]


def _dominates(a: dict, b: dict, objectives: dict) -> bool:
    better = False
    for name, direction in objectives.items():
        x, y = a[name], b[name]
        if direction == "max":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def _usable(row: dict, objectives: dict) -> bool:
    return row["status"] == "complete" and all(not np.isnan(row[k]) for k in objectives)


def _brute_ranks(df: pd.DataFrame, objectives: dict) -> dict:
    """Rank by repeatedly peeling the rows no remaining row dominates (plain O(n^2) loops)."""
    rows = {i: r for i, r in df.to_dict("index").items() if _usable(r, objectives)}
    ranks, rank = {}, 1
    while rows:
        front = [i for i, a in rows.items()
                 if not any(_dominates(b, a, objectives) for j, b in rows.items() if j != i)]
        for i in front:
            ranks[i] = rank
            del rows[i]
        rank += 1
    return ranks


@st.composite
def frames(draw):
    n = draw(st.integers(0, 25))
    m = draw(st.integers(1, 4))
    names = [f"o{k}" for k in range(m)]
    objectives = {k: draw(st.sampled_from(["max", "min"])) for k in names}
    # Few distinct values so ties (equal objectives, equal vectors) are common.
    value = st.one_of(st.integers(0, 3).map(float), st.just(float("nan")))
    data = {k: draw(st.lists(value, min_size=n, max_size=n)) for k in names}
    data["status"] = draw(st.lists(st.sampled_from(STATUSES), min_size=n, max_size=n))
    df = pd.DataFrame(data, index=draw(st.permutations(range(100, 100 + n))))
    return df, objectives


@settings(max_examples=150, deadline=None)
@given(frames())
def test_pareto_front_and_ranks_match_brute_force(case):
    df, objectives = case
    expected = _brute_ranks(df, objectives)
    ranks = pareto_rank(df, objectives)
    got = {i: int(r) for i, r in ranks.items() if not pd.isna(r)}
    assert got == expected
    front = pareto_front(df, objectives)
    assert set(front.index) == {i for i, r in expected.items() if r == 1}
    assert (front["pareto_rank"] == 1).all()
    everything = pareto_front(df, objectives, all_ranks=True)
    assert set(everything.index) == set(expected)
    assert everything["pareto_rank"].is_monotonic_increasing


def test_ties_share_the_front_and_nan_or_unfinished_rows_do_not_count():
    df = pd.DataFrame({
        "val_top1": [90.0, 90.0, 80.0, 99.0, np.nan, 95.0],
        "macs": [10, 10, 5, 1, 1, 20],
        "status": ["complete", "complete", "complete", "pruned", "complete", "complete"],
    })
    obj = {"val_top1": "max", "macs": "min"}
    ranks = pareto_rank(df, obj)
    assert ranks.tolist()[:3] == [1, 1, 1] and ranks[5] == 1
    assert ranks.isna().tolist() == [False, False, False, True, True, False]
    front = pareto_front(df, obj)
    # Sorted by the first objective (max first), ties kept in their original order.
    assert front.index.tolist() == [5, 0, 1, 2]


def test_bad_objectives_are_clear_errors():
    df = pd.DataFrame({"val_top1": [1.0], "macs": [2]})
    with pytest.raises(ValueError, match="direction 'up'"):
        pareto_front(df, {"val_top1": "up"})
    with pytest.raises(ValueError, match="'latency' is not a column"):
        pareto_front(df, {"latency": "min"})
    with pytest.raises(ValueError, match="no objectives"):
        pareto_front(df, {})


def test_hypervolume_2d_by_hand():
    # Accuracy up, MACs down; ref (acc 0, macs 100). Boxes: 90x50 + 80x(80-50)... by hand:
    # points (90, 50), (80, 20), (60, 10), dominated (70, 60). Sweep over MACs:
    # [10,20) -> 60, [20,50) -> 80, [50,100) -> 90: 10*60 + 30*80 + 50*90 = 7500.
    df = pd.DataFrame({"val_top1": [90.0, 80.0, 60.0, 70.0], "macs": [50, 20, 10, 60],
                       "status": ["complete"] * 4})
    obj = {"val_top1": "max", "macs": "min"}
    assert hypervolume(df, obj, {"val_top1": 0.0, "macs": 100}) == pytest.approx(7500.0)
    # Same reference as a sequence in objective order; a point outside the reference adds 0.
    assert hypervolume(df, obj, [0.0, 40]) == pytest.approx(10 * 60 + 20 * 80)
    assert hypervolume(df, obj, [95.0, 100]) == 0.0


def test_hypervolume_3d_by_hand():
    obj = {"a": "min", "b": "min", "c": "min"}
    one = pd.DataFrame({"a": [1.0], "b": [1.0], "c": [1.0]})
    assert hypervolume(one, obj, [2, 3, 4]) == pytest.approx(1 * 2 * 3)
    # Two boxes of volume 2 overlapping in a unit cube: 2 + 2 - 1 = 3.
    two = pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.0], "c": [1.0, 1.0]})
    assert hypervolume(two, obj, [2, 2, 2]) == pytest.approx(3.0)
    # Three points, ref (4, 4, 4): inclusion-exclusion.
    # A=(0,2,2): 4*2*2=16, B=(2,0,2): 16, C=(2,2,0): 16; pairwise 2*2*2=8 each; triple 8.
    three = pd.DataFrame({"a": [0.0, 2.0, 2.0], "b": [2.0, 0.0, 2.0], "c": [2.0, 2.0, 0.0]})
    assert hypervolume(three, obj, [4, 4, 4]) == pytest.approx(3 * 16 - 3 * 8 + 8)
    # Maximizing a column mirrors it: max a with ref -4 equals min -a with ref 4.
    mirrored = three.assign(a=-three["a"])
    assert hypervolume(mirrored, {"a": "max", "b": "min", "c": "min"}, [-4, 4, 4]) == \
        pytest.approx(32.0)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 4).flatmap(lambda d: st.lists(
    st.tuples(*[st.integers(0, 3)] * d), min_size=0, max_size=8)))
def test_hypervolume_matches_unit_cell_count(points):
    """Integer points in [0, 4)^d with ref 4: the volume is the number of dominated unit cells."""
    if not points:
        assert hypervolume_points(np.empty((0, 2)), np.array([4.0, 4.0])) == 0.0
        return
    d = len(points[0])
    cells = sum(
        any(all(p[k] <= c[k] for k in range(d)) for p in points)
        for c in itertools.product(range(4), repeat=d)
    )
    assert hypervolume_points(np.array(points, float), np.full(d, 4.0)) == pytest.approx(cells)


def test_hypervolume_history_is_anytime_and_ends_at_the_total():
    df = pd.DataFrame({
        "trial": [0, 1, 2, 3],
        "status": ["complete", "pruned", "complete", "complete"],
        "val_top1": [50.0, 99.0, 80.0, 70.0],
        "macs": [50, 1, 20, 30],
        "wall_time_s": [10.0, 5.0, 10.0, 10.0],
    })
    obj = {"val_top1": "max", "macs": "min"}
    ref = {"val_top1": 0.0, "macs": 100}
    hist = hypervolume_history(df, obj, ref)
    assert hist["n_trials"].tolist() == [1, 2, 3, 4]
    assert hist["hypervolume"].tolist() == pytest.approx([50 * 50, 50 * 50, 80 * 80, 80 * 80])
    assert hist["elapsed_s"].tolist() == [10.0, 15.0, 25.0, 35.0]  # no finished_at: summed
    # With finishing times the order and the clock follow them (two workers in parallel).
    timed = df.assign(finished_at=["2026-01-01T00:00:10Z", "2026-01-01T00:00:05Z",
                                   "2026-01-01T00:00:12Z", "2026-01-01T00:00:20Z"])
    hist = hypervolume_history(timed, obj, ref)
    assert hist["trial"].tolist() == [1, 0, 2, 3]
    # The study starts when trial 0 starts (00:00:10 minus its 10 s), so it finishes at 10 s.
    assert hist["elapsed_s"].tolist() == pytest.approx([5.0, 10.0, 12.0, 20.0])
    assert hist["hypervolume"].iloc[-1] == pytest.approx(hypervolume(df, obj, ref))


def test_default_reference_is_just_past_the_worst_point():
    df = pd.DataFrame({"val_top1": [60.0, 80.0], "macs": [10, 30], "status": ["complete"] * 2})
    ref = default_reference(df, {"val_top1": "max", "macs": "min"})
    assert ref == pytest.approx({"val_top1": 58.0, "macs": 32.0})
    assert hypervolume(df, {"val_top1": "max", "macs": "min"}, ref) > 0
