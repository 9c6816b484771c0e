"""What a table says on its own: its contents, its full Pareto front and how early epochs rank
architectures.

`summary` is what `cvt-nas bench show DIR` prints: how much of the asked-for table is trained,
the accuracy and run-time ranges, and which runs were timed on a shared CPU.

`table_front` is the brute-force reference a simulated search is normalized against: the
hypervolume of every complete run's final point. `rank_agreement` answers "does a 1- or 2-epoch
ranking agree with the final one?" with Kendall's tau-b per seed. `seed_agreement` is the noise
floor those answers are read against: how far runs of one architecture with different seeds
differ, and how well one seed's ranking agrees with another's.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cvt_nas.bench.table import Bench
from cvt_nas.common.proc import cpu_share
from cvt_nas.results import DEFAULT_OBJECTIVES, default_reference, hypervolume, pareto_front


@dataclass(frozen=True)
class Front:
    """A table's full Pareto front under some objectives, and its hypervolume at ``reference``."""

    points: pd.DataFrame  # the non-dominated final rows (arch_id, seed, objectives, ...)
    reference: dict[str, float]
    hypervolume: float
    runs: int  # complete runs it was chosen from


def table_front(bench: Bench, objectives: Mapping[str, str], margin: float = 0.1) -> Front:
    """The front of every complete run's final epoch, by brute force over the whole table.

    The reference point lies ``margin`` of each objective's range past its worst value in the
    table (`cvt_nas.results.default_reference`), so a search's hypervolume divided by
    ``hypervolume`` is a fraction in [0, 1] (1: it found the table's whole front).

    Raises:
        ValueError: the table has no complete run yet.
    """
    final = bench.final()
    if final.empty:
        raise ValueError(f"{bench.path}: no complete run yet; nothing to compare against")
    ref = default_reference(final, objectives, margin)
    return Front(pareto_front(final, objectives), ref, hypervolume(final, objectives, ref),
                 len(final))


