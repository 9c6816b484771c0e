"""The presets as timm models: ``timm.create_model("cvt_13.ms_in1k", pretrained=True)`` works.

Each preset is registered the way timm registers its own models: an entry function that calls
``build_model_with_cfg`` and pretrained configs made by ``generate_default_cfgs``, named
``<preset>.<tag>``: ``ms_in1k`` for Microsoft's ImageNet-1k weights, ``ms_in22k_ft_in1k`` for
their ImageNet-22k pre-trained, ImageNet-1k fine-tuned ones (the Hugging Face ``microsoft/cvt-*``
repositories, in the Hugging Face layout, which `cvt_nas.model.weights` renames), and
``untrained`` for presets without released weights.

A local checkpoint, official ``.pth`` or Hugging Face file or folder, loads without network:
``timm.create_model("cvt_13.ms_in1k", pretrained=True, pretrained_cfg_overlay={"file": PATH})``.

Registration happens when timm is imported, or at ``import cvt_nas`` if timm already is (an import
hook keeps ``import cvt_nas`` free of torch and timm). This module imports no torch; an entry
imports the network when it builds a model.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

from cvt_nas.model.presets import PRESETS

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The normalization of the data the small presets are made for (cvt_nas.training.data's table;
# tests/model/test_timm_contract.py checks that they agree).
_FASHION_MNIST_MEAN, _FASHION_MNIST_STD = (0.2860,), (0.3530,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

_PAPER = dict(
    paper_name="CvT: Introducing Convolutions to Vision Transformers",
    paper_ids="arXiv:2103.15808",
    origin_url="https://github.com/microsoft/CvT",
)


def _cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    """A pretrained config for preset ``name``: its input size and classes, CvT's stem and head."""
    preset = PRESETS[name]
    size = preset.img_size
    cfg = dict(
        input_size=(preset.in_chans, size, size),
        num_classes=preset.num_classes,
        pool_size=None,  # forward_features gives tokens, not a map
        first_conv="stage0.patch_embed.proj",
        classifier="head",
        interpolation="bicubic",
        # Hugging Face's CvT preprocessing: resize to size / 0.875 and center-crop below 384 px,
        # a plain resize at 384 (the official test transform without CENTER_CROP)
        crop_pct=0.875 if size < 384 else 1.0,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        **_PAPER,
    )
    return {**cfg, **kwargs}


def _microsoft(name: str, hub_id: str, note: str) -> dict[str, Any]:
    return _cfg(name, hf_hub_id=hub_id, license="apache-2.0", description=note)


def _untrained(name: str, **kwargs: Any) -> dict[str, Any]:
    return _cfg(name, license="mit", description="no released weights", **kwargs)


_IN1K = "trained on ImageNet-1k by the CvT authors"
_IN22K = "pre-trained on ImageNet-22k, fine-tuned on ImageNet-1k by the CvT authors"

# The first tag of a preset is its default (timm's convention: the best weights first).
PRETRAINED_CFGS: dict[str, dict[str, Any]] = {
    "cvt_13.ms_in1k": _microsoft("cvt_13", "microsoft/cvt-13", _IN1K),
    "cvt_13_384.ms_in22k_ft_in1k": _microsoft("cvt_13_384", "microsoft/cvt-13-384-22k", _IN22K),
    "cvt_13_384.ms_in1k": _microsoft("cvt_13_384", "microsoft/cvt-13-384", _IN1K),
    "cvt_21.ms_in1k": _microsoft("cvt_21", "microsoft/cvt-21", _IN1K),
    "cvt_21_384.ms_in22k_ft_in1k": _microsoft("cvt_21_384", "microsoft/cvt-21-384-22k", _IN22K),
    "cvt_21_384.ms_in1k": _microsoft("cvt_21_384", "microsoft/cvt-21-384", _IN1K),
    "cvt_w24.untrained": _untrained("cvt_w24"),
    "cvt_w24_384.ms_in22k_ft_in1k": _microsoft("cvt_w24_384", "microsoft/cvt-w24-384-22k", _IN22K),
    "cvt_13_32px.untrained": _untrained("cvt_13_32px", mean=_CIFAR10_MEAN, std=_CIFAR10_STD,
                                        crop_pct=1.0),
    "cvt_micro.untrained": _untrained("cvt_micro", mean=_FASHION_MNIST_MEAN,
                                      std=_FASHION_MNIST_STD, crop_pct=1.0),
    "cvt_tiny.untrained": _untrained("cvt_tiny", mean=_FASHION_MNIST_MEAN,
                                     std=_FASHION_MNIST_STD, crop_pct=1.0),
}

# timm's register_model reads the entries' pretrained configs from their module's `default_cfgs`
# (set by `register_timm`, which has timm loaded).
default_cfgs: dict[str, Any] = {}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """Build preset ``variant`` through timm's ``build_model_with_cfg``."""
    from timm.models import build_model_with_cfg

    from cvt_nas.model import network, weights

    preset = PRESETS[variant]
    feature_cls = kwargs.pop("feature_cls", "getter")
    if kwargs.get("features_only") and feature_cls not in ("getter", network.CvTFeatures):
        raise ValueError(
            f"{variant}: feature_cls={feature_cls!r} is not supported; CvT gives its stage maps "
            "through forward_intermediates, which feature_cls='getter' (the default) uses"
        )
    overlay = kwargs.get("pretrained_cfg_overlay")
    if pretrained and overlay and overlay.get("file"):
        # a Hugging Face model folder names its weight file; a missing file is one clear error
        file = weights.resolve_checkpoint(overlay["file"])
        kwargs["pretrained_cfg_overlay"] = {**overlay, "file": str(file)}
    stages = len(kwargs.get("embed_dim") or preset.embed_dim)
    return build_model_with_cfg(
        network.build_for_timm,
        variant,
        pretrained,
        model_cfg=preset,
        pretrained_filter_fn=weights.timm_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(stages)), feature_cls=network.CvTFeatures),
        **kwargs,
    )


def _timm_entry(name: str) -> Any:
    def entry(pretrained: bool = False, **kwargs: Any) -> Any:
        return _create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"CvT preset {name!r} (cvt_nas.model.presets)."
    return entry


def register_timm() -> None:
    """Register every preset and its pretrained configs in timm's model registry (idempotent)."""
    import timm.models
    from timm.models import generate_default_cfgs, register_model

    if not default_cfgs:
        cfgs: dict[str, Any] = dict(PRETRAINED_CFGS)
        default_cfgs.update(generate_default_cfgs(cfgs))
    have = set(timm.models.list_models())
    module = sys.modules[__name__]
    for name in PRESETS:
        if name not in have:
            # a module attribute, as timm's own entries are (register_model lists it in __all__)
            setattr(module, name, register_model(_timm_entry(name)))


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

