"""Batch augmentation of uint8 image tensors, on whatever device the batch lives on.

For 28-32 px data per-image Python (PIL transforms in a DataLoader) costs more than the model, so
the reduced recipe's augmentations (random shift, horizontal flip) run on the whole batch as
tensor ops. timm's RandomErasing also works on batches; timm's RandAugment is PIL-based and is
applied per image when asked for (slower, on the CPU).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class TensorAugment:
    """uint8 (B, C, H, W) -> normalized float (B, C', S, S), augmented when ``train`` is true.

    Steps: RandAugment (optional, per image) -> float -> resize to ``img_size`` (zero-pad /
    center-crop, or bilinear) -> random shift by up to ``shift`` px (zero fill) -> horizontal flip
    -> normalize -> repeat 1 channel to 3 (optional) -> random erasing (optional).
    """

    def __init__(
        self,
        img_size: int,
        resize: str,
        mean: Sequence[float],
        std: Sequence[float],
        repeat_channels: bool = False,
        shift: int = 0,
        hflip: float = 0.0,
        randaugment: str | None = None,
        random_erasing: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        self.img_size = img_size
        self.resize = resize
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255.0
        # per-device copies, made once: a blocking host-to-device copy per batch would make
        # every CUDA step wait for the GPU
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.repeat_channels = repeat_channels
        self.shift = shift
        self.hflip = hflip
        self.channels_last = channels_last
        self.randaugment = None
        if randaugment:
            from timm.data.auto_augment import rand_augment_transform

            self.randaugment = _keep_zero_bit_posterize(rand_augment_transform(
                randaugment, {"translate_const": int(img_size * 0.45), "img_mean": (128, 128, 128)}
            ))
        self.erasing = None
        if random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(random_erasing, mode="pixel", device="cpu")

    def __call__(
        self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if train and self.randaugment is not None:
            x = _apply_pil(x, self.randaugment)
        out = x.float()  # (B, C, H, W)
        out = resize_batch(out, self.img_size, self.resize)  # (B, C, S, S)
        if train and self.shift > 0:
            out = random_shift(out, self.shift, generator)
        if train and self.hflip > 0:
            out = random_hflip(out, self.hflip, generator)
        if out.device not in self._stats:
            self._stats[out.device] = (self.mean.to(out.device), self.std.to(out.device))
        mean, std = self._stats[out.device]
        out = (out - mean) / std
        if self.repeat_channels:
            out = out.expand(-1, 3, -1, -1)  # (B, 3, S, S)
        if train and self.erasing is not None:
            self.erasing.device = out.device
            out = self.erasing(out.contiguous())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)


def resize_batch(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): centered zero-pad/crop (``pad``) or bilinear."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "interpolate":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < min(h, w))
    top, left = (size - h) // 2, (size - w) // 2
    # F.pad with negative amounts crops, so one call handles both directions.
    return F.pad(x, (left, size - w - left, top, size - h - top))


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """Translate each image by its own random offset in [-shift, shift] px, filling with zeros."""
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, H+2s, W+2s)
    off = torch.randint(0, 2 * shift + 1, (2, b), device=x.device, generator=generator)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W)


def random_hflip(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _keep_zero_bit_posterize(transform: Any) -> Any:
    """timm's RandAugment with increasing posterize (``inc1``, the paper recipe's) keeps 0 bits
    at magnitude 10, which Pillow >= 12 refuses (``ValueError: bits must be between or equal to
    1 and 8``): a trial would crash at random. Keeping 0 bits is a black image, what older Pillow
    returned; the transform's ops get that posterize instead of timm's."""
    from timm.data import auto_augment

    def posterize(img: Any, bits_to_keep: int, **kw: Any) -> Any:
        if bits_to_keep < 1:
            from PIL import Image

            return Image.new(img.mode, img.size)
        return auto_augment.posterize(img, bits_to_keep, **kw)

    for op in getattr(transform, "ops", ()):
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize
    return transform


def _apply_pil(x: torch.Tensor, transform: object) -> torch.Tensor:
    """Run a PIL transform (timm RandAugment) on each uint8 image of a batch."""
    from PIL import Image

    device, channels = x.device, x.shape[1]
    out = []
    for img in x.cpu().permute(0, 2, 3, 1).numpy():  # (H, W, C) uint8
        pil = Image.fromarray(img[:, :, 0] if channels == 1 else img).convert("RGB")
        res = np.asarray(transform(pil))  # type: ignore[operator]
        out.append(res[:, :, :1] if channels == 1 else res)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(device)


def seed_all(seed: int) -> None:
    """Seed torch (all devices), numpy and Python's ``random`` (timm's Mixup and RandAugment)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

