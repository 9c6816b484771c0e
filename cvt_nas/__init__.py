"""cvt-nas: architecture search and ablation benchmarks for CvT (Wu et al., ICCV 2021).

``import cvt_nas`` loads neither torch nor timm: the model, fvcore profiling and weight loading
are imported on first use, and the presets are registered with timm when timm is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost
from cvt_nas.model.presets import get_config, list_models
from cvt_nas.model.profiling import Profile, profile
from cvt_nas.model.registry import register_timm_on_import

if TYPE_CHECKING:
    from cvt_nas.model.network import CvT, create_model
    from cvt_nas.model.weights import LoadReport, load_pretrained
    from cvt_nas.training.trainer import TrialResult, run_trial

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
    "run_trial",
    "TrialResult",
]

_LAZY = {
    "CvT": "cvt_nas.model.network",
    "create_model": "cvt_nas.model.network",
    "LoadReport": "cvt_nas.model.weights",
    "load_pretrained": "cvt_nas.model.weights",
    "TrialResult": "cvt_nas.training.trainer",
    "run_trial": "cvt_nas.training.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvt_nas' has no attribute {name!r}")


register_timm_on_import()
