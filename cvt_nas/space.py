"""Search spaces declared in YAML: distributions over `CvTConfig` and `TrainConfig` fields.

A space file (``search_spaces/*.yaml``) has these top-level keys::

    name: cvt_micro              # default study name (default: the file's stem)
    description: free text
    base: cvt_micro              # a preset name, or a mapping of CvTConfig fields
                                 # (optionally with ``preset: NAME`` plus overrides)
    model:                       # CvTConfig fields, plus the derived field ``head_dim``
      depth: [1, {choice: [1, 2]}, {int: [1, 4]}]   # a list: one entry per stage
      embed_dim: {choice: [32, 48, 64], per: stage}  # one draw per stage (free per stage)
      mlp_ratio: {choice: [2, 4], per: block}        # one draw per block of every stage
      head_dim: 16                                   # num_heads = embed_dim // head_dim
      act: {choice: [gelu, quick_gelu]}              # tied (the default): one draw
    train:                       # TrainConfig fields; ``recipe`` picks the base recipe
      recipe: reduced
      epochs: 1
      lr: {float: [5.0e-4, 5.0e-3], log: true}
    constraints:
      max_params: 1.5M           # numbers, or strings with k / M / G suffixes
      max_macs: 40M              # MACs at the search image size (train.img_size)
      nondecreasing: [embed_dim] # validity rules, see `Budget`
    search:                      # defaults for `cvt-nas search` flags
      trials: 10
      objectives: [val_top1:max, macs:min]

A value that is not a mapping is fixed. A distribution is a mapping with exactly one of
``choice: [...]``, ``int: [low, high]`` (with ``step``, ``log``) or ``float: [low, high]``
(with ``step`` or ``log``), plus ``per: model | stage | block`` (default ``model``: one value
tied across stages). ``per: block`` is allowed for ``mlp_ratio`` and ``kv_stride`` only.

Sampling is backend-neutral: `SearchSpace.sample` takes any object with Optuna's
``suggest_categorical`` / ``suggest_int`` / ``suggest_float`` (an Optuna trial fits directly) and
returns a `Sample` with the `CvTConfig`, the `TrainConfig` and the flat parameter dict. Parameter
names follow the results table: ``depth_s2`` (stage 2), ``kv_stride_s3_b10`` (stage 3, block 10),
``embed_dim`` (tied), ``train.lr``.

This module imports no torch: spaces are loaded, checked, sampled and costed without a model.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import yaml

from cvt_nas.config import BLOCK_FIELDS, STAGE_FIELDS, CvTConfig
from cvt_nas.cost import Cost, analytic_cost
from cvt_nas.presets import PRESETS
from cvt_nas.train_config import RECIPES, TrainConfig, field_names, get_recipe

TOP_KEYS = ("name", "description", "base", "model", "train", "constraints", "search")
DIST_KINDS = ("choice", "int", "float")
DIST_KEYS = (*DIST_KINDS, "per", "step", "log")
PER = ("model", "stage", "block")
BUDGET_KEYS = ("max_params", "max_macs", "min_params", "min_macs", "nondecreasing",
               "min_head_dim", "max_head_dim", "min_grid")
SEARCH_KEYS = ("trials", "objectives", "sampler", "pruner", "seed", "population_size")
MODEL_FIELDS = tuple(f.name for f in fields(CvTConfig) if f.name not in ("extra", "img_size"))
DERIVED_FIELDS = ("head_dim",)
# (channels, classes) of the built-in datasets, so costs at load time match the trained model.
DATASET_SHAPES = {"fashion-mnist": (1, 10), "mnist": (1, 10), "cifar10": (3, 10),
                  "cifar100": (3, 100)}
_INT_MODEL = {"embed_kernel", "embed_stride", "embed_padding", "embed_dim", "depth", "num_heads",
              "qkv_kernel", "q_stride", "kv_stride", "in_chans", "num_classes", "head_dim"}
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
INVALID = 1.0  # the constraint violation reported for an invalid architecture


class SpaceError(ValueError):
    """A search-space file is wrong; the message names the file, the key and the fix."""


class Suggest(Protocol):
    """What a sampler must offer: Optuna's ``Trial`` suggest methods."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...


