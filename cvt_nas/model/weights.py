"""Load pretrained CvT weights: the official microsoft/CvT layout and the Hugging Face one.

Our parameter names are the official ones (``stage0.patch_embed.proj.weight``,
``stage2.blocks.3.attn.conv_proj_q.bn.running_var``, ``head.weight`` ...), so an official
checkpoint loads as is. A Hugging Face ``CvtForImageClassification`` (or ``CvtModel``) state dict
is renamed key by key. The layout is detected from the keys.

Every mismatch is collected and reported at once, with the names and shapes and the fix, before
any tensor is copied: a failed load leaves the model untouched.

Note on activations: the released weights were trained with the official QuickGELU; the Hugging
Face port runs them with exact GELU. ``act="quick_gelu"`` (our default) reproduces the official
network, ``act="gelu"`` reproduces the Hugging Face outputs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "resolve_checkpoint", "timm_filter_fn"]

OFFICIAL = "official"
HUGGINGFACE = "huggingface"

# Wrappers of a state dict in training checkpoints (official checkpoint.pth: "state_dict").
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# Prefixes added by DistributedDataParallel and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_HF_DIR_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_NAMES = 12
_STEM = "stage0.patch_embed.proj.weight"

_HF_STAGE = re.compile(r"^(?:cvt\.)?encoder\.stages\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_OFFICIAL_KEY = re.compile(r"^stage\d+\.")
_BLOCK_KEY = re.compile(r"^stage(\d+)\.blocks\.(\d+)\.")

# Hugging Face name prefix -> official name prefix, inside a stage, a block, and at the top.
_HF_STAGE_MAP = {
    "embedding.convolution_embeddings.projection.": "patch_embed.proj.",
    "embedding.convolution_embeddings.normalization.": "patch_embed.norm.",
    "cls_token": "cls_token",
}
_HF_BLOCK_MAP = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
for _hf, _ours in (("query", "q"), ("key", "k"), ("value", "v")):
    _proj = f"attention.attention.convolution_projection_{_hf}.convolution_projection."
    _HF_BLOCK_MAP[f"{_proj}convolution."] = f"attn.conv_proj_{_ours}.conv."
    _HF_BLOCK_MAP[f"{_proj}normalization."] = f"attn.conv_proj_{_ours}.bn."
    _HF_BLOCK_MAP[f"attention.attention.projection_{_hf}."] = f"attn.proj_{_ours}."
_HF_TOP_MAP = {"layernorm.": "norm.", "classifier.": "head."}


@dataclass
class LoadReport:
    """What `load_pretrained` did.

    Attributes:
        source: the file read, or ``"<state dict>"``.
        layout: ``"official"`` or ``"huggingface"``.
        loaded: model keys whose tensors were copied from the checkpoint.
        skipped: checkpoint keys (official names) that were not loaded, with the reason.
        kept: model keys that keep their current value, with the reason.
    """

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def num_loaded(self) -> int:
        return len(self.loaded)

    def __str__(self) -> str:
        lines = [f"loaded {self.num_loaded} tensors from {self.source} ({self.layout} layout)"]
        for title, entries in (("skipped", self.skipped), ("kept as initialized", self.kept)):
            for reason, names in _group(entries).items():
                lines.append(f"  {title} ({len(names)}): {_names(names)}: {reason}")
        return "\n".join(lines)


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict_head: bool = True,
    strict_pos_embed: bool = True,
) -> LoadReport:
    """Copy pretrained weights into a CvT built with the same architecture.

    Args:
        model: a `CvT` (or any module with the official microsoft/CvT parameter names).
        checkpoint: a ``.pth``/``.pt``/``.bin`` file (read with ``weights_only=True``), a
            ``.safetensors`` file, a Hugging Face model folder (``model.safetensors`` or
            ``pytorch_model.bin``), or an in-memory state dict. Official (``stage0.``...) and
            Hugging Face (``cvt.encoder.stages.0.``...) layouts are detected from the keys; a
            ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a ``module.`` prefix are
            removed.
        strict_head: if False, a classifier head whose shape differs from the model's (another
            ``num_classes``) or that the checkpoint lacks is skipped, and the model keeps its own
            freshly initialized head: the usual start of fine-tuning.
        strict_pos_embed: if False, a position embedding that the model has and the checkpoint
            lacks (the official and Hugging Face releases have none) is set to zero, so the
            loaded network computes what the checkpoint computed until fine-tuning moves it.

    Returns:
        A `LoadReport` of loaded, skipped and kept keys.

    Raises:
        FileNotFoundError: the file or folder does not exist.
        ValueError: the file cannot be read safely, the layout is not recognized, or the
            checkpoint does not fit the model (every missing, unexpected and mis-shaped key is
            named, with the fix).
    """
    state, layout, origin, source = _read(checkpoint)
    report = LoadReport(source=source, layout=layout)
    problems = _check_fit(model, state, origin, report, strict_head, strict_pos_embed)
    if problems:
        raise ValueError(_fit_error(model, state, source, layout, problems))
    with torch.no_grad():
        for k in report.kept:
            if k.endswith(".pos_embed"):
                _set_zero(model, k)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(report.kept)
    report.loaded = [k for k in model.state_dict() if k in state]
    return report


def timm_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn`` for the CvT presets: a checkpoint that timm has read, in
    the official or the Hugging Face layout, under official names and checked against the model.

    timm adapts two things after this function: the stem to another ``in_chans``, and the
    classifier, which it drops when the model has another ``num_classes`` than the pretrained
    config; those are not errors here. A position embedding the checkpoint lacks starts at zero
    (``strict_pos_embed=False``). Anything else that does not fit is one `ValueError` naming the
    keys, as from `load_pretrained`.
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    source = str(cfg.get("file") or cfg.get("hf_hub_id") or cfg.get("url") or "<state dict>")
    state, layout, origin, _ = _read(state_dict)
    report = LoadReport(source=source, layout=layout)
    if cfg.get("num_classes") not in (None, getattr(model, "num_classes", None)):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # timm drops it
        report.kept.update({k: "timm makes a new head" for k in model.state_dict()
                            if k.startswith("head.")})
    problems = _check_fit(model, state, origin, report, strict_head=True, strict_pos_embed=False,
                          stem_adapted=True)
    if problems:
        raise ValueError(_fit_error(model, state, source, layout, problems))
    target = model.state_dict()
    for k in report.kept:
        if k.endswith(".pos_embed"):
            state[k] = torch.zeros_like(target[k], device="cpu")
        elif k.endswith(".num_batches_tracked"):
            state[k] = target[k].to("cpu")
    return state


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The weight file a path names: the file itself, or a Hugging Face model folder's
    ``model.safetensors`` / ``pytorch_model.bin``.

    Raises:
        FileNotFoundError: nothing there, or a folder without those files.
    """
    return _resolve(Path(path))


