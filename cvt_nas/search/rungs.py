"""Pareto successive halving: early stopping for multi-objective searches.

Optuna's pruners rank one intermediate value, so they cannot serve a multi-objective study. In a
CvT search only the accuracy is learned during training; MACs, params and latency are known
before the first step. So at each rung (epochs 1, 3, 9, ... with ``eta = 3``) a trial is compared
with every trial that reached the same rung, on the vector (accuracy at that epoch, its known
costs): it goes on if its non-dominated rank is among the best ``max(1, n // eta)`` of the ``n``
trials there, as in asynchronous successive halving.

Trade-off against ASHA on accuracy alone (the Ray backend's option): a small model that learns
slowly is not stopped just because bigger ones are ahead, since its lower cost keeps it on the
front; in exchange fewer trials are stopped (a front holds many points, and ties promote), and
like any early stopping it trusts early accuracy to rank models as the final one would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cvt_nas.results import nondominated_ranks


def rung_epochs(max_epochs: int, min_epochs: int = 1, eta: int = 3) -> list[int]:
    """Epochs at which trials are compared: ``min_epochs * eta**k`` below ``max_epochs``."""
    out, epoch = [], max(1, min_epochs)
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= eta
    return out


def to_point(val_top1: float, costs: Mapping[str, float], objectives: Mapping[str, str]
             ) -> tuple[float, ...]:
    """A minimization vector: accuracy negated, costs as they are."""
    return tuple(-val_top1 if name == "val_top1" else float(costs[name]) for name in objectives)


def promotable(me: Sequence[float], peers: Sequence[Sequence[float]], eta: int = 3) -> bool:
    """Does ``me`` rank among the best ``max(1, n // eta)`` of itself and its peers?

    Ranks are Pareto ranks (1 = non-dominated); equal ranks promote together.
    """
    points = np.array([*peers, me], dtype=float).reshape(len(peers) + 1, len(me))
    ranks = nondominated_ranks(points)
    keep = max(1, len(points) // eta)
    return bool(ranks[-1] <= np.sort(ranks)[keep - 1])