@dataclass(frozen=True)
class Dist:
    """One distribution: ``choice`` (categorical), ``int`` or ``float``."""

    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    @property
    def encoded(self) -> bool:
        """List-valued choices travel through samplers as JSON strings."""
        return self.kind == "choice" and any(isinstance(c, list) for c in self.choices)

    def suggest(self, s: Suggest, name: str) -> Any:
        """Draw a raw value through ``s`` under ``name`` (what a sampler stores; see `decode`)."""
        if self.kind == "choice":
            return s.suggest_categorical(name, self.sampler_choices())
        if self.kind == "int":
            return int(s.suggest_int(name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log))
        return float(s.suggest_float(name, self.low, self.high, step=self.step, log=self.log))

    def sampler_choices(self) -> list[Any]:
        """The choices as a sampler sees them (lists as JSON strings)."""
        return [json.dumps(c) if isinstance(c, list) else c for c in self.choices]

    def decode(self, raw: Any) -> Any:
        """The config value of a raw sampler value."""
        return json.loads(raw) if self.encoded and isinstance(raw, str) else raw

    def values(self) -> list[Any] | None:
        """Every raw value, for grid search; None for a continuous range."""
        if self.kind == "choice":
            return self.sampler_choices()
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        return [self.low + i * self.step for i in range(n + 1)]

    def corners(self) -> list[Any]:
        """A few representative values (ends and middle) for the greedy extremes search."""
        vals = self.values()
        if vals is not None and len(vals) <= 16:
            return vals
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.kind == "int":
            step = int(self.step or 1)
            mid = int(self.low) + (int(mid) - int(self.low)) // step * step
            return [int(self.low), mid, int(self.high)]
        return [self.low, mid, self.high]


@dataclass(frozen=True)
class Entry:
    """One stage's value (or the tied value): fixed, or a distribution drawn once or per block."""

    fixed: Any = None
    dist: Dist | None = None
    per_block: bool = False


@dataclass(frozen=True)
class FieldSpec:
    """How one config field is set: ``tied`` (one entry, one draw) or one entry per stage."""

    name: str
    tied: bool
    entries: tuple[Entry, ...]
    per_stage: bool  # the field is a per-stage field of CvTConfig (or head_dim)
    section: str = "model"  # "model" (CvTConfig) or "train" (TrainConfig)

    @property
    def prefix(self) -> str:
        """Parameter-name prefix: ``train.`` for training fields."""
        return "train." if self.section == "train" else ""

    @property
    def sampled(self) -> bool:
        return any(e.dist is not None for e in self.entries)


@dataclass(frozen=True)
class Violation:
    """One broken constraint: its key, a readable message, and how far off (0 < amount)."""

    key: str
    message: str
    amount: float


@dataclass(frozen=True)
class Budget:
    """Constraints checked before training: cost bounds at the search image size, and rules.

    ``nondecreasing`` lists per-stage fields that may not shrink from stage to stage;
    ``min_head_dim`` / ``max_head_dim`` bound ``embed_dim // num_heads``; ``min_grid`` is the
    smallest token-grid side allowed after the last stage's embedding.
    """

    max_params: int | None = None
    max_macs: int | None = None
    min_params: int | None = None
    min_macs: int | None = None
    nondecreasing: tuple[str, ...] = ()
    min_head_dim: int | None = None
    max_head_dim: int | None = None
    min_grid: int | None = None


