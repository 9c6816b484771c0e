"""Named CvT configurations: the paper's models and small ones for 28-32 px data.

Presets are plain `CvTConfig` instances; `create_model(name, **overrides)` builds one with
overrides, and each preset is registered with timm so ``timm.create_model("cvt_13")`` works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

from cvt_nas.config import CvTConfig

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


def get_config(name: str, **overrides: Any) -> CvTConfig:
    """The preset's config with overrides applied (a scalar sets a per-stage field everywhere)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def create_model(name: str | CvTConfig, **overrides: Any) -> Any:
    """Build a `CvT` from a preset name (or a config) with overrides."""
    from cvt_nas.model import CvT

    cfg = name.replace(**overrides) if isinstance(name, CvTConfig) else get_config(name, **overrides)
    return CvT(cfg)


_TIMM_KWARGS_DROPPED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def _timm_entry(name: str) -> Any:
    def build(pretrained: bool = False, **kwargs: Any) -> Any:
        if pretrained:
            raise ValueError(
                "cvt_nas has no weight hub; build the model, then call "
                "cvt_nas.load_pretrained(model, path)"
            )
        for key in _TIMM_KWARGS_DROPPED:
            kwargs.pop(key, None)
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__module__ = "cvt_nas.presets"
    return build


def register_timm() -> None:
    """Register every preset in timm's model registry (idempotent)."""
    import timm.models
    from timm.models import register_model

    have = set(timm.models.list_models())
    for name in PRESETS:
        if name not in have:
            register_model(_timm_entry(name))


class _RegisterAfterTimmLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: when ``timm`` is first imported, finish that import, then `register_timm()`.

    This keeps ``import cvt_nas`` free of torch and timm (about 3 s) while
    ``import cvt_nas; import timm; timm.create_model("cvt_13")`` still finds our presets.
    """

    def __init__(self) -> None:
        self._spec: importlib.machinery.ModuleSpec | None = None
        self._finding = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        # Probes (importlib.util.find_spec("timm"), as transformers does) get our wrapping spec
        # too; the hook stays installed until timm is actually executed.
        if fullname != "timm" or self._finding:
            return None
        self._finding = True  # the lookup below walks the meta path again, ourselves included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return spec
        self._spec = spec
        return importlib.util.spec_from_loader(fullname, self, origin=spec.origin,
                                               is_package=spec.submodule_search_locations is not None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self._spec is not None and self._spec.loader is not None
        return self._spec.loader.create_module(self._spec)

    def exec_module(self, module: ModuleType) -> None:
        spec = self._spec
        assert spec is not None and spec.loader is not None
        # the module must look as if the real loader had made it (timm's relative imports need
        # __path__ and __spec__ of the real package)
        module.__spec__ = spec
        module.__loader__ = spec.loader
        module.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            module.__path__ = list(spec.submodule_search_locations)
        spec.loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        register_timm()


def register_timm_on_import() -> None:
    """Register the presets with timm now if it is loaded, else as soon as it is imported."""
    if "timm" in sys.modules:
        register_timm()
    elif not any(isinstance(f, _RegisterAfterTimmLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimmLoads())
