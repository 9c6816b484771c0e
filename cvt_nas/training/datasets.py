"""The datasets cvt-nas knows, as one table, and `adapt_config`, which fits a model to one.

What a model must know about a dataset before any image is decoded: input channels, classes,
native image size and normalization. Search-space parsing, the budget gate, the trainer and data
loading (`cvt_nas.training.data`) all read this table, so the config whose cost is budgeted is
the config that is trained. ``imagefolder:PATH`` datasets are described by scanning
``PATH/train`` for class folders (no image is opened).

This module imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cvt_nas.model.config import CvTConfig

__all__ = ["BUILTIN", "FOLDER_PREFIX", "DatasetInfo", "adapt_config", "dataset_info",
           "folder_classes"]

FOLDER_PREFIX = "imagefolder:"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before any image is decoded."""

    name: str
    channels: int
    num_classes: int
    img_size: int | None  # native size; None for folders (any size)
    mean: tuple[float, ...]
    std: tuple[float, ...]


# The built-in datasets (decoded into memory by `cvt_nas.training.data`).
BUILTIN: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,)),
    "mnist": DatasetInfo("mnist", 1, 10, 28, (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo(
        "cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}
# Image folders (ImageNet layout) are normalized with ImageNet's statistics.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def folder_classes(directory: Path, name: str) -> list[str]:
    """The class folders of ``directory``, sorted (ImageFolder's label order).

    Raises:
        FileNotFoundError: ``directory`` is missing or holds no class folder; the message shows
            the layout ``imagefolder:PATH`` expects.
    """
    if not directory.is_dir():
        raise FileNotFoundError(
            f"dataset {name!r}: {directory} is not a directory; 'imagefolder:PATH' needs "
            "PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (the ImageNet/Imagenette layout)"
        )
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"dataset {name!r}: {directory} has no class folders")
    return classes


def dataset_info(name: str) -> DatasetInfo:
    """Channels, classes, native size and normalization of a dataset, without decoding it.

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: an ``imagefolder:PATH`` without class folders under ``PATH/train``.
    """
    if name.startswith(FOLDER_PREFIX):
        path = Path(name.removeprefix(FOLDER_PREFIX)).expanduser()
        classes = folder_classes(path / "train", name)
        return DatasetInfo(name, 3, len(classes), None, IMAGENET_MEAN, IMAGENET_STD)
    if name not in BUILTIN:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {list(BUILTIN)} or 'imagefolder:PATH'"
        )
    return BUILTIN[name]


class TrainShape(Protocol):
    """The `TrainConfig` fields that shape the model (a protocol: `config` imports this module)."""

    @property
    def dataset(self) -> str: ...
    @property
    def channels(self) -> str: ...
    @property
    def img_size(self) -> int | None: ...
    @property
    def drop_path(self) -> float | tuple[float, ...] | None: ...


def adapt_config(model_cfg: CvTConfig, train_cfg: TrainShape) -> CvTConfig:
    """The model config a trial actually builds: ``in_chans`` and ``num_classes`` from the
    dataset, ``img_size`` (and a ``drop_path`` override) from the training config.

    Costs of a trial are computed on this config, so they match what is trained.

    Raises:
        ValueError: the adapted config is invalid (e.g. no tokens left at ``img_size``).
        FileNotFoundError: an image folder dataset is missing.
    """
    info = dataset_info(train_cfg.dataset)
    overrides: dict[str, Any] = {
        "in_chans": 3 if train_cfg.channels == "repeat" else info.channels,
        "num_classes": info.num_classes,
    }
    if train_cfg.img_size is not None:
        overrides["img_size"] = train_cfg.img_size
    if train_cfg.drop_path is not None:
        overrides["drop_path"] = train_cfg.drop_path
    return model_cfg.replace(**overrides)
