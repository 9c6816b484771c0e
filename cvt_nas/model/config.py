"""`CvTConfig`: the single source of truth about a CvT architecture.

Field meanings follow the official microsoft/CvT yaml (per-stage lists such as
``DIM_EMBED: [64, 192, 384]``) with snake_case names. Every per-stage field is a tuple with one
entry per stage. ``mlp_ratio`` and ``kv_stride`` may also hold, for a stage, a tuple with one
entry per block of that stage (the paper's CvT-13-NAS searches them per layer).

This module imports no torch: configs are validated, hashed and costed without building a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cvt_nas.common.fields import check_fields, from_fields

EMBED_TYPES = ("conv", "patch")
PROJ_METHODS = ("dw_bn", "avg", "linear")
ACTS = ("quick_gelu", "gelu")
ATTN_SCALES = ("dim", "head_dim")

PerStage = tuple[Any, ...]

# Per-stage fields, in a stable order (also the order of flattened result columns).
STAGE_FIELDS: tuple[str, ...] = (
    "embed_type",
    "embed_kernel",
    "embed_stride",
    "embed_padding",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "proj_method",
    "qkv_kernel",
    "q_stride",
    "kv_stride",
    "pos_embed",
    "cls_token",
    "drop_path",
)
# Per-stage fields whose stage entry may be a per-block tuple.
BLOCK_FIELDS: tuple[str, ...] = ("mlp_ratio", "kv_stride")

# Size bounds (inclusive) of integer fields, per stage for per-stage fields. Far past any CvT
# (CvT-W24 at 384 px: widths up to 1024, 20 blocks in a stage, 16 heads), yet small enough that
# validating, costing and sampling a config stay instant: an absurd value (a typo, a huge search
# range) is refused with its bound instead of hanging the cost model.
LIMITS: dict[str, tuple[int, int]] = {
    "img_size": (1, 4096),
    "in_chans": (1, 1024),
    "num_classes": (0, 100_000),  # 0: no classifier (timm's convention)
    "num_stages": (1, 8),
    "embed_kernel": (1, 64),
    "embed_stride": (1, 64),
    "embed_padding": (0, 64),
    "embed_dim": (1, 8192),
    "depth": (1, 64),
    "num_heads": (1, 256),
    "qkv_kernel": (1, 63),
    "q_stride": (1, 64),
    "kv_stride": (1, 64),
}
MAX_MLP_RATIO = 64.0


def conv_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's formula)."""
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch drops a last window that would start in the right padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


@dataclass(frozen=True)
class CvTConfig:
    """A CvT architecture. Defaults are CvT-13 at 224 px with 1000 classes.

    Per-stage tuples must all have the same length (the number of stages). ``drop_path`` is the
    largest rate of a stage; blocks of the stage get ``linspace(0, rate, depth)`` as in the
    official code.
    """

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_type: PerStage = ("conv", "conv", "conv")
    embed_kernel: PerStage = (7, 3, 3)
    embed_stride: PerStage = (4, 2, 2)
    embed_padding: PerStage = (2, 1, 1)
    embed_dim: PerStage = (64, 192, 384)
    depth: PerStage = (1, 2, 10)
    num_heads: PerStage = (1, 3, 6)
    mlp_ratio: PerStage = (4.0, 4.0, 4.0)
    proj_method: PerStage = ("dw_bn", "dw_bn", "dw_bn")
    qkv_kernel: PerStage = (3, 3, 3)
    q_stride: PerStage = (1, 1, 1)
    kv_stride: PerStage = (2, 2, 2)
    pos_embed: PerStage = (False, False, False)
    cls_token: PerStage = (False, False, True)
    drop_path: PerStage = (0.0, 0.0, 0.1)
    qkv_bias: bool = True
    act: str = "quick_gelu"
    attn_scale: str = "dim"
    drop_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name in STAGE_FIELDS:
            object.__setattr__(self, name, _normalize_stage(name, getattr(self, name)))
        object.__setattr__(self, "extra", dict(self.extra))
        _validate(self)

    # -- derived quantities ------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.embed_dim)

    def block_value(self, name: str, stage: int, block: int) -> Any:
        """The value of a per-block field (``mlp_ratio``, ``kv_stride``) for one block."""
        value = getattr(self, name)[stage]
        return value[block] if isinstance(value, tuple) else value

    def block_drop_path(self, stage: int) -> list[float]:
        """Per-block drop-path rates of a stage: ``linspace(0, rate, depth)``."""
        rate, depth = float(self.drop_path[stage]), int(self.depth[stage])
        if depth == 1:
            return [0.0]
        return [rate * i / (depth - 1) for i in range(depth)]

    def grid_sizes(self, img_size: int | None = None) -> list[tuple[int, int]]:
        """Token grid (height, width) after each stage's token embedding."""
        size = self.img_size if img_size is None else img_size
        h = w = size
        out = []
        for s in range(self.num_stages):
            k, st, p = self.embed_kernel[s], self.embed_stride[s], self.embed_padding[s]
            h, w = conv_out(h, k, st, p), conv_out(w, k, st, p)
            out.append((h, w))
        return out

    # -- (de)serialization -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples) that YAML and JSON can hold."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> CvTConfig:
        """Build from a plain dict; unknown keys are a ValueError naming the key and source."""
        return from_fields(cls, data, source, _field_names())

    def replace(self, /, **overrides: Any) -> CvTConfig:
        """A copy with some fields changed; per-stage fields accept a scalar for every stage."""
        check_fields("CvTConfig", overrides, _field_names())
        expanded = {}
        for key, value in overrides.items():
            if key in STAGE_FIELDS and not isinstance(value, list | tuple):
                value = (value,) * self.num_stages
            expanded[key] = value
        return dataclasses.replace(self, **expanded)

    def arch_id(self) -> str:
        """A stable, canonical short id of the architecture (drop path and dropout excluded)."""
        return arch_id(self)


