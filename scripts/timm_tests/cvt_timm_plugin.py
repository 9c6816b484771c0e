"""pytest plugin for running timm's own model tests on the cvt_nas presets (scripts/timm_tests.sh).

Importing cvt_nas and timm registers the presets before timm's ``tests/test_models.py`` builds its
parametrizations from timm's model registry. The few timm tests that
cannot apply to these models are skipped here, each for the reason written next to it.
"""

from __future__ import annotations

import pytest
import timm  # noqa: F401  (now, so the installed timm is the one tested, not the sdist's source)

import cvt_nas
from cvt_nas.model.presets import PRESETS

_NO_NETWORK = (
    "downloads the weights from the Hugging Face hub, and CI has no network; "
    "tests/model/test_timm_contract.py loads both checkpoint layouts from local files through the "
    "same timm path (pretrained_cfg_overlay file, in_chans=1, num_classes=5 and 0, features_only)"
)

# timm test function -> why it cannot apply to a CvT preset
SKIPS: dict[str, str] = {
    "test_model_default_cfgs": (
        "CvT's forward_features gives tokens (B, 1 + H*W, C), cls token first, not a feature map; "
        "timm checks such models (ViT, PiT, MViTv2, CoaT: its NON_STD_FILTERS) with "
        "test_model_default_cfgs_non_std, which test_cvt_timm_extra.py runs on every preset"
    ),
    "test_model_load_pretrained": _NO_NETWORK,
    "test_model_features_pretrained": _NO_NETWORK,
}


def _preset(item: pytest.Item) -> str | None:
    """The cvt_nas preset an item tests, if any (from its ``model_name`` parameter)."""
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("model_name") if callspec is not None else None
    if not isinstance(name, str):
        return None
    arch = name.split(".")[0]
    return arch if arch in PRESETS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = SKIPS.get(getattr(item, "originalname", item.name))
        if reason and _preset(item):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config: pytest.Config) -> str:
    return f"cvt_nas {cvt_nas.__version__} from {cvt_nas.__file__}"
