"""Space analysis: satisfiability, cost extremes (greedy probing) and a summary report."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from cvt_nas.space.sampling import FixedSuggest, RandomSuggest, SearchSpace
from cvt_nas.space.types import Dist, Sample, SpaceError


@dataclass(frozen=True)
class SpaceReport:
    """What random and greedy probing found about a space."""

    n_random: int
    n_invalid: int
    n_infeasible: int
    params_range: tuple[int, int]
    macs_range: tuple[int, int]
    smallest: Sample
    largest: Sample


def dist_of(space: SearchSpace, name: str) -> Dist:
    """The distribution behind a parameter name such as ``kv_stride_s3_b10`` or ``train.lr``."""
    if name.startswith("train."):
        specs, field_name, stage = space.train, name[6:], 0
    else:
        parts = name.split("_")
        stage = 0
        while parts and len(parts) > 1 and parts[-1][:1] in "sb" and parts[-1][1:].isdigit():
            if parts[-1][0] == "s":
                stage = int(parts[-1][1:]) - 1
            parts = parts[:-1]
        specs, field_name = space.model, "_".join(parts)
    for spec in specs:
        if spec.name == field_name:
            entry = spec.entries[0 if spec.tied else stage]
            if entry.dist is not None:
                return entry.dist
    raise KeyError(f"{space.source}: no sampled parameter {name!r}")


def greedy(space: SearchSpace, score: Callable[[Sample], float], seed: int = 0,
           passes: int = 3) -> tuple[Sample, float]:
    """Coordinate descent on ``score`` (lower is better) from a random start.

    Each pass tries every value (or the ends and middle of a range) of every parameter, one at
    a time. For costs that are monotone in each parameter (params and MACs are) this finds the
    exact extremes.
    """
    rng = random.Random(seed)
    best = space.random(rng)
    best_score = score(best)
    for _ in range(passes):
        improved = False
        for name in list(best.params):
            for value in dist_of(space, name).corners():
                if value == best.params.get(name):
                    continue
                cand = space.sample(FixedSuggest({**best.params, name: value}, RandomSuggest(rng)))
                s = score(cand)
                if s < best_score:
                    best, best_score, improved = cand, s, True
        if not improved:
            break
    return best, best_score


def _violation_score(space: SearchSpace) -> Callable[[Sample], float]:
    def score(sample: Sample) -> float:
        return sum(v.amount + (1e3 if v.key == "valid" else 0.0)
                   for v in space.violations(sample))
    return score


def _cost_score(space: SearchSpace, what: str, sign: float) -> Callable[[Sample], float]:
    def score(sample: Sample) -> float:
        if sample.model is None:
            return math.inf
        try:
            return sign * getattr(space.cost(sample.model), what)
        except ValueError:
            return math.inf
    return score


def analyze(space: SearchSpace, n_random: int = 200, seed: int = 0) -> SpaceReport:
    """Probe a space: share of invalid / over-budget random draws and the cost extremes.

    The extremes come from `greedy` on params and MACs (exact for these monotone costs), so
    they hold for the whole space, not just the random draws.
    """
    rng = random.Random(seed)
    invalid = infeasible = 0
    for _ in range(n_random):
        vs = space.violations(space.random(rng))
        invalid += any(v.key == "valid" for v in vs)
        infeasible += bool(vs)
    smallest, p_lo = greedy(space, _cost_score(space, "params", 1.0), seed)
    largest, p_hi = greedy(space, _cost_score(space, "params", -1.0), seed)
    _, m_lo = greedy(space, _cost_score(space, "macs", 1.0), seed)
    _, m_hi = greedy(space, _cost_score(space, "macs", -1.0), seed)
    if not all(math.isfinite(x) for x in (p_lo, p_hi, m_lo, m_hi)):
        raise SpaceError(f"{space.source}: model: no valid architecture found; check the fields")
    return SpaceReport(n_random, invalid, infeasible, (int(p_lo), int(-p_hi)),
                       (int(m_lo), int(-m_hi)), smallest, largest)


def require_satisfiable(space: SearchSpace, n_random: int = 64, seed: int = 0) -> Sample:
    """A feasible sample, or a SpaceError that names the constraint no draw can meet."""
    rng = random.Random(seed)
    first_error = None
    for _ in range(n_random):
        sample = space.random(rng)
        vs = space.violations(sample)
        if not vs:
            return sample
        first_error = first_error or sample.error
    best, _ = greedy(space, _violation_score(space), seed)
    vs = space.violations(best)
    if not vs:
        return best
    if vs[0].key == "valid":
        raise SpaceError(f"{space.source}: model: every architecture tried is invalid, e.g. "
                         f"{first_error or vs[0].message}; fix the model fields")
    v = vs[0]
    section = "constraints." + v.key
    raise SpaceError(f"{space.source}: {section}: unsatisfiable: the closest architecture in the "
                     f"space has {v.message}; relax {section} or shrink the space")