def _field_names() -> set[str]:
    # ``extra`` is free-form and out of to_dict, so it is no field that data or overrides name
    return {f.name for f in fields(CvTConfig) if f.name != "extra"}


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _normalize_stage(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ValueError(
            f"field {name!r}: expected a list with one entry per stage, got {value!r}"
        )
    out = []
    for entry in value:
        if isinstance(entry, list | tuple):
            if name not in BLOCK_FIELDS:
                raise ValueError(
                    f"field {name!r}: per-block values are only allowed for {list(BLOCK_FIELDS)}, "
                    f"got {entry!r}"
                )
            out.append(tuple(_coerce(name, v) for v in entry))
        else:
            out.append(_coerce(name, entry))
    return tuple(out)


_INT_FIELDS = {
    "embed_kernel", "embed_stride", "embed_padding", "embed_dim", "depth", "num_heads",
    "qkv_kernel", "q_stride", "kv_stride",
}
_BOOL_FIELDS = {"pos_embed", "cls_token"}
_FLOAT_FIELDS = {"mlp_ratio", "drop_path"}


def _coerce(name: str, v: Any) -> Any:
    if name in _INT_FIELDS:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"field {name!r}: expected an integer, got {v!r}")
        return int(v)
    if name in _BOOL_FIELDS:
        if not isinstance(v, bool):
            raise ValueError(f"field {name!r}: expected true/false, got {v!r}")
        return v
    if name in _FLOAT_FIELDS:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"field {name!r}: expected a number, got {v!r}")
        return float(v)
    return v


def _check_limit(key: str, value: Any, where: str = "") -> None:
    lo, hi = LIMITS[key]
    if not lo <= value <= hi:
        loc = f" ({where})" if where else ""
        raise ValueError(f"field {key!r}{loc}: must be from {lo} to {hi}, got {value!r}")


