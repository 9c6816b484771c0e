"""The table's own front and rank agreement (`cvt_nas.bench.analysis`), against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvt_nas.bench import (
    cpu_shares,
    kendall_tau,
    load,
    rank_agreement,
    seed_agreement,
    summary,
    table_front,
)
from cvt_nas.cli import main
from cvt_nas.results import hypervolume_points

OBJ = {"val_top1": "max", "macs": "min"}


def _tau_b(x, y):
    """Kendall's tau-b from its definition, pair by pair."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        c, d = c + (s > 0), d + (s < 0)
        tx, ty = tx + (x[i] == x[j]), ty + (y[i] == y[j])
    n0 = len(x) * (len(x) - 1) // 2
    denom = np.sqrt((n0 - tx) * (n0 - ty))
    return (c - d) / denom if denom else float("nan")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=12))
def test_kendall_tau_is_tau_b_with_ties(pairs):
    x, y = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    tau, c, d = kendall_tau(x, y)
    want = _tau_b(x, y)
    assert (np.isnan(tau) and np.isnan(want)) or abs(tau - want) < 1e-12
    assert kendall_tau(x, x)[0] == 1.0 or np.isnan(want)


def test_table_front_is_the_brute_force_front_of_every_final_run(tiny_table):
    b = load(tiny_table)
    front = table_front(b, OBJ)
    final = b.final()
    pts = [(r.val_top1, r.macs) for r in final.itertuples()]
    nd = {(v, m) for v, m in pts
          if not any(v2 >= v and m2 <= m and (v2, m2) != (v, m) for v2, m2 in pts)}
    assert set(zip(front.points["val_top1"], front.points["macs"], strict=True)) == nd
    ref = np.array([-front.reference["val_top1"], front.reference["macs"]])
    hv = hypervolume_points(np.array([(-v, m) for v, m in pts]), ref)
    assert front.hypervolume == hv > 0 and front.runs == len(final) == 13
    assert front.reference["val_top1"] < min(v for v, _ in pts)  # every run adds volume


def test_rank_agreement_compares_each_seed_s_first_epoch_with_its_last(tiny_table):
    b = load(tiny_table)
    agree = rank_agreement(b)
    assert list(agree["seed"]) == [0, 1] and set(agree["epoch"]) == {1}
    seed0 = b.final()[lambda d: d["seed"] == 0].set_index("arch_id")["val_top1"]
    early = b.final(1)[lambda d: d["seed"] == 0].set_index("arch_id")["val_top1"][seed0.index]
    assert agree["archs"].iloc[0] == len(seed0) == 10 and agree["archs"].iloc[1] == 3
    assert agree["kendall_tau"].iloc[0] == kendall_tau(early.to_numpy(), seed0.to_numpy())[0]


def test_seed_agreement_is_the_spread_and_ranking_agreement_of_seeds_by_brute_force(tiny_table):
    b = load(tiny_table)
    noise = seed_agreement(b)
    assert list(noise["epoch"]) == [1, 2]
    final = b.final()
    multi = final.groupby("arch_id")["seed"].nunique()[lambda s: s >= 2].index
    assert len(multi) == 3  # the fixture's archs with seeds 0 and 1
    for epoch, row in noise.set_index("epoch").iterrows():
        at = b.final(epoch)[lambda d: d["arch_id"].isin(multi)]
        s0 = at[at["seed"] == 0].set_index("arch_id")["val_top1"].sort_index()
        s1 = at[at["seed"] == 1].set_index("arch_id")["val_top1"].sort_index()
        assert row["archs"] == 3 and row["runs"] == 6 and row["seed_pairs"] == 1
        diffs = (s0 - s1).abs()
        # two seeds: the sample std of each architecture is |a - b| / sqrt(2)
        assert np.isclose(row["seed_std"], (diffs / np.sqrt(2)).mean())
        assert np.isclose(row["seed_range"], diffs.max())
        assert row["kendall_tau"] == _tau_b(s0.to_numpy(), s1.to_numpy())


def test_seed_agreement_is_empty_without_an_architecture_run_twice(table_copy):
    import pandas as pd

    table = pd.read_parquet(table_copy / "table.parquet")
    table[table["seed"] == 0].to_parquet(table_copy / "table.parquet")
    noise = seed_agreement(load(table_copy))
    assert noise.empty and "seed_std" in noise.columns