@dataclass(frozen=True)
class Sample:
    """One draw: the flat parameters and the configs they give (or why they are invalid)."""

    params: dict[str, Any]
    model: CvTConfig | None
    train: TrainConfig | None
    error: str | None = None

    @property
    def arch_id(self) -> str | None:
        return self.model.arch_id() if self.model is not None else None


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

    def violations(self, sample_or_cfg: Sample | CvTConfig) -> list[Violation]:
        """Every broken constraint of a sample or config (empty when it may be trained)."""
        if isinstance(sample_or_cfg, Sample):
            if sample_or_cfg.model is None:
                return [Violation("valid", sample_or_cfg.error or "invalid", INVALID)]
            cfg = sample_or_cfg.model
        else:
            cfg = sample_or_cfg
        return _check_budget(self.budget, cfg, self.img_size)

    def constraints(self, sample_or_cfg: Sample | CvTConfig) -> list[str]:
        """Messages of every broken constraint (empty when it may be trained)."""
        return [v.message for v in self.violations(sample_or_cfg)]

    # -- enumeration -------------------------------------------------------------------------

    def grid(self) -> dict[str, list[Any]]:
        """The full grid ``{param: values}`` for grid search.

        Raises:
            SpaceError: a continuous range, or per-block parameters whose number depends on a
                sampled depth.
        """
        depth_spec = next((s for s in self.model if s.name == "depth"), None)
        dynamic = depth_spec is not None and depth_spec.sampled
        out: dict[str, list[Any]] = {}
        for spec in (*self.model, *self.train):
            for s, entry in enumerate(spec.entries):
                if entry.dist is None:
                    continue
                vals = entry.dist.values()
                if vals is None:
                    raise SpaceError(f"{self.source}: {_key(spec, s)}: grid search needs a finite "
                                     "set of values; give the float range a step or use choice")
                if entry.per_block and dynamic:
                    raise SpaceError(f"{self.source}: {_key(spec, s)}: grid search needs a fixed "
                                     "set of parameters, but per-block draws depend on the sampled "
                                     "depth; fix depth or use another sampler")
                for name in _names(spec, s, self._static_depth(), self.base.num_stages):
                    out[name] = vals
        return out

    def _static_depth(self) -> tuple[int, ...]:
        spec = next((s for s in self.model if s.name == "depth"), None)
        if spec is None:
            return self.base.depth
        n = self.base.num_stages
        return tuple(spec.entries[0 if spec.tied else i].fixed for i in range(n))

    def size(self) -> int | None:
        """Number of distinct parameter combinations (None if infinite or depth-dependent)."""
        try:
            return math.prod(len(v) for v in self.grid().values())
        except SpaceError:
            return None


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


def _check_budget(b: Budget, cfg: CvTConfig, img_size: int) -> list[Violation]:
    out: list[Violation] = []
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


# -- loading ---------------------------------------------------------------------------------


