"""Data paths, the validation split, tensor augmentation and the missing-data errors.

Uses the real Fashion-MNIST IDX files that CI installs (Debian `dataset-fashion-mnist`, see
scripts/setup.sh); a missing install fails with the install command rather than skipping.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from cvt_nas.training import data as D
from cvt_nas.training.augment import TensorAugment, random_hflip, random_shift, resize_batch
from cvt_nas.training.config import TrainConfig

FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(scope="module")
def fmnist() -> D.TensorData:
    assert (FMNIST / IDX_FILES[0]).is_file(), (
        "Fashion-MNIST is missing: run scripts/setup.sh or "
        "`sudo apt-get install dataset-fashion-mnist`"
    )
    data = D.load_dataset("fashion-mnist")
    assert isinstance(data, D.TensorData)
    return data


@pytest.fixture
def no_default_data(tmp_path, monkeypatch) -> Path:
    """Hide every default data location: empty $CVT_NAS_DATA and $HOME, no Debian dir."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CVT_NAS_DATA", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(D.DEBIAN_DIRS, "fashion-mnist", tmp_path / "no-debian")
    monkeypatch.setitem(D.DEBIAN_DIRS, "mnist", tmp_path / "no-debian")
    D.clear_cache()
    yield empty
    D.clear_cache()


def _link_idx(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in IDX_FILES:
        (directory / name).symlink_to(FMNIST / name)


# -- decoding and the cache -------------------------------------------------------------------


def test_fashion_mnist_decodes_to_uint8_tensors(fmnist: D.TensorData) -> None:
    assert fmnist.train_x.shape == (60000, 1, 28, 28) and fmnist.train_x.dtype == torch.uint8
    assert fmnist.test_x.shape == (10000, 1, 28, 28)
    assert fmnist.train_y.dtype == torch.long
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(fmnist.train_y).tolist() == [6000] * 10
    assert torch.bincount(fmnist.test_y).tolist() == [1000] * 10
    # Its documented mean pixel (used for normalization) is 0.2860.
    assert fmnist.train_x.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-3)
    assert fmnist.source == str(FMNIST)


def test_load_dataset_is_memoized(fmnist: D.TensorData) -> None:
    assert D.load_dataset("fashion-mnist") is D.load_dataset("fashion-mnist")


def test_read_idx_raw_gzip_and_corrupt_files(tmp_path) -> None:
    raw = gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    assert torch.equal(D.read_idx(tmp_path / "labels"),
                       D.read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz"))
    (tmp_path / "truncated").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated IDX file"):
        D.read_idx(tmp_path / "truncated")
    (tmp_path / "bad").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ValueError, match="bad magic number"):
        D.read_idx(tmp_path / "bad")


def test_torchvision_style_root_and_env_var_are_searched(no_default_data, tmp_path) -> None:
    root = tmp_path / "root"
    _link_idx(root / "FashionMNIST" / "raw")
    data = D.load_dataset("fashion-mnist", root=str(root))
    assert data.source == str(root / "FashionMNIST" / "raw")
    assert data.train_x.shape == (60000, 1, 28, 28)
    D.clear_cache()
    _link_idx(no_default_data / "fashion-mnist")
    assert D.load_dataset("fashion-mnist").source == str(no_default_data / "fashion-mnist")


def test_missing_data_lists_paths_and_the_fix(no_default_data) -> None:
    with pytest.raises(FileNotFoundError) as info:
        D.load_dataset("fashion-mnist", root="/nonexistent/root")
    msg = str(info.value)
    assert "dataset 'fashion-mnist' not found" in msg
    assert "/nonexistent/root/FashionMNIST/raw" in msg
    assert str(no_default_data / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--download" in msg


def test_missing_cifar_names_its_folder(no_default_data) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py(.|\n)*--download"):
        D.load_dataset("cifar10")
    assert D.dataset_info("cifar100").num_classes == 100


def test_missing_image_folder_explains_the_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="PATH/train/<class>"):
        D.dataset_info(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        D.dataset_info("svhn")


# -- splits -----------------------------------------------------------------------------------


def test_validation_split_is_stratified_disjoint_and_fixed(fmnist: D.TensorData) -> None:
    y = fmnist.train_y
    train, val = D.split_indices(y, 0.1, seed=0)
    assert len(val) == 6000 and len(train) == 54000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    assert torch.bincount(y[val]).tolist() == [600] * 10
    again_train, again_val = D.split_indices(y, 0.1, seed=0, train_subset=1000)
    assert torch.equal(again_val, val)  # the subset never changes the validation images
    assert torch.equal(again_train, train[:1000])
    counts = torch.bincount(y[again_train], minlength=10)
    assert counts.max() - counts.min() <= 1  # subsets are stratified too
    _, other_val = D.split_indices(y, 0.1, seed=1)
    assert not torch.equal(other_val, val)
    with pytest.raises(ValueError, match="field 'train_subset'.*54000"):
        D.split_indices(y, 0.1, seed=0, train_subset=60000)
    none_train, none_val = D.split_indices(y, 0.0, seed=0)
    assert len(none_val) == 0 and len(none_train) == 60000


# -- augmentation -----------------------------------------------------------------------------


def test_resize_pads_and_crops_centered() -> None:
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    padded = resize_batch(x, 32, "pad")
    assert padded.shape == (2, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], x) and padded[:, :, :2].abs().sum() == 0
    assert torch.equal(resize_batch(padded, 28, "pad"), x)
    assert resize_batch(x, 32, "interpolate").shape == (2, 1, 32, 32)


