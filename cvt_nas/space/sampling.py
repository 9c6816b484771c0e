"""`SearchSpace`: drawing samples through any Optuna-like suggest object, costs and budgets."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost
from cvt_nas.space.types import (
    INVALID,
    Budget,
    Dist,
    Entry,
    FieldSpec,
    Sample,
    SpaceError,
    Suggest,
    Violation,
)
from cvt_nas.training.config import get_recipe


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search space. Build with `load_space` or `parse_space`."""

    name: str
    source: str
    base: CvTConfig
    model: tuple[FieldSpec, ...]
    recipe: str
    train: tuple[FieldSpec, ...]
    budget: Budget
    search: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def img_size(self) -> int:
        """The search image size: training size and the size costs are budgeted at."""
        return self.base.img_size

    # -- sampling ----------------------------------------------------------------------------

    def sample(self, suggest: Suggest) -> Sample:
        """Draw every sampled field through ``suggest`` and build the configs."""
        params: dict[str, Any] = {}
        values: dict[str, Any] = {}
        depth = self.base.depth
        for spec in self.model:  # `order_fields` put depth first: block fields need it
            v = _draw(spec, suggest, params, self.base.num_stages, depth)
            values[spec.name] = v
            if spec.name == "depth":
                depth = tuple(v)
        head_dim = values.pop("head_dim", None)
        train_over = {s.name: _draw(s, suggest, params, 1, (1,)) for s in self.train}
        try:
            train = get_recipe(self.recipe, **train_over)
        except ValueError as exc:
            return Sample(params, None, None, f"invalid training config: {exc}")
        try:
            if head_dim is not None:
                dims = values.get("embed_dim", self.base.embed_dim)
                bad = [(d, h) for d, h in zip(dims, head_dim, strict=True) if d % h]
                if bad:
                    raise ValueError(f"embed_dim {bad[0][0]} is not a multiple of head_dim "
                                     f"{bad[0][1]}")
                values["num_heads"] = tuple(d // h for d, h in zip(dims, head_dim, strict=True))
            cfg = self.base.replace(**values) if values else self.base
        except ValueError as exc:
            return Sample(params, None, train, f"invalid architecture: {exc}")
        return Sample(params, cfg, train)

    def build(self, params: Mapping[str, Any]) -> Sample:
        """Rebuild a sample from its parameters (as recorded by a backend)."""
        return self.sample(FixedSuggest(params))

    def random(self, rng: random.Random | int | None = None) -> Sample:
        """A uniform random draw (no sampler needed)."""
        r = rng if isinstance(rng, random.Random) else random.Random(rng)
        return self.sample(RandomSuggest(r))

    # -- costs and constraints ---------------------------------------------------------------

    def cost(self, cfg: CvTConfig) -> Cost:
        """Exact params and MACs of ``cfg`` at the search image size."""
        return analytic_cost(cfg, self.img_size)

    def violations(self, sample_or_cfg: Sample | CvTConfig, *, cost: Cost | None = None
                   ) -> list[Violation]:
        """Every broken constraint of a sample or config (empty when it may be trained).

        Args:
            sample_or_cfg: what to check.
            cost: its cost from `cost` when the caller has it (the budget gate), so it is
                computed once per trial; computed here when None.
        """
        if isinstance(sample_or_cfg, Sample):
            if sample_or_cfg.model is None:
                return [Violation("valid", sample_or_cfg.error or "invalid", INVALID)]
            cfg = sample_or_cfg.model
        else:
            cfg = sample_or_cfg
        return _check_budget(self.budget, cfg, self.img_size, cost)

    def constraints(self, sample_or_cfg: Sample | CvTConfig) -> list[str]:
        """Messages of every broken constraint (empty when it may be trained)."""
        return [v.message for v in self.violations(sample_or_cfg)]

    # -- enumeration -------------------------------------------------------------------------

    def grid(self) -> dict[str, list[Any]]:
        """The full grid ``{param: values}`` for grid search.

        Raises:
            SpaceError: a continuous range, a range of more than `MAX_VALUES` values, or
                per-block parameters whose number depends on a sampled depth.
        """
        out: dict[str, list[Any]] = {}
        for name, dist, key in self._grid_params():
            try:
                vals = dist.values()
            except ValueError as exc:
                raise SpaceError(f"{self.source}: {key}: grid search over {exc}; narrow the "
                                 "range or use another sampler") from None
            if vals is None:
                raise SpaceError(f"{self.source}: {key}: grid search needs a finite set of "
                                 "values; give the float range a step or use choice")
            out[name] = vals
        return out

    def _grid_params(self) -> list[tuple[str, Dist, str]]:
        """(parameter name, distribution, space key) of every sampled parameter, for a grid."""
        depth_spec = next((s for s in self.model if s.name == "depth"), None)
        dynamic = depth_spec is not None and depth_spec.sampled
        out = []
        for spec in (*self.model, *self.train):
            for s, entry in enumerate(spec.entries):
                if entry.dist is None:
                    continue
                if entry.per_block and dynamic:
                    raise SpaceError(f"{self.source}: {_key(spec, s)}: grid search needs a fixed "
                                     "set of parameters, but per-block draws depend on the sampled "
                                     "depth; fix depth or use another sampler")
                for name in _names(spec, s, self._static_depth(), self.base.num_stages):
                    out.append((name, entry.dist, _key(spec, s)))
        return out

    def _static_depth(self) -> tuple[int, ...]:
        spec = next((s for s in self.model if s.name == "depth"), None)
        if spec is None:
            return self.base.depth
        n = self.base.num_stages
        return tuple(spec.entries[0 if spec.tied else i].fixed for i in range(n))

    def size(self) -> int | None:
        """Number of distinct parameter combinations (None if infinite or depth-dependent);
        counted, not listed, so a huge space costs nothing."""
        try:
            counts = [dist.count() for _, dist, _ in self._grid_params()]
        except SpaceError:
            return None
        return None if None in counts else math.prod(c for c in counts if c is not None)


# -- suggest objects -------------------------------------------------------------------------


class RandomSuggest:
    """Uniform draws from a `random.Random` (log-uniform where ``log`` is set)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        if log:
            return min(high, max(low, round(math.exp(self.rng.uniform(math.log(low),
                                                                       math.log(high))))))
        return self.rng.randrange(low, high + 1, step)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if log:
            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        if step:
            return low + self.rng.randint(0, int(round((high - low) / step))) * step
        return self.rng.uniform(low, high)


class FixedSuggest:
    """Replays recorded parameters; names it lacks go to ``fallback`` (an error if None)."""

    def __init__(self, params: Mapping[str, Any], fallback: Suggest | None = None) -> None:
        self.params = dict(params)
        self.fallback = fallback

    def _get(self, name: str, method: str, *args: Any, **kw: Any) -> Any:
        if name in self.params:
            return self.params[name]
        if self.fallback is None:
            raise KeyError(f"parameter {name!r} is missing; recorded: {sorted(self.params)}")
        return getattr(self.fallback, method)(name, *args, **kw)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._get(name, "suggest_categorical", choices)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return self._get(name, "suggest_int", low, high, step=step, log=log)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._get(name, "suggest_float", low, high, step=step, log=log)


# -- drawing ---------------------------------------------------------------------------------


def _names(spec: FieldSpec, stage: int, depth: tuple[int, ...], n_stages: int) -> list[str]:
    entry = spec.entries[stage]
    if not entry.per_block:
        return [spec.prefix + (spec.name if spec.tied else f"{spec.name}_s{stage + 1}")]
    stages = range(n_stages) if spec.tied else [stage]
    return [f"{spec.name}_s{s + 1}_b{b + 1}" for s in stages for b in range(depth[s])]


def _key(spec: FieldSpec, stage: int) -> str:
    return f"{spec.section}.{spec.name}" + ("" if spec.tied else f"[{stage}]")


def _draw(spec: FieldSpec, s: Suggest, params: dict[str, Any], n_stages: int,
          depth: tuple[int, ...]) -> Any:
    prefix = spec.prefix

    def one(entry: Entry, name: str) -> Any:
        if entry.dist is None:
            return entry.fixed
        raw = entry.dist.suggest(s, prefix + name)
        params[prefix + name] = raw
        return entry.dist.decode(raw)

    if not spec.per_stage:
        return one(spec.entries[0], spec.name)
    out = []
    for st in range(n_stages):
        entry = spec.entries[0 if spec.tied else st]
        if entry.per_block:
            out.append(tuple(one(entry, f"{spec.name}_s{st + 1}_b{b + 1}")
                             for b in range(depth[st])))
        elif spec.tied:
            if st == 0:
                tied = one(entry, spec.name)
            # a tied list-valued choice or fixed list is a whole per-stage tuple
            out.append(tied[st] if isinstance(tied, list | tuple) else tied)
        else:
            out.append(one(entry, f"{spec.name}_s{st + 1}"))
    return tuple(out)


def _check_budget(b: Budget, cfg: CvTConfig, img_size: int, cost: Cost | None
                  ) -> list[Violation]:
    out: list[Violation] = []
    if cost is None:
        try:
            cost = analytic_cost(cfg, img_size)
        except ValueError as exc:
            return [Violation("valid", f"invalid architecture: {exc}", INVALID)]
    for key, value, bound, upper in (
        ("max_params", cost.params, b.max_params, True), ("max_macs", cost.macs, b.max_macs, True),
        ("min_params", cost.params, b.min_params, False),
        ("min_macs", cost.macs, b.min_macs, False),
    ):
        if bound is None or (value <= bound if upper else value >= bound):
            continue
        what = key.split("_")[1]
        out.append(Violation(key, f"{what} {_fmt(value)} {'>' if upper else '<'} {key} "
                                  f"{_fmt(bound)}", abs(value - bound) / bound))
    for name in b.nondecreasing:
        vals = getattr(cfg, name)
        flat = [max(v) if isinstance(v, tuple) else v for v in vals]
        if any(x > y for x, y in zip(flat, flat[1:], strict=False)):
            out.append(Violation("nondecreasing", f"{name} {list(flat)} shrinks between stages",
                                 INVALID))
    head_dims = [d // h for d, h in zip(cfg.embed_dim, cfg.num_heads, strict=True)]
    if b.min_head_dim is not None and min(head_dims) < b.min_head_dim:
        out.append(Violation("min_head_dim", f"head_dim {head_dims} < min_head_dim "
                                             f"{b.min_head_dim}", INVALID))
    if b.max_head_dim is not None and max(head_dims) > b.max_head_dim:
        out.append(Violation("max_head_dim", f"head_dim {head_dims} > max_head_dim "
                                             f"{b.max_head_dim}", INVALID))
    if b.min_grid is not None:
        side = min(cfg.grid_sizes(img_size)[-1])
        if side < b.min_grid:
            out.append(Violation("min_grid", f"last-stage token grid {side} < min_grid "
                                             f"{b.min_grid}", INVALID))
    return out


def _fmt(n: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:g}"