def load_space(path: str | Path, check: bool = True,
               overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """Load and validate a space file (``yaml.safe_load``).

    Args:
        path: the YAML file.
        check: also prove the space satisfiable (a feasible config exists; see `analyze`).
        overrides: dotted keys replacing parts of the file before validation, e.g.
            ``{"train.epochs": 3, "constraints.max_macs": "30M", "search.trials": 20}``.

    Raises:
        SpaceError: unknown keys, bad ranges, invalid fixed values or an unsatisfiable space,
            with the file, the key and the fix in the message.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space {str(path)!r} does not exist; see search_spaces/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        data = apply_overrides(data, overrides, str(path))
    return parse_space(data, source=str(path), default_name=path.stem, check=check)


def apply_overrides(data: Any, overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A copy of a space dict with dotted keys (``train.epochs``) replaced."""
    out = json.loads(json.dumps(data if isinstance(data, dict) else {}))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] not in TOP_KEYS:
            raise SpaceError(f"{source}: --set {dotted}: the key must start with one of "
                             f"{list(TOP_KEYS)}, e.g. train.epochs=3")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def parse_space(data: Any, source: str = "space", default_name: str = "space",
                check: bool = True) -> SearchSpace:
    """Validate a space given as a plain dict (see the module docstring for the format).

    Raises:
        SpaceError: as `load_space`.
    """
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with keys {list(TOP_KEYS)}, "
                         f"got {type(data).__name__}")
    _unknown(data, TOP_KEYS, source, "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ :"):
        raise SpaceError(f"{source}: name: {name!r} must be a non-empty string without "
                         "spaces, slashes or colons (it names the study and its directory)")
    base = _parse_base(data.get("base", "cvt_13"), source)
    train_data = _section(data, "train", source)
    recipe = train_data.pop("recipe", "reduced")
    if recipe not in RECIPES:
        raise SpaceError(f"{source}: train.recipe: unknown recipe {recipe!r}; choose one of "
                         f"{list(RECIPES)}")
    train = tuple(_parse_train_field(k, v, recipe, source) for k, v in train_data.items())
    fixed_train = {s.name: s.entries[0].fixed for s in train if not s.sampled}
    for key in ("img_size", "dataset", "channels"):
        if any(s.name == key and s.sampled for s in train):
            raise SpaceError(f"{source}: train.{key}: must be fixed (costs and the budget are "
                             "computed at one image size for one dataset)")
    default_train = get_recipe(recipe, **fixed_train)
    img_size = default_train.img_size or base.img_size
    shape = DATASET_SHAPES.get(default_train.dataset)
    over: dict[str, Any] = {"img_size": img_size}
    if shape is not None:
        chans = 3 if default_train.channels == "repeat" else shape[0]
        over.update(in_chans=chans, num_classes=shape[1])
    try:
        base = base.replace(**over)
    except ValueError as exc:
        raise SpaceError(f"{source}: base: invalid at the search image size {img_size}: "
                         f"{exc}") from None
    model_data = _section(data, "model", source)
    _unknown(model_data, (*MODEL_FIELDS, *DERIVED_FIELDS), source, "model.",
             hint="img_size comes from train.img_size" if "img_size" in model_data else "")
    if "head_dim" in model_data and "num_heads" in model_data:
        raise SpaceError(f"{source}: model.head_dim: give either head_dim (num_heads = "
                         "embed_dim // head_dim) or num_heads, not both")
    specs = {k: _parse_model_field(k, v, base.num_stages, source) for k, v in model_data.items()}
    model = tuple(specs[k] for k in order_fields(list(specs)))
    budget = _parse_budget(_section(data, "constraints", source), source)
    search = _parse_search(_section(data, "search", source), source)
    description = data.get("description") or ""
    space = SearchSpace(name=name, source=source, base=base, model=model, recipe=recipe,
                        train=train, budget=budget, search=search, description=str(description),
                        raw=dict(data))
    if check:
        require_satisfiable(space)
    return space


def _unknown(data: Mapping[str, Any], allowed: tuple[str, ...], source: str, prefix: str,
             hint: str = "") -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        extra = f" ({hint})" if hint else ""
        raise SpaceError(f"{source}: {prefix}{unknown[0]}: unknown key{extra}; allowed: "
                         f"{sorted(allowed)}")


