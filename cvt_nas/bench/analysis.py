"""What a table says on its own: its full Pareto front and how early epochs rank architectures.

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

import numpy as np
import pandas as pd

from cvt_nas.bench.table import Bench
from cvt_nas.results import default_reference, hypervolume, pareto_front


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


__all__ = ["Front", "kendall_tau", "rank_agreement", "seed_agreement", "table_front"]