def _validate(cfg: CvTConfig) -> None:
    n = len(cfg.embed_dim)
    if n < 1:
        raise ValueError("field 'embed_dim': at least one stage is required")
    lo, hi = LIMITS["num_stages"]
    if n > hi:
        raise ValueError(f"field 'embed_dim': {n} stages; at most {hi} are supported")
    for name in STAGE_FIELDS:
        length = len(getattr(cfg, name))
        if length != n:
            raise ValueError(
                f"field {name!r}: has {length} entries but embed_dim has {n}; "
                "every per-stage field needs one entry per stage"
            )
    # num_classes 0: no classifier, the model outputs pooled features (timm's convention)
    for key in ("img_size", "in_chans", "num_classes"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"field {key!r}: must be an integer, got {v!r}")
        _check_limit(key, v)
    _check_choice("act", cfg.act, ACTS)
    _check_choice("attn_scale", cfg.attn_scale, ATTN_SCALES)
    rate = cfg.drop_rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"field 'drop_rate': must be a number in [0, 1), got {rate!r}")
    if not isinstance(cfg.qkv_bias, bool):
        raise ValueError(f"field 'qkv_bias': expected true/false, got {cfg.qkv_bias!r}")
    for s in range(n):
        where = f"stage {s + 1}"
        _check_choice("embed_type", cfg.embed_type[s], EMBED_TYPES, where)
        _check_choice("proj_method", cfg.proj_method[s], PROJ_METHODS, where)
        for key in ("embed_kernel", "embed_stride", "embed_padding", "embed_dim", "depth",
                    "num_heads", "qkv_kernel", "q_stride"):
            _check_limit(key, getattr(cfg, key)[s], where)
        if cfg.embed_type[s] == "patch" and (
            cfg.embed_kernel[s] != cfg.embed_stride[s] or cfg.embed_padding[s] != 0
        ):
            raise ValueError(
                f"field 'embed_type' ({where}): 'patch' embedding is non-overlapping and needs "
                f"embed_kernel == embed_stride and embed_padding == 0, got kernel "
                f"{cfg.embed_kernel[s]}, stride {cfg.embed_stride[s]}, padding {cfg.embed_padding[s]}"
            )
        dim, heads = cfg.embed_dim[s], cfg.num_heads[s]
        if dim % heads:
            raise ValueError(
                f"field 'num_heads' ({where}): embed_dim {dim} is not divisible by num_heads {heads}"
            )
        if not 0.0 <= cfg.drop_path[s] < 1.0:
            raise ValueError(f"field 'drop_path' ({where}): must be in [0, 1), got {cfg.drop_path[s]}")
        for key in BLOCK_FIELDS:
            value = getattr(cfg, key)[s]
            values = value if isinstance(value, tuple) else (value,)
            if isinstance(value, tuple) and len(value) != cfg.depth[s]:
                raise ValueError(
                    f"field {key!r} ({where}): per-block list has {len(value)} entries but depth "
                    f"is {cfg.depth[s]}"
                )
            for v in values:
                if key == "kv_stride":
                    _check_limit(key, v, where)
                elif not 0 < v <= MAX_MLP_RATIO:
                    raise ValueError(f"field {key!r} ({where}): must be > 0 and at most "
                                     f"{MAX_MLP_RATIO:g}, got {v}")
            if key == "mlp_ratio":
                for v in values:
                    if int(cfg.embed_dim[s] * v) < 1:
                        raise ValueError(f"field 'mlp_ratio' ({where}): hidden width would be 0")
        if cfg.q_stride[s] != 1:
            raise ValueError(
                f"field 'q_stride' ({where}): must be 1, got {cfg.q_stride[s]}; a strided query "
                "changes the token count inside a residual block, which CvT (and the official "
                "code) does not do; reduce tokens with embed_stride or kv_stride instead"
            )
        if cfg.proj_method[s] != "dw_bn":
            if cfg.proj_method[s] == "linear":
                strides = [cfg.q_stride[s], *_as_tuple(cfg.kv_stride[s])]
                if any(st != 1 for st in strides):
                    raise ValueError(
                        f"field 'proj_method' ({where}): 'linear' projection has no spatial "
                        f"reduction, so q_stride and kv_stride must be 1 (got q {cfg.q_stride[s]}, "
                        f"kv {cfg.kv_stride[s]})"
                    )
        if cfg.proj_method[s] == "dw_bn" and cfg.qkv_kernel[s] % 2 == 0:
            raise ValueError(
                f"field 'qkv_kernel' ({where}): must be odd (padding = kernel // 2), got "
                f"{cfg.qkv_kernel[s]}"
            )
    size = cfg.img_size
    for s, (h, w) in enumerate(cfg.grid_sizes()):
        if h < 1 or w < 1:
            raise ValueError(
                f"field 'embed_stride' (stage {s + 1}): at img_size {size} the token embedding "
                "leaves no tokens; use a smaller stride/kernel, more padding or a larger img_size"
            )


def _as_tuple(v: Any) -> tuple[Any, ...]:
    return v if isinstance(v, tuple) else (v,)


def _check_choice(name: str, value: Any, choices: tuple[str, ...], where: str = "") -> None:
    if value not in choices:
        loc = f" ({where})" if where else ""
        raise ValueError(f"field {name!r}{loc}: unknown value {value!r}; choose one of {list(choices)}")


# Fields that describe training regularization or the data, not the architecture's topology.
_NON_ARCH_FIELDS = ("drop_path", "drop_rate", "img_size", "in_chans", "num_classes")


def arch_id(cfg: CvTConfig) -> str:
    """Canonical id: a hash of the topology fields in canonical JSON form.

    Two configs that build the same network (up to input size, classes and regularization) get
    the same id, whatever order or types (list vs tuple, 4 vs 4.0) they were written with.
    """
    data = cfg.to_dict()
    for key in _NON_ARCH_FIELDS:
        data.pop(key)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "cvt-" + hashlib.sha1(text.encode()).hexdigest()[:12]
