"""Named CvT configurations: the paper's models and small ones for 28-32 px data.

Presets are plain `CvTConfig` instances (torch-free); `cvt_nas.model.network.create_model`
builds one and `cvt_nas.model.registry` registers each with timm.
"""

from __future__ import annotations

from typing import Any

from cvt_nas.model.config import CvTConfig

CVT_13 = CvTConfig()
CVT_21 = CvTConfig(depth=(1, 4, 16))
CVT_W24 = CvTConfig(
    embed_dim=(192, 768, 1024),
    num_heads=(3, 12, 16),
    depth=(2, 2, 20),
    drop_path=(0.0, 0.0, 0.3),
)

# For 28-32 px data (Fashion-MNIST, CIFAR): a 3x3 stem, widths and depths well below CvT-13.
# Stride-2 stem: 32 -> 16 -> 8 -> 4 tokens a side.
CVT_MICRO = CvTConfig(
    img_size=32,
    in_chans=1,
    num_classes=10,
    embed_kernel=(3, 3, 3),
    embed_stride=(2, 2, 2),
    embed_padding=(1, 1, 1),
    embed_dim=(32, 64, 128),
    num_heads=(1, 2, 4),
    depth=(1, 2, 3),
    drop_path=(0.0, 0.0, 0.05),
)
# Stride-1 stem: 32 -> 32 -> 16 -> 8 tokens a side (more compute, more resolution).
CVT_TINY = CVT_MICRO.replace(embed_stride=(1, 2, 2), embed_dim=(32, 64, 128), depth=(1, 1, 2))
# CvT-13's layout (1/2/10 blocks, 64/192/384 wide) on a stride-2 3x3 stem for 32 px data.
CVT_13_SMALL_IMG = CVT_13.replace(
    img_size=32, num_classes=10, embed_kernel=(3, 3, 3), embed_stride=(2, 2, 2),
    embed_padding=(1, 1, 1),
)

PRESETS: dict[str, CvTConfig] = {
    "cvt_13": CVT_13,
    "cvt_13_384": CVT_13.replace(img_size=384),
    "cvt_21": CVT_21,
    "cvt_21_384": CVT_21.replace(img_size=384),
    "cvt_w24": CVT_W24,
    "cvt_w24_384": CVT_W24.replace(img_size=384),
    "cvt_13_32px": CVT_13_SMALL_IMG,
    "cvt_micro": CVT_MICRO,
    "cvt_tiny": CVT_TINY,
}


def list_models() -> list[str]:
    """Names of all presets."""
    return list(PRESETS)


def get_config(name: str, /, **overrides: Any) -> CvTConfig:
    """The preset's config with overrides applied (a scalar sets a per-stage field everywhere).

    ``name`` is positional-only, so every keyword is a `CvTConfig` field override.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
