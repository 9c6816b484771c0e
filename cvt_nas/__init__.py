"""cvt-nas: architecture search and ablation benchmarks for CvT (Wu et al., ICCV 2021).

``import cvt_nas`` loads neither torch nor timm: the model, fvcore profiling and weight loading
are imported on first use, and the presets are registered with timm when timm is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvt_nas.config import CvTConfig
from cvt_nas.cost import Cost, analytic_cost
from cvt_nas.presets import create_model, get_config, list_models, register_timm_on_import
from cvt_nas.profile import Profile, profile

if TYPE_CHECKING:
    from cvt_nas.model import CvT
    from cvt_nas.weights import LoadReport, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "Cost",
    "LoadReport",
    "CvT",
    "CvTConfig",
    "Profile",
    "analytic_cost",
    "create_model",
    "get_config",
    "list_models",
    "load_pretrained",
    "profile",
]

_LAZY = {"CvT": "cvt_nas.model", "LoadReport": "cvt_nas.weights", "load_pretrained": "cvt_nas.weights"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvt_nas' has no attribute {name!r}")


register_timm_on_import()
