"""cvt-nas: architecture search and ablation benchmarks for CvT (Wu et al., ICCV 2021)."""

from __future__ import annotations

from cvt_nas.config import CvTConfig
from cvt_nas.cost import Cost, analytic_cost
from cvt_nas.model import CvT
from cvt_nas.presets import create_model, get_config, list_models, register_timm
from cvt_nas.profile import Profile, profile
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

register_timm()
