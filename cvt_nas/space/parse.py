"""Loading and validating space files: every error names the file, the key and the fix."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from cvt_nas.common.names import check_name
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.model.config import BLOCK_FIELDS, LIMITS, MAX_MLP_RATIO, STAGE_FIELDS, CvTConfig
from cvt_nas.model.presets import PRESETS
from cvt_nas.results.objectives import parse_objectives
from cvt_nas.space.analysis import require_satisfiable
from cvt_nas.space.sampling import SearchSpace
from cvt_nas.space.types import Budget, Dist, Entry, FieldSpec, SpaceError
from cvt_nas.training.config import DATASETS, RECIPES, field_names, get_recipe
from cvt_nas.training.datasets import adapt_config

TOP_KEYS = ("name", "description", "base", "model", "train", "constraints", "search")
DIST_KINDS = ("choice", "int", "float")
DIST_KEYS = (*DIST_KINDS, "per", "step", "log")
PER = ("model", "stage", "block")
BUDGET_KEYS = ("max_params", "max_macs", "min_params", "min_macs", "nondecreasing",
               "min_head_dim", "max_head_dim", "min_grid")
SEARCH_KEYS = ("trials", "objectives", "sampler", "pruner", "seed", "population_size",
               "deterministic")
MODEL_FIELDS = tuple(f.name for f in fields(CvTConfig) if f.name not in ("extra", "img_size"))
DERIVED_FIELDS = ("head_dim",)
# Bounds of the values a model field may take (CvTConfig's size limits, and head_dim's).
FIELD_LIMITS: dict[str, tuple[float, float]] = {
    **LIMITS, "head_dim": (1, LIMITS["embed_dim"][1]), "mlp_ratio": (0.0, MAX_MLP_RATIO)}
MAX_INT = 2**53  # int range bounds beyond this lose precision in samplers (floats)
_INT_MODEL = {"embed_kernel", "embed_stride", "embed_padding", "embed_dim", "depth", "num_heads",
              "qkv_kernel", "q_stride", "kv_stride", "in_chans", "num_classes", "head_dim"}
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


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
    data = read_yaml(path, "search space file", "see search_spaces/ for examples", SpaceError,
                     mapping=False)
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
    try:  # it names the study and its results directory
        check_name(name, f"{source}: name")
    except ValueError as exc:
        hint = "" if "name" in data else " (taken from the file name; add a name: line)"
        raise SpaceError(f"{exc}{hint}") from None
    base = _parse_base(data.get("base", "cvt_13"), source)
    train_data = _section(data, "train", source)
    recipe = train_data.pop("recipe", "reduced")
    if not isinstance(recipe, str) or recipe not in RECIPES:
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
    try:
        # A built-in dataset's shape is known without its data, so costs budgeted from here on
        # are those of the trained model. An image folder's classes are counted when a trial is
        # gated: the folder need not exist to load, analyse or check the space.
        base = (adapt_config(base, default_train) if default_train.dataset in DATASETS
                else base.replace(img_size=img_size))
    except ValueError as exc:
        raise SpaceError(f"{source}: base: does not fit the training data "
                         f"({default_train.dataset} at img_size {img_size}): {exc}") from None
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
    if not isinstance(preset, str) or preset not in PRESETS:
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
                         f"{list(DIST_KINDS)}, got {sorted(map(str, raw))}")
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
    low: float  # ints for an int range
    high: float
    step: float | None
    if kind == "int":
        if kind_of_field not in ("int", "float", "any"):
            raise SpaceError(f"{source}: {key}: an int range does not fit a {kind_of_field} "
                             "field; use choice")
        low, high = (int(parse_number(b, f"{key}.int", source, integer=True)) for b in bounds)
        if max(abs(low), abs(high)) > MAX_INT:
            raise SpaceError(f"{source}: {key}.int: bounds must be within +-2**53, got "
                             f"{bounds!r}")
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
            ends = list(dist.choices) if dist.kind == "choice" else [dist.low, dist.high]
            _check_limits(name, ends, f"{where}.{dist.kind}", source)
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
            _check_limits(name, v, where, source)
            return Entry(fixed=tuple(v))
        _check_type(v, kind, where, source)
        _check_limits(name, [v], where, source)
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


def _check_limits(name: str, values: list[Any], where: str, source: str) -> None:
    """Refuse values of a model field outside its bounds (`FIELD_LIMITS`), e.g. a depth range
    up to 10**8, at load time rather than in every sample."""
    if name not in FIELD_LIMITS:
        return
    lo, hi = FIELD_LIMITS[name]
    for v in values:
        for x in (v if isinstance(v, list | tuple) else [v]):
            if isinstance(x, int | float) and not isinstance(x, bool) and not lo <= x <= hi:
                raise SpaceError(f"{source}: {where}: {x!r} is out of range for {name} "
                                 f"(allowed: {lo:g} to {hi:g})")


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


SAMPLERS = ("nsga2", "tpe", "random", "grid")
PRUNERS = ("none", "median", "sha", "hyperband", "pareto-sha", "asha")


def _parse_search(data: dict[str, Any], source: str) -> dict[str, Any]:
    _unknown(data, SEARCH_KEYS, source, "search.")
    out = dict(data)
    for key, lo in (("trials", 1), ("population_size", 2), ("seed", 0)):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int)
                           or out[key] < lo):
            raise SpaceError(f"{source}: search.{key}: must be an integer >= {lo}, "
                             f"got {out[key]!r}")
    if "deterministic" in out and not isinstance(out["deterministic"], bool):
        raise SpaceError(f"{source}: search.deterministic: expected true or false, got "
                         f"{out['deterministic']!r}")
    if "objectives" in out:
        out["objectives"] = parse_objectives(out["objectives"], f"{source}: search.objectives")
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if key in out and out[key] not in allowed:
            raise SpaceError(f"{source}: search.{key}: {out[key]!r} is not one of {list(allowed)}")
    return out


def order_fields(names: list[str]) -> list[str]:
    """Sampling order: depth first (block fields need it), then the rest, head_dim last."""
    rank = {n: i for i, n in enumerate(dict.fromkeys(("depth", *STAGE_FIELDS, "head_dim")))}
    return sorted(names, key=lambda n: rank.get(n, -1))