def _section(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{source}: {key}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _parse_base(value: Any, source: str) -> CvTConfig:
    if isinstance(value, str):
        if value not in PRESETS:
            raise SpaceError(f"{source}: base: unknown preset {value!r}; choose one of "
                             f"{list(PRESETS)} or give a mapping of CvTConfig fields")
        return PRESETS[value]
    if not isinstance(value, dict):
        raise SpaceError(f"{source}: base: expected a preset name or a mapping of CvTConfig "
                         f"fields, got {value!r}")
    data = dict(value)
    preset = data.pop("preset", "cvt_13")
    if preset not in PRESETS:
        raise SpaceError(f"{source}: base.preset: unknown preset {preset!r}; choose one of "
                         f"{list(PRESETS)}")
    try:
        return CvTConfig.from_dict({**PRESETS[preset].to_dict(), **data}, source=f"{source}: base")
    except ValueError as exc:
        raise SpaceError(str(exc)) from None


def parse_number(value: Any, key: str, source: str, integer: bool = False) -> float:
    """A number from YAML: ``2e6``, ``"2e6"`` (YAML 1.1 reads it as a string), ``"1.5M"``."""
    if isinstance(value, str):
        text = value.strip()
        scale = _SUFFIX.get(text[-1:], 1.0)
        try:
            num = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            num = math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        num = float(value)
    else:
        num = math.nan
    if not math.isfinite(num) or (integer and not num.is_integer()):
        kind = "an integer" if integer else "a number"
        raise SpaceError(f"{source}: {key}: expected {kind} (e.g. 2e6 or '2M'), got {value!r}")
    return num


def _parse_dist(raw: dict[str, Any], key: str, source: str, kind_of_field: str
                ) -> tuple[Dist, str | None]:
    """(dist, per) from a distribution mapping; ``kind_of_field`` is int/float/bool/str/any."""
    _unknown(raw, DIST_KEYS, f"{source}", f"{key}.")
    kinds = [k for k in DIST_KINDS if k in raw]
    if len(kinds) != 1:
        raise SpaceError(f"{source}: {key}: a distribution needs exactly one of "
                         f"{list(DIST_KINDS)}, got {sorted(raw)}")
    kind, per = kinds[0], raw.get("per")
    if per is not None and per not in PER:
        raise SpaceError(f"{source}: {key}.per: {per!r} is not one of {list(PER)}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{source}: {key}.log: expected true or false, got {log!r}")
    if kind == "choice":
        choices = raw["choice"]
        if "step" in raw or "log" in raw:
            raise SpaceError(f"{source}: {key}: step and log apply to int/float ranges, not "
                             "to choice")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{source}: {key}.choice: expected a non-empty list, got "
                             f"{choices!r}")
        seen = [json.dumps(c, sort_keys=True) for c in choices]
        if len(set(seen)) != len(seen):
            raise SpaceError(f"{source}: {key}.choice: duplicate values in {choices!r}")
        for c in choices:
            for v in (c if isinstance(c, list) else [c]):
                _check_type(v, kind_of_field, f"{key}.choice", source)
        return Dist("choice", tuple(choices)), per
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpaceError(f"{source}: {key}.{kind}: expected [low, high], got {bounds!r}")
    if kind == "int":
        if kind_of_field not in ("int", "float", "any"):
            raise SpaceError(f"{source}: {key}: an int range does not fit a {kind_of_field} "
                             "field; use choice")
        low, high = (int(parse_number(b, f"{key}.int", source, integer=True)) for b in bounds)
        step = int(parse_number(raw.get("step", 1), f"{key}.step", source, integer=True))
        if step < 1:
            raise SpaceError(f"{source}: {key}.step: must be >= 1, got {step}")
        if (high - low) % step:
            raise SpaceError(f"{source}: {key}: high - low ({high - low}) must be a multiple "
                             f"of step {step}")
        if log and (low < 1 or step != 1):
            raise SpaceError(f"{source}: {key}: log ranges need low >= 1 and step 1")
    else:
        if kind_of_field not in ("float", "any"):
            raise SpaceError(f"{source}: {key}: a float range does not fit a {kind_of_field} "
                             "field; use int or choice")
        low, high = (parse_number(b, f"{key}.float", source) for b in bounds)
        step = raw.get("step")
        if step is not None:
            step = parse_number(step, f"{key}.step", source)
            if step <= 0 or log:
                raise SpaceError(f"{source}: {key}.step: must be > 0 and cannot be combined "
                                 "with log")
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9:
                raise SpaceError(f"{source}: {key}: high - low must be a multiple of step {step}")
        if log and low <= 0:
            raise SpaceError(f"{source}: {key}: log ranges need low > 0, got {low}")
    if low > high or (kind == "float" and low == high):
        raise SpaceError(f"{source}: {key}.{kind}: low {low} must be below high {high}")
    return Dist(kind, low=low, high=high, step=step, log=log), per


_STR_CHOICES = {"embed_type": ("conv", "patch"), "proj_method": ("dw_bn", "avg", "linear"),
                "act": ("quick_gelu", "gelu"), "attn_scale": ("dim", "head_dim")}


def _field_kind(name: str) -> str:
    if name in _INT_MODEL:
        return "int"
    if name in ("pos_embed", "cls_token", "qkv_bias"):
        return "bool"
    if name in ("mlp_ratio", "drop_path", "drop_rate"):
        return "float"
    return "str"