def test_summary_counts_the_table_by_brute_force(tiny_table):
    b = load(tiny_table)
    info = summary(b)
    runs: dict[tuple[str, int], list] = {}
    for r in b.table.itertuples():
        runs.setdefault((r.arch_id, int(r.seed)), []).append(r)
    complete = {k: max(v, key=lambda r: r.epoch) for k, v in runs.items()
                if v[0].status == "complete"}
    assert info["runs"] == len(complete) and info["failed"] == len(runs) - len(complete)
    assert info["archs"] == len({a for a, _ in complete})
    per_arch: dict[str, int] = {}
    for a, _ in complete:
        per_arch[a] = per_arch.get(a, 0) + 1
    assert info["seeds"] == {n: sum(1 for v in per_arch.values() if v == n)
                             for n in set(per_arch.values())}
    vals = [r.val_top1 for r in complete.values()]
    assert info["val_top1"] == [min(vals), max(vals)]
    assert info["run_s"][0] == min(r.time_s for r in complete.values())
    assert info["front"] == len(table_front(b, OBJ).points)
    assert info["archs_asked"] == b.manifest.get("archs_asked", len(b.archs))
    judged = [k for k, v in runs.items() if v[0].status == "complete"
              and v[0].device.startswith("cpu") and all(r.cpu_time_s == r.cpu_time_s for r in v)]
    assert info["cpu_runs"] == len(judged)


def test_runs_timed_on_a_shared_cpu_are_named(table_copy):
    t = pd.read_parquet(table_copy / "table.parquet")
    wall = (t["train_time_s"] + t["eval_time_s"]) * t["threads"]
    first = (t["arch_id"] == t["arch_id"].iloc[0]) & (t["seed"] == t["seed"].iloc[0])
    t["cpu_time_s"] = np.where(first, 0.5 * wall, 0.98 * wall)  # one run got half its cores
    t.loc[t.index[-1], "cpu_time_s"] = np.nan  # a run without the count is not judged
    t.to_parquet(table_copy / "table.parquet")
    b = load(table_copy)
    shares = cpu_shares(b)
    unjudged = (t["arch_id"].iloc[-1], int(t["seed"].iloc[-1]))
    judged = {(a, int(s)) for a, s in zip(t["arch_id"], t["seed"], strict=True)} - {unjudged}
    assert set(zip(shares["arch_id"], shares["seed"], strict=True)) == judged
    info = summary(b)
    assert info["cpu_runs"] == len(judged)
    assert info["shared_cpu"] == [{"arch_id": t["arch_id"].iloc[0],
                                   "seed": int(t["seed"].iloc[0]), "share": pytest.approx(0.5)}]


def test_bench_show_prints_the_summary_and_refuses_what_is_not_a_table(tiny_table, tmp_path,
                                                                       capsys):
    assert main(["bench", "show", str(tiny_table), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(summary(load(tiny_table))))
    assert main(["bench", "show", str(tiny_table)]) == 0
    out = capsys.readouterr().out
    assert f"{info['archs']} of {info['archs_asked']} asked for" in out
    assert f"{info['runs']} complete" in out and "Pareto front" in out
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        assert main(["bench", "show", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "cvt-nas bench build" in err and len(err.splitlines()) == 1


def test_summary_counts_a_failed_run_apart_from_the_complete_ones(tiny_table, table_copy):
    before = summary(load(tiny_table))
    t = pd.read_parquet(table_copy / "table.parquet")
    arch, seed = t.iloc[0]["arch_id"], t.iloc[0]["seed"]
    run = (t["arch_id"] == arch) & (t["seed"] == seed)
    t.loc[run, "status"] = "diverged"  # it stopped after its first epoch
    t.loc[run, ["test_top1", "test_top5"]] = float("nan")
    t = t[~run | (t["epoch"] == 1)]
    t.to_parquet(table_copy / "table.parquet")
    after = summary(load(table_copy))
    assert after["failed"] == before["failed"] + 1 == 1
    assert after["runs"] == before["runs"] - 1