# -- fitting a state dict to a model -------------------------------------------------------------


def _check_fit(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    origin: Mapping[str, str],
    report: LoadReport,
    strict_head: bool,
    strict_pos_embed: bool,
    stem_adapted: bool = False,
) -> list[str]:
    """What keeps ``state`` from loading into ``model``; fills ``report.kept``/``skipped`` and
    removes a skipped head from ``state``. ``stem_adapted``: the stem may differ in its input
    channels (timm converts it)."""
    target = model.state_dict()
    problems: list[str] = []

    # Classifier head: the one part a fine-tuning run expects to differ.
    head = sorted(k for k in target if k.startswith("head."))
    head_ok = all(k in state and state[k].shape == target[k].shape for k in head)
    if head and not head_ok and not strict_head:
        for k in head:
            report.kept[k] = "the checkpoint has no head of this shape (strict_head=False)"
            if k in state:
                report.skipped[k] = (
                    f"the checkpoint head has {state[k].shape[0]} classes, the model "
                    f"{target[k].shape[0]}"
                )
                del state[k]

    shapes = []
    for k in sorted(set(state) & set(target)):
        ours, theirs = _shape(target[k]), _shape(state[k])
        if stem_adapted and k == _STEM and ours[:1] + ours[2:] == theirs[:1] + theirs[2:]:
            continue
        if theirs != ours:
            shapes.append(f"{_label(k, origin)}: checkpoint {theirs} vs model "
                          f"{ours}{_shape_hint(k, state[k])}")
    if shapes:
        problems.append(f"shape mismatch ({len(shapes)}):\n    " + "\n    ".join(shapes))

    missing = [k for k in target if k not in state and k not in report.kept]
    pos_missing = [k for k in missing if k.endswith(".pos_embed")]
    if pos_missing and not strict_pos_embed:
        for k in pos_missing:
            report.kept[k] = "the checkpoint has no position embedding; set to zero"
    elif pos_missing:
        problems.append(
            f"the model has a position embedding ({_names(pos_missing)}) but the checkpoint has "
            "none (the official and Hugging Face CvT releases have none); pass "
            "strict_pos_embed=False to start it from zero, or build the model with "
            "pos_embed=False for those stages"
        )
    bn_steps = [k for k in missing if k.endswith(".num_batches_tracked")]
    for k in bn_steps:
        report.kept[k] = "BatchNorm step counter, absent from the checkpoint (unused in eval)"
    missing = [k for k in missing if k not in report.kept and k not in pos_missing]
    if missing:
        names = _compact(missing, target)
        problems.append(f"missing from the checkpoint ({len(missing)}): {_names(names)}")
    unexpected = [k for k in state if k not in target]
    if unexpected:
        names = [_label(k, origin) for k in _compact(unexpected, state)]
        problems.append(f"unexpected in the checkpoint ({len(unexpected)}): {_names(names)}")
    return problems