def _check_type(v: Any, kind: str, key: str, source: str, name: str = "") -> None:
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "float": isinstance(v, int | float) and not isinstance(v, bool),
          "bool": isinstance(v, bool), "str": isinstance(v, str), "any": True}[kind]
    field_name = key.split(".")[1].split("[")[0] if "." in key else ""
    allowed = _STR_CHOICES.get(field_name)
    if ok and allowed is not None and v not in allowed:
        raise SpaceError(f"{source}: {key}: {v!r} is not one of {list(allowed)}")
    if not ok:
        raise SpaceError(f"{source}: {key}: expected {kind} values, got {v!r}")


def _parse_model_field(name: str, value: Any, n_stages: int, source: str) -> FieldSpec:
    key = f"model.{name}"
    kind = _field_kind(name)
    per_stage = name in STAGE_FIELDS or name in DERIVED_FIELDS

    def entry(v: Any, where: str, in_list: bool) -> Entry:
        if isinstance(v, dict):
            dist, per = _parse_dist(v, where, source, kind)
            if per == "block" and name not in BLOCK_FIELDS:
                raise SpaceError(f"{source}: {where}.per: block draws are only possible for "
                                 f"{list(BLOCK_FIELDS)}")
            if in_list and per == "model":
                raise SpaceError(f"{source}: {where}.per: 'model' (tied) has no meaning inside a "
                                 "per-stage list; drop it or give the field one distribution")
            if not per_stage and per not in (None, "model"):
                raise SpaceError(f"{source}: {where}.per: {name} is a single value, not per stage")
            if per_stage and not in_list and dist.kind == "choice" and any(
                    isinstance(c, list) and len(c) != n_stages for c in dist.choices):
                raise SpaceError(f"{source}: {where}.choice: list choices are whole per-stage "
                                 f"lists and need {n_stages} entries")
            return Entry(dist=dist, per_block=per == "block")
        if isinstance(v, list):
            if not per_stage or (in_list and name not in BLOCK_FIELDS):
                raise SpaceError(f"{source}: {where}: a list is not allowed here"
                                 + ("" if per_stage else f"; {name} is a single value"))
            for x in v:
                _check_type(x, kind, where, source)
            return Entry(fixed=tuple(v))
        _check_type(v, kind, where, source)
        return Entry(fixed=v)

    if isinstance(value, list) and per_stage:
        if len(value) != n_stages:
            raise SpaceError(f"{source}: {key}: has {len(value)} entries but the base has "
                             f"{n_stages} stages; give one entry per stage or a single value")
        entries = tuple(entry(v, f"{key}[{i}]", True) for i, v in enumerate(value))
        return FieldSpec(name, tied=False, entries=entries, per_stage=True)
    e = entry(value, key, False)
    if e.dist is not None and per_stage and isinstance(value, dict) and value.get("per") == "stage":
        return FieldSpec(name, tied=False, entries=(e,) * n_stages, per_stage=True)
    return FieldSpec(name, tied=True, entries=(e,), per_stage=per_stage)


def _parse_train_field(name: str, value: Any, recipe: str, source: str) -> FieldSpec:
    key = f"train.{name}"
    if name not in field_names():
        raise SpaceError(f"{source}: {key}: unknown TrainConfig field; allowed: "
                         f"{sorted(field_names())} and recipe")
    if isinstance(value, dict):
        dist, per = _parse_dist(value, key, source, "any")
        if per not in (None, "model"):
            raise SpaceError(f"{source}: {key}.per: training fields are single values")
        probes = list(dist.choices) if dist.kind == "choice" else [dist.low, dist.high]
        if dist.kind == "int":
            probes = [int(p) for p in probes]
        spec = FieldSpec(name, tied=True, entries=(Entry(dist=dist),), per_stage=False,
                         section="train")
    else:
        probes = [value]
        spec = FieldSpec(name, tied=True, entries=(Entry(fixed=value),), per_stage=False,
                         section="train")
    for p in probes:
        try:
            get_recipe(recipe, **{name: p})
        except ValueError as exc:
            raise SpaceError(f"{source}: {key}: {exc}") from None
    return spec


