"""The presets in timm's model registry, so ``timm.create_model("cvt_13")`` works.

Registration happens when timm is imported (an import hook keeps ``import cvt_nas`` free of torch
and timm) and, as a backstop, when `cvt_nas.model.network` is imported. This module imports no
torch; a timm entry imports the network when it builds a model.
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
        return importlib.import_module("cvt_nas.model.network").create_model(name, **kwargs)

    build.__name__ = name
    build.__module__ = "cvt_nas.model.registry"
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