def kendall_tau(x: np.ndarray, y: np.ndarray) -> tuple[float, int, int]:
    """Kendall's tau-b of two rankings, with the concordant and discordant pair counts.

    Exact O(n^2) pair count (tables hold hundreds of architectures); ties in either ranking
    count for neither side and shrink the denominator as in tau-b. NaN for fewer than 2 points
    or a constant ranking.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant, discordant = int((dx * dy > 0).sum()), int((dx * dy < 0).sum())
    n0 = len(i)
    denom = np.sqrt(float(n0 - (dx == 0).sum()) * float(n0 - (dy == 0).sum()))
    tau = (concordant - discordant) / denom if denom > 0 else float("nan")
    return float(tau), concordant, discordant


def rank_agreement(bench: Bench, metric: str = "val_top1") -> pd.DataFrame:
    """How well each earlier epoch ranks architectures as the final epoch does, per seed.

    Returns:
        One row per (seed, epoch < final): ``seed``, ``epoch``, ``final_epoch``, ``archs``
        (complete runs of that seed), ``kendall_tau`` (tau-b of ``metric`` at ``epoch`` vs at
        the final epoch), ``concordant`` (the share of untied pairs ordered alike) and
        ``same_best`` (the epoch's best architecture is the final best).
    """
    rows = []
    last = bench.final()
    for seed, final in last.groupby("seed"):
        final = final.set_index("arch_id")[metric]
        final_epoch = int(last.loc[last["seed"] == seed, "epoch"].max())
        for epoch in range(1, final_epoch):
            early = bench.final(epoch)
            early = early[early["seed"] == seed].set_index("arch_id")[metric]
            both = final.index.intersection(early.index)
            if len(both) < 2:
                continue
            tau, c, d = kendall_tau(early[both].to_numpy(), final[both].to_numpy())
            rows.append({"seed": int(seed), "epoch": epoch, "final_epoch": final_epoch,
                         "archs": len(both), "kendall_tau": tau,
                         "concordant": c / (c + d) if c + d else float("nan"),
                         "same_best": bool(early[both].idxmax() == final[both].idxmax())})
    return pd.DataFrame(rows, columns=["seed", "epoch", "final_epoch", "archs", "kendall_tau",
                                       "concordant", "same_best"])


def seed_agreement(bench: Bench, metric: str = "val_top1") -> pd.DataFrame:
    """The seed noise of ``metric``, per epoch, over the architectures run with 2+ seeds.

    Only complete runs count, and only architectures with at least two of them; a pair of seeds
    is compared over the architectures both ran.

    Returns:
        One row per epoch: ``epoch``, ``archs`` (architectures with 2+ seeds), ``runs``,
        ``seed_std`` (the mean over those architectures of the sample standard deviation of
        ``metric`` across their seeds), ``seed_range`` (the largest max-min spread of one
        architecture), ``kendall_tau`` (tau-b between two seeds' rankings, averaged over every
        pair of seeds with 2+ shared architectures; NaN when no pair has) and ``seed_pairs``
        (how many pairs that average holds). Empty when no architecture has 2 complete seeds.
    """
    columns = ["epoch", "archs", "runs", "seed_std", "seed_range", "kendall_tau", "seed_pairs"]
    complete = bench.final()
    if complete.empty:
        return pd.DataFrame(columns=columns)
    seeds_of = complete.groupby("arch_id")["seed"].nunique()
    multi = set(seeds_of[seeds_of >= 2].index)
    if not multi:
        return pd.DataFrame(columns=columns)
    rows = []
    for epoch in range(1, int(complete["epoch"].max()) + 1):
        at = bench.final(epoch)
        at = at[at["arch_id"].isin(multi)]
        grid = at.pivot_table(index="arch_id", columns="seed", values=metric, aggfunc="first")
        grid = grid[grid.notna().sum(axis=1) >= 2]
        if grid.empty:
            continue
        taus = []
        for a, b in itertools.combinations(grid.columns, 2):
            both = grid[[a, b]].dropna()
            if len(both) >= 2:
                tau = kendall_tau(both[a].to_numpy(), both[b].to_numpy())[0]
                if not np.isnan(tau):
                    taus.append(tau)
        rows.append({"epoch": epoch, "archs": len(grid), "runs": int(grid.notna().sum().sum()),
                     "seed_std": float(grid.std(axis=1, ddof=1).mean()),
                     "seed_range": float((grid.max(axis=1) - grid.min(axis=1)).max()),
                     "kendall_tau": float(np.mean(taus)) if taus else float("nan"),
                     "seed_pairs": len(taus)})
    return pd.DataFrame(rows, columns=columns)


SHARED_CPU = 0.9  # a CPU run that used less than this share of its threads' time was not alone


def cpu_shares(bench: Bench) -> pd.DataFrame:
    """Per complete CPU run with ``cpu_time_s`` recorded for every epoch: ``arch_id``,
    ``seed``, ``cpu_share`` (`cvt_nas.common.proc.cpu_share`: its CPU seconds over its wall
    seconds x threads; near 1 alone on its cores, far below when shared)."""
    t = bench.table[bench.table["device"].str.startswith("cpu") & (bench.table["epoch"] > 0)
                    & (bench.table["status"] == "complete")]
    columns = ["arch_id", "seed", "cpu_share"]
    t = t.assign(wall=t["train_time_s"] + t["eval_time_s"])
    g = t.groupby(["arch_id", "seed"], sort=True).agg(
        cpu=("cpu_time_s", "sum"), counted=("cpu_time_s", "count"), epochs=("epoch", "size"),
        wall=("wall", "sum"), threads=("threads", "first"))
    g = g[g["counted"] == g["epochs"]]
    if g.empty:
        return pd.DataFrame(columns=columns)
    g = g.assign(cpu_share=[cpu_share(c, w, n) for c, w, n in zip(
        g["cpu"], g["wall"], g["threads"].astype("float64"), strict=True)])
    return g.reset_index()[columns]


def summary(bench: Bench, objectives: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a table holds, as plain numbers (`cvt-nas bench show DIR`, ``--json``).

    Keys: ``path``, ``space``, ``epochs``, ``dataset``, ``devices``; ``archs_asked`` (distinct
    architectures the largest build asked for, from the manifest), ``archs`` (with a complete
    run), ``runs`` (complete), ``failed`` (failed attempts of pairs with no complete run, as
    the manifest counts them), ``seeds`` ({seeds: architectures with that many
    complete seeds}); ``val_top1``, ``test_top1`` (min, max of complete runs at their last
    epoch), ``run_s`` (min, median, max of their train + eval seconds); ``cpu_runs`` (runs
    with their CPU share recorded), ``shared_cpu`` (those below `SHARED_CPU`: arch_id, seed,
    share); ``front`` (runs on the table's Pareto front under ``objectives``, default
    `cvt_nas.results.DEFAULT_OBJECTIVES`: val_top1 max, macs min).
    """
    m, final = bench.manifest, bench.final()
    failed = bench.table[bench.table["status"] != "complete"].drop_duplicates(
        ["arch_id", "seed", "trial"])
    asked = m.get("archs_asked")  # tables exported before it: the sample plus named rows
    if asked is None:
        asked = int(m.get("archs_sampled") or 0) + int((bench.archs["source"] == "named").sum())
    seeds = final.groupby("arch_id")["seed"].nunique().value_counts().sort_index()
    shares = cpu_shares(bench)
    shared = shares[shares["cpu_share"] < SHARED_CPU]

    def span(col: str) -> list[float] | None:
        v = final[col].dropna()
        return [float(v.min()), float(v.max())] if len(v) else None

    return {
        "path": str(bench.path), "space": m.get("space"), "epochs": bench.epochs,
        "dataset": m.get("dataset"), "devices": list(m.get("devices") or []),
        "archs_asked": int(asked),
        "archs": int(final["arch_id"].nunique()), "runs": len(final), "failed": len(failed),
        "seeds": {int(k): int(v) for k, v in seeds.items()},
        "val_top1": span("val_top1"), "test_top1": span("test_top1"),
        "run_s": ([float(final["time_s"].min()), float(final["time_s"].median()),
                   float(final["time_s"].max())] if len(final) else None),
        "cpu_runs": len(shares),
        "shared_cpu": [{"arch_id": r.arch_id, "seed": int(r.seed), "share": float(r.cpu_share)}
                       for r in shared.itertuples()],
        "front": (len(table_front(bench, objectives or DEFAULT_OBJECTIVES).points)
                  if len(final) else 0),
    }


__all__ = ["SHARED_CPU", "Front", "cpu_shares", "kendall_tau",
           "rank_agreement", "seed_agreement", "summary", "table_front"]
