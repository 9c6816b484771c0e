"""`TrainConfig`: how one trial trains (data, schedule, regularization, device), and recipes.

A frozen dataclass like `CvTConfig`: built from plain dicts or YAML, validated on construction
(unknown keys and bad values are a ValueError naming the field, the value and the rule), and
hashable so search backends can key on it. Two named recipes:

- ``paper``: the official CvT ImageNet recipe (cvt-paper.md, "Training recipe").
- ``reduced``: a CPU-friendly recipe for 28-32 px data (Fashion-MNIST, MNIST, CIFAR), tuned so
  ``cvt_micro`` passes 90% test top-1 on Fashion-MNIST in 10 epochs on 2 cores.

This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cvt_nas.common.fields import check_fields, from_fields
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.model.config import LIMITS
from cvt_nas.training.datasets import BUILTIN, FOLDER_PREFIX
from cvt_nas.training.seeds import MAX_SEED

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ENGINES = ("eager", "graph")  # cvt_nas.training.engine
CHANNELS = ("native", "repeat")
RESIZES = ("pad", "interpolate")
DATASETS = tuple(BUILTIN)  # plus "imagefolder:PATH"


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a trial except the architecture. Defaults are the ``reduced`` recipe.

    Attributes:
        dataset: ``fashion-mnist`` (default, offline), ``mnist``, ``cifar10``, ``cifar100`` or
            ``imagefolder:PATH`` (``PATH/train`` and ``PATH/val`` class folders).
        data_root: a torchvision-style root to look in (and download to); None uses
            ``$CVT_NAS_DATA`` or ``~/.cache/cvt-nas/data``.
        download: allow torchvision to download a missing dataset into the root.
        img_size: training and evaluation size; None keeps the model config's ``img_size``.
        resize: how small tensor datasets reach ``img_size``: ``pad`` (zero-pad or center-crop,
            e.g. 28 -> 32) or ``interpolate`` (bilinear).
        channels: ``native`` (model ``in_chans`` = the data's channels) or ``repeat`` (1-channel
            data repeated to 3 channels).
        val_fraction: share of the training set held out for validation (stratified, carved with
            ``split_seed`` so every trial of a search sees the same split); 0 means no validation.
        split_seed: seed of the validation split and of ``train_subset``.
        train_subset: train on this many images of the training split (None = all).
        eval_test: also evaluate the test set after the last epoch (reported apart).
        test_subset: evaluate only this many test images (stratified; None = all), for smoke runs.
        epochs, batch_size: the schedule length and the training batch.
        eval_batch_size: batch for evaluation (None = 2 x batch_size).
        lr, min_lr: AdamW peak and final learning rate (cosine decay per step).
        warmup_epochs, warmup_lr: linear warm-up (per step) from ``warmup_lr`` to ``lr``.
        weight_decay: AdamW decay, not applied to norms, biases, cls tokens, position embeddings.
        clip_grad: max gradient norm (None = no clipping).
        label_smoothing: applied to the (possibly mixed) targets.
        mixup, cutmix: alphas of timm's Mixup (0 = off); both on switches at random.
        randaugment: a timm RandAugment string such as ``rand-m9-mstd0.5-inc1`` (None = off).
        random_erasing: probability of timm's RandomErasing per image.
        shift: random translation in pixels for tensor datasets (0 = off).
        hflip: probability of a horizontal flip (set 0 for digits).
        drop_path: override of the model's per-stage drop-path rates (a scalar sets every stage,
            a list one rate per stage); None keeps the model config's.
        seed: seed of initialization, shuffling and augmentation.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast (fp16 needs CUDA; uses GradScaler),
            or ``auto``: bf16 on CUDA, fp32 elsewhere (the trial result says which ran).
        engine: how steps run on CUDA (`cvt_nas.training.engine`): ``graph`` (fixed-shape train
            and eval steps captured as CUDA graphs and replayed) or ``eager``; None (default)
            means graph on CUDA (eager with fp16) and eager elsewhere, the only choice there.
        channels_last: use channels-last memory format for model and inputs.
        threads: torch intra-op threads (0 or None leaves the current setting).
        num_workers: DataLoader workers for image folders.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    img_size: int | None = 32
    resize: str = "pad"
    channels: str = "native"
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int | None = None
    eval_test: bool = False
    test_subset: int | None = None
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int | None = None
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    clip_grad: float | None = None
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: str | None = None
    random_erasing: float = 0.0
    shift: int = 2
    hflip: float = 0.5
    drop_path: float | tuple[float, ...] | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    threads: int | None = None
    num_workers: int = 4
    engine: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.drop_path, list):
            object.__setattr__(self, "drop_path", tuple(self.drop_path))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLOAT_FIELDS:
                object.__setattr__(self, f.name, _to_float(value))
        _validate(self)
        if self.engine is not None and self.engine not in ENGINES:
            _fail("engine", self.engine, f"must be one of {list(ENGINES)} or null (automatic)")

    # -- (de)serialization -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples) that YAML and JSON can hold."""
        out = dataclasses.asdict(self)
        if isinstance(out["drop_path"], tuple):
            out["drop_path"] = list(out["drop_path"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "train config") -> TrainConfig:
        """Build from a plain dict; unknown keys are a ValueError naming the key and source."""
        return from_fields(cls, data, source, field_names())

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a YAML mapping of TrainConfig fields (``yaml.safe_load``)."""
        data = read_yaml(path, "training config file", "write TrainConfig fields as key: value")
        return cls.from_dict(data, source=str(path))

    def replace(self, /, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed (validated; unknown fields are a ValueError)."""
        check_fields("TrainConfig", overrides, field_names())
        return dataclasses.replace(self, **overrides)


def field_names() -> tuple[str, ...]:
    """Names of all TrainConfig fields, in declaration order."""
    return tuple(f.name for f in fields(TrainConfig))


# The official CvT ImageNet recipe (cvt-paper.md): AdamW, total batch 2048, lr 2e-3, weight decay
# 0.05 (CvT-13; 0.1 for CvT-21/W24), 300 epochs cosine with 5 warm-up epochs from 1e-6, min lr 1e-5,
# AMP, mixup 0.8, cutmix 1.0, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random
# erasing 0.25, random resized crop + flip at 224 (test: resize 256, center crop 224).
# The dataset must be given (``imagefolder:PATH``); scale lr linearly when batch_size changes.
_PAPER = dict(
    img_size=224,
    val_fraction=0.01,
    epochs=300,
    batch_size=2048,
    lr=2e-3,
    min_lr=1e-5,
    warmup_epochs=5.0,
    warmup_lr=1e-6,
    weight_decay=0.05,
    label_smoothing=0.1,
    mixup=0.8,
    cutmix=1.0,
    randaugment="rand-m9-mstd0.5-inc1",
    random_erasing=0.25,
    shift=0,
    hflip=0.5,
    precision="fp16",
    num_workers=8,
)

# CPU-friendly recipe for 28-32 px tensors: the calibration recipe of ENVIRONMENT.md (AdamW lr 2e-3,
# label smoothing 0.1, random shift + flip, batch 128) with a 1-epoch warm-up and per-step cosine
# decay; no mixup/RandAugment (they slow convergence at 10 epochs).
_REDUCED: dict[str, Any] = {}

RECIPES: dict[str, dict[str, Any]] = {"reduced": _REDUCED, "paper": _PAPER}


def get_recipe(name: str, /, **overrides: Any) -> TrainConfig:
    """A named recipe (``reduced`` or ``paper``) with field overrides."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(RECIPES)}")
    data = {**RECIPES[name], **overrides}
    return TrainConfig.from_dict(data, source=f"recipe {name!r}")


# -- validation ------------------------------------------------------------------------------

_FLOAT_FIELDS = {"val_fraction", "lr", "min_lr", "warmup_epochs", "warmup_lr", "weight_decay",
                 "clip_grad", "label_smoothing", "mixup", "cutmix", "random_erasing", "hflip"}


def _to_float(v: Any) -> Any:
    # YAML 1.1 reads ``2e-3`` (no dot) as a string; accept it and ints as floats.
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return float(v) if _is_int(v) else v


def _fail(name: str, value: Any, rule: str) -> None:
    raise ValueError(f"field {name!r}: {rule}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _validate(c: TrainConfig) -> None:
    if not isinstance(c.dataset, str) or not (
        c.dataset in DATASETS
        or (c.dataset.startswith(FOLDER_PREFIX) and len(c.dataset) > len(FOLDER_PREFIX))
    ):
        _fail("dataset", c.dataset, f"must be one of {list(DATASETS)} or 'imagefolder:PATH'")
    if c.data_root is not None and not isinstance(c.data_root, str):
        _fail("data_root", c.data_root, "must be a path string or null")
    for name in ("download", "eval_test", "channels_last"):
        if not isinstance(getattr(c, name), bool):
            _fail(name, getattr(c, name), "must be true or false")
    img_lo, img_hi = LIMITS["img_size"]
    for name, lo, hi, optional in (
        ("img_size", img_lo, img_hi, True), ("epochs", 1, None, False),
        ("batch_size", 1, None, False), ("eval_batch_size", 1, None, True),
        ("train_subset", 1, None, True), ("test_subset", 1, None, True),
        ("shift", 0, None, False), ("threads", 0, None, True), ("num_workers", 0, None, False),
        ("seed", 0, MAX_SEED, False), ("split_seed", 0, MAX_SEED, False),
    ):
        v = getattr(c, name)
        if v is None and optional:
            continue
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            rule = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
            _fail(name, v, f"must be {rule}" + (" or null" if optional else ""))
    for name, choices in (("resize", RESIZES), ("channels", CHANNELS), ("precision", PRECISIONS)):
        if getattr(c, name) not in choices:
            _fail(name, getattr(c, name), f"must be one of {list(choices)}")
    for name, low, high, high_open in (
        ("val_fraction", 0.0, 1.0, True), ("label_smoothing", 0.0, 1.0, True),
        ("random_erasing", 0.0, 1.0, False), ("hflip", 0.0, 1.0, False),
    ):
        v = getattr(c, name)
        if not _is_num(v) or not (low <= v and (v < high if high_open else v <= high)):
            _fail(name, v, f"must be a number in [{low}, {high}{')' if high_open else ']'}")
    for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "warmup_epochs", "mixup", "cutmix"):
        v = getattr(c, name)
        if not _is_num(v) or v < 0 or v != v or v == float("inf"):
            _fail(name, v, "must be a finite number >= 0")
    if c.lr <= 0:
        _fail("lr", c.lr, "must be > 0")
    if c.clip_grad is not None and (
        not _is_num(c.clip_grad) or not 0 < c.clip_grad < float("inf")
    ):
        _fail("clip_grad", c.clip_grad, "must be a finite number > 0 or null")
    if c.randaugment is not None and (
        not isinstance(c.randaugment, str) or not c.randaugment.startswith("rand")
    ):
        _fail("randaugment", c.randaugment, "must be a timm RandAugment string like "
              "'rand-m9-mstd0.5-inc1' or null")
    if (c.mixup > 0 or c.cutmix > 0) and c.batch_size % 2:
        _fail("batch_size", c.batch_size, "must be even when mixup or cutmix is on (timm's Mixup)")
    dp = c.drop_path
    if dp is not None:
        values = dp if isinstance(dp, tuple) else (dp,)
        if not values or any(not _is_num(v) or not 0.0 <= v < 1.0 for v in values):
            _fail("drop_path", dp, "must be a rate in [0, 1), a list of per-stage rates, or null")
    if not isinstance(c.device, str) or not (
        c.device in ("auto", "cpu", "cuda", "mps")
        or (c.device.startswith("cuda:") and c.device[5:].isdigit() and c.device[5:].isascii())
    ):
        _fail("device", c.device, "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
