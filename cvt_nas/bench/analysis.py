"""What a table says on its own: its full Pareto front and how early epochs rank architectures.

`table_front` is the brute-force reference a simulated search is normalized against: the
hypervolume of every complete run's final point. `rank_agreement` answers "does a 1- or 2-epoch
ranking agree with the final one?" with Kendall's tau-b per seed.
"""

from __future__ import annotations

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


__all__ = ["Front", "kendall_tau", "rank_agreement", "table_front"]