def test_random_shift_is_a_translation_within_range(fmnist: D.TensorData) -> None:
    x = fmnist.train_x[:16].float()
    gen = torch.Generator().manual_seed(0)
    out = random_shift(x, 3, gen)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    seen = set()
    for i in range(len(x)):  # brute force: each output is one window of the padded input
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28])]
        assert matches, f"image {i} is not a translation of its input"
        seen.add(matches[0])
    assert len(seen) > 1  # offsets differ per image


def test_hflip_probability_extremes() -> None:
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_hflip(x, 1.0, None), x.flip(-1))
    assert torch.equal(random_hflip(x, 0.0, None), x)


def test_tensor_augment_normalizes_repeats_and_randaugments(fmnist: D.TensorData) -> None:
    x = fmnist.train_x[:256]
    aug = TensorAugment(32, "pad", (0.2860,), (0.3530,), repeat_channels=True)
    out = aug(x, train=False)
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, aug(x, train=False))  # evaluation is deterministic
    inner = out[:, :, 2:30, 2:30]  # the original 28x28 pixels: normalized to about 0 mean
    assert inner.mean().item() == pytest.approx(0.0, abs=0.1)
    ra = TensorAugment(32, "pad", (0.2860,), (0.3530,), randaugment="rand-m9-mstd0.5-inc1",
                       random_erasing=0.5, shift=2, hflip=0.5)
    out = ra(x[:8], train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 32, 32) and torch.isfinite(out).all()


# -- trial batches ----------------------------------------------------------------------------


def test_trial_data_batches_are_seeded_per_epoch(fmnist: D.TensorData) -> None:
    cfg = TrainConfig(train_subset=300, val_fraction=0.01, batch_size=128, eval_batch_size=256)
    data = D.TrialData(cfg, torch.device("cpu"))
    assert (data.num_train, data.num_val, data.steps_per_epoch) == (300, 600, 2)  # drop last
    first = [b for b in data.train_batches(epoch=1, seed=0)]
    assert [x.shape for x, _ in first] == [(128, 1, 32, 32)] * 2
    again = list(data.train_batches(epoch=1, seed=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, again, strict=True))
    # The epoch's order is the permutation seeded by the batches stream of the committed runs.
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1 * 7919))
    assert torch.equal(first[0][1], fmnist.train_y[data.train_idx][perm[:128]])
    other = next(iter(data.train_batches(epoch=2, seed=0)))
    assert not torch.equal(other[0], first[0][0])
    val = list(data.eval_batches("val"))
    assert [len(y) for _, y in val] == [256, 256, 88]
    assert sum(len(y) for _, y in data.eval_batches("test")) == 10000
    few = D.TrialData(cfg.replace(test_subset=500), torch.device("cpu"))
    labels = torch.cat([y for _, y in few.eval_batches("test")])
    assert torch.bincount(labels).tolist() == [50] * 10


def _write_image_folder(root: Path, fmnist: D.TensorData, per_class: int) -> None:
    from PIL import Image

    for split, xs, ys in (("train", fmnist.train_x, fmnist.train_y),
                          ("val", fmnist.test_x, fmnist.test_y)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            idx = torch.nonzero(ys == c).flatten()[:per_class]
            for i in idx.tolist():
                Image.fromarray(xs[i, 0].numpy()).save(folder / f"{i}.png")


def test_image_folder_streams_through_timm_transforms(fmnist: D.TensorData, tmp_path) -> None:
    _write_image_folder(tmp_path, fmnist, per_class=8)
    name = f"imagefolder:{tmp_path}"
    info = D.dataset_info(name)
    assert (info.channels, info.num_classes, info.img_size) == (3, 3, None)
    cfg = TrainConfig(dataset=name, img_size=32, val_fraction=0.25, batch_size=4, num_workers=0)
    data = D.TrialData(cfg, torch.device("cpu"))
    assert (data.num_train, data.num_val) == (18, 6)
    x, y = next(iter(data.train_batches(epoch=1, seed=0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert sum(len(y) for _, y in data.eval_batches("test")) == 24
    assert np.isfinite(x.numpy()).all()


def test_randaugment_posterize_at_full_magnitude_keeps_zero_bits(
        fmnist: D.TensorData) -> None:
    """Magnitude 10 of the paper's increasing posterize keeps 0 bits, which Pillow >= 12 refuses;
    it must give a black image, as older Pillow did, not crash the trial."""
    ra = TensorAugment(32, "pad", (0.2860,), (0.3530,), randaugment="rand-m10-n1-inc1",
                       shift=0, hflip=0.0)
    posterize = [op for op in ra.randaugment.ops if op.name == "PosterizeIncreasing"]
    assert posterize, [op.name for op in ra.randaugment.ops]
    ra.randaugment.ops = posterize  # only the posterize op, at magnitude 10, always applied
    posterize[0].prob = 1.0
    out = ra(fmnist.train_x[:4], train=True, generator=torch.Generator().manual_seed(0))
    black = ra(torch.zeros_like(fmnist.train_x[:4]), train=False)
    assert torch.equal(out, black)