def _fit_error(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, layout: str,
               problems: list[str]) -> str:
    hint = _arch_hint(model, state)
    return (
        f"cannot load {source} ({layout} layout) into the model:\n  "
        + "\n  ".join(problems)
        + (f"\n  {hint}" if hint else "")
    )


def read_state_dict(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint and return its state dict under official names, and its layout.

    Args:
        checkpoint: a file, a Hugging Face model folder or a state dict, as for
            `load_pretrained`.

    Returns:
        The state dict with official microsoft/CvT key names, and ``"official"`` or
        ``"huggingface"``.
    """
    state, layout, _, _ = _read(checkpoint)
    return state, layout


# -- reading -------------------------------------------------------------------------------------


def _read(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], str, dict[str, str], str]:
    if isinstance(checkpoint, Mapping):
        source, raw = "<state dict>", checkpoint
    else:
        path = _resolve(Path(checkpoint))
        source, raw = str(path), _load_file(path)
    state = _unwrap(raw, source)
    layout = _detect_layout(state, source)
    if layout == HUGGINGFACE:
        origin = {}
        renamed = {}
        for k, v in state.items():
            new = _hf_to_official(k)
            origin[new] = k
            renamed[new] = v
        return renamed, layout, origin, source
    return dict(state), layout, {}, source


def _resolve(path: Path) -> Path:
    if path.is_dir():
        for name in _HF_DIR_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} is a folder without {' or '.join(_HF_DIR_FILES)}; pass the checkpoint file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _load_file(path: Path) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable .safetensors file ({exc})") from None
    if suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"{path}: the file holds Python objects besides tensors, which are not loaded "
                f"for safety (torch.load weights_only=True: {first}); re-save only the weights, "
                "e.g. torch.save(model.state_dict(), path)"
            ) from None
        except (RuntimeError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from None
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{path}: expected a state dict (a mapping of names to tensors), "
                f"got {type(obj).__name__}"
            )
        return obj
    raise ValueError(
        f"{path}: unsupported checkpoint suffix {path.suffix!r}; use one of "
        f"{[*_TORCH_SUFFIXES, '.safetensors']} or pass a state dict"
    )


def _unwrap(raw: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    state: Mapping[str, Any] = raw
    for key in _WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and inner and not _all_tensors(state):
            state = inner
            break
    if not _all_tensors(state):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        raise ValueError(
            f"{source}: not a state dict: entries {_names(bad)} are not tensors, and none of "
            f"{list(_WRAPPER_KEYS)} holds the weights"
        )
    if not state:
        raise ValueError(f"{source}: the checkpoint is empty")
    out = dict(state)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _all_tensors(state: Mapping[str, Any]) -> bool:
    return all(isinstance(v, torch.Tensor) for v in state.values())


def _detect_layout(state: Mapping[str, torch.Tensor], source: str) -> str:
    if any(_HF_STAGE.match(k) for k in state):
        return HUGGINGFACE
    if any(_OFFICIAL_KEY.match(k) for k in state):
        return OFFICIAL
    raise ValueError(
        f"{source}: unrecognized checkpoint layout; expected official microsoft/CvT keys "
        "('stage0.patch_embed.proj.weight', ...) or Hugging Face CvT keys "
        f"('cvt.encoder.stages.0.embedding...'), got {_names(list(state))}"
    )


def _hf_to_official(key: str) -> str:
    """The official name of a Hugging Face CvT key; an unknown key keeps its name."""
    stage = _HF_STAGE.match(key)
    if stage:
        s, rest = stage.groups()
        layer = _HF_LAYER.match(rest)
        if layer:
            j, inner = layer.groups()
            new = _map_prefix(inner, _HF_BLOCK_MAP)
            return f"stage{s}.blocks.{j}.{new}" if new is not None else key
        new = _map_prefix(rest, _HF_STAGE_MAP)
        return f"stage{s}.{new}" if new is not None else key
    new = _map_prefix(key, _HF_TOP_MAP)
    return new if new is not None else key


def _map_prefix(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old):]
    return None


# -- messages ------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    more = len(names) - _MAX_NAMES
    return shown + (f" ... and {more} more" if more > 0 else "")


def _compact(names: list[str], universe: Mapping[str, Any]) -> list[str]:
    """Names, with a whole block written once as ``stage1.blocks.3.*`` when all its keys are in."""
    chosen = set(names)
    out: list[str] = []
    for name in names:
        m = _BLOCK_KEY.match(name)
        block = [k for k in universe if k.startswith(m.group(0))] if m else []
        if m and all(k in chosen or k.endswith(".num_batches_tracked") for k in block):
            name = m.group(0) + "*"
        if name not in out:
            out.append(name)
    return out


def _label(key: str, origin: Mapping[str, str]) -> str:
    """The key as the user sees it: with its Hugging Face name when it was renamed."""
    old = origin.get(key)
    return f"{key} (checkpoint {old})" if old and old != key else key


def _group(entries: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, reason in entries.items():
        out.setdefault(reason, []).append(name)
    return out


def _shape_hint(key: str, value: torch.Tensor) -> str:
    if key == "head.weight":
        return f"; pass num_classes={value.shape[0]} or strict_head=False"
    if key.endswith(".pos_embed"):
        return "; the checkpoint's token grid differs (another img_size or embed_stride)"
    return ""


def _set_zero(model: nn.Module, key: str) -> None:
    module_name, _, attr = key.rpartition(".")
    getattr(model.get_submodule(module_name), attr).zero_()


def _arch_hint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Which config fields the checkpoint's architecture has that the model lacks."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return ""
    found = _infer_arch(state, cfg.num_stages)
    diffs = {}
    for name, value in found.items():
        ours = getattr(cfg, name)
        if name == "proj_method":
            ours = tuple("dw_bn" if m == "dw_bn" else "avg/linear" for m in ours)
        if value != ours:
            diffs[name] = value
    if not diffs:
        return ""
    text = ", ".join(f"{k}={v!r}" for k, v in diffs.items())
    mine = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diffs)
    hint = f"the checkpoint looks like {text} (model: {mine}); build the model with those values"
    preset = _matching_preset(found, cfg.img_size)
    return hint + (f", e.g. create_model({preset!r})" if preset else "")


def _infer_arch(state: Mapping[str, torch.Tensor], num_stages: int) -> dict[str, Any]:
    """Architecture fields readable from a checkpoint's keys and shapes."""
    stages = sorted({int(k[5:].split(".")[0]) for k in state if _OFFICIAL_KEY.match(k)})
    n = max(stages[-1] + 1 if stages else 0, num_stages)
    if n != num_stages:
        return {"num_stages": n}
    depth = [0] * n
    for k in state:
        m = _BLOCK_KEY.match(k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            depth[s] = max(depth[s], j + 1)
    found: dict[str, Any] = {"depth": tuple(depth)}
    embeds = [state.get(f"stage{s}.patch_embed.proj.weight") for s in range(n)]
    if all(w is not None and w.ndim == 4 for w in embeds):
        found["embed_dim"] = tuple(int(w.shape[0]) for w in embeds)  # type: ignore[union-attr]
        found["embed_kernel"] = tuple(int(w.shape[-1]) for w in embeds)  # type: ignore[union-attr]
        found["in_chans"] = int(embeds[0].shape[1])  # type: ignore[union-attr]
    found["cls_token"] = tuple(f"stage{s}.cls_token" in state for s in range(n))
    found["pos_embed"] = tuple(f"stage{s}.pos_embed" in state for s in range(n))
    found["proj_method"] = tuple(
        "dw_bn" if f"stage{s}.blocks.0.attn.conv_proj_q.conv.weight" in state else "avg/linear"
        for s in range(n)
    )
    head = state.get("head.weight")
    if head is not None:
        found["num_classes"] = int(head.shape[0])
    return found


def _matching_preset(found: Mapping[str, Any], img_size: int) -> str | None:
    """A preset with the checkpoint's depths, widths, stem kernels and cls tokens, if any."""
    from cvt_nas.model.presets import PRESETS

    keys = ("depth", "embed_dim", "embed_kernel", "cls_token")
    if not all(k in found for k in keys):
        return None
    for name, preset in PRESETS.items():
        if preset.img_size == img_size and all(getattr(preset, k) == found[k] for k in keys):
            return name
    return None