def _parse_budget(data: dict[str, Any], source: str) -> Budget:
    _unknown(data, BUDGET_KEYS, source, "constraints.")
    kw: dict[str, Any] = {}
    for key in ("max_params", "max_macs", "min_params", "min_macs", "min_head_dim",
                "max_head_dim", "min_grid"):
        if data.get(key) is not None:
            num = parse_number(data[key], f"constraints.{key}", source)
            if num <= 0:
                raise SpaceError(f"{source}: constraints.{key}: must be > 0, got {data[key]!r}")
            kw[key] = int(num)
    for what in ("params", "macs"):
        lo, hi = kw.get(f"min_{what}"), kw.get(f"max_{what}")
        if lo is not None and hi is not None and lo > hi:
            raise SpaceError(f"{source}: constraints.min_{what}: {lo} is above max_{what} {hi}")
    nd = data.get("nondecreasing") or []
    if isinstance(nd, str):
        nd = [nd]
    for name in nd:
        if name not in STAGE_FIELDS:
            raise SpaceError(f"{source}: constraints.nondecreasing: {name!r} is not a per-stage "
                             f"field; choose from {list(STAGE_FIELDS)}")
    return Budget(nondecreasing=tuple(nd), **kw)


OBJECTIVE_NAMES = ("val_top1", "macs", "params", "latency")
SAMPLERS = ("nsga2", "tpe", "random", "grid")
PRUNERS = ("none", "median", "sha", "hyperband", "pareto-sha", "asha")


def parse_objectives(items: Any, where: str = "--objectives") -> dict[str, str]:
    """``["val_top1:max", "macs:min"]`` (or one comma-separated string) -> ``{name: dir}``."""
    if isinstance(items, str):
        items = [x for x in items.split(",") if x.strip()]
    if not isinstance(items, list | tuple) or not items:
        raise SpaceError(f"{where}: expected a list like [val_top1:max, macs:min]")
    out: dict[str, str] = {}
    for item in items:
        name, _, direction = str(item).strip().partition(":")
        if name not in OBJECTIVE_NAMES:
            raise SpaceError(f"{where}: unknown objective {name!r}; choose from "
                             f"{list(OBJECTIVE_NAMES)}")
        expected = "max" if name == "val_top1" else "min"
        direction = direction or expected
        if direction != expected:
            raise SpaceError(f"{where}: {name} can only be {name}:{expected}, got {item!r}")
        if name in out:
            raise SpaceError(f"{where}: {name} is listed twice")
        out[name] = direction
    return out


def _parse_search(data: dict[str, Any], source: str) -> dict[str, Any]:
    _unknown(data, SEARCH_KEYS, source, "search.")
    out = dict(data)
    for key, lo in (("trials", 1), ("population_size", 2), ("seed", 0)):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int)
                           or out[key] < lo):
            raise SpaceError(f"{source}: search.{key}: must be an integer >= {lo}, "
                             f"got {out[key]!r}")
    if "objectives" in out:
        out["objectives"] = parse_objectives(out["objectives"], f"{source}: search.objectives")
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if key in out and out[key] not in allowed:
            raise SpaceError(f"{source}: search.{key}: {out[key]!r} is not one of {list(allowed)}")
    return out


# -- analysis: satisfiability and cost extremes ----------------------------------------------


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


def order_fields(names: list[str]) -> list[str]:
    """Sampling order: depth first (block fields need it), then the rest, head_dim last."""
    rank = {n: i for i, n in enumerate(dict.fromkeys(("depth", *STAGE_FIELDS, "head_dim")))}
    return sorted(names, key=lambda n: rank.get(n, -1))


__all__ = [
    "OBJECTIVE_NAMES", "PRUNERS", "SAMPLERS", "Budget", "Dist", "Entry", "FieldSpec",
    "FixedSuggest", "RandomSuggest", "Sample", "SearchSpace", "SpaceError", "SpaceReport",
    "Suggest", "Violation", "analyze", "dist_of", "greedy", "load_space", "parse_number",
    "parse_objectives", "parse_space", "require_satisfiable",
]
