"""timm's own model checks that its test file keeps to timm's modules, run on every cvt_nas preset.

timm's ``tests/test_models.py`` chooses the models of some tests by timm's module names
(``FEAT_INTER_FILTERS``, ``NON_STD_FILTERS``, fixed lists), so it never picks the presets for
them. This file calls those test functions, unchanged, on every preset. It runs from
scripts/timm_tests.sh, which puts timm's source distribution at ``$CVT_TIMM_SRC``.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

from cvt_nas.model.presets import PRESETS
from cvt_nas.model.registry import PRETRAINED_CFGS

if "CVT_TIMM_SRC" not in os.environ:
    pytest.skip("run through scripts/timm_tests.sh, which sets CVT_TIMM_SRC to timm's sources",
                allow_module_level=True)
sys.path.insert(0, os.environ["CVT_TIMM_SRC"])
timm_tests = importlib.import_module("tests.test_models")

PRESET_NAMES = sorted(PRESETS)
TAGGED_NAMES = sorted(PRETRAINED_CFGS)  # timm's cfg tests take the names with their tags


@pytest.mark.parametrize("model_name", TAGGED_NAMES)
def test_model_default_cfgs_non_std(model_name: str) -> None:
    """Config metadata, forward_features/forward_head widths, reset_classifier, factory device
    and dtype, on the meta device (timm skips inputs above 320 px)."""
    timm_tests.test_model_default_cfgs_non_std(model_name, 1, "meta")


@pytest.mark.parametrize("model_name", PRESET_NAMES)
def test_model_forward_intermediates(model_name: str) -> None:
    timm_tests.test_model_forward_intermediates(model_name, 1)


@pytest.mark.parametrize("model_name", PRESET_NAMES)
def test_model_forward_intermediates_features(model_name: str) -> None:
    timm_tests.test_model_forward_intermediates_features(model_name, 1)


@pytest.mark.parametrize("model_name", PRESET_NAMES)
def test_prune_intermediate_layers_params_used(model_name: str) -> None:
    timm_tests.test_prune_intermediate_layers_params_used(model_name)


@pytest.mark.parametrize("model_name", PRESET_NAMES)
def test_prune_intermediate_layers_contract(model_name: str) -> None:
    timm_tests.test_prune_intermediate_layers_contract(model_name)


@pytest.mark.parametrize("model_name", PRESET_NAMES)
def test_features_only_grad_checkpointing_backward(model_name: str) -> None:
    if PRESETS[model_name].in_chans != 3:
        pytest.skip("timm's test feeds 3-channel images; this preset takes "
                    f"{PRESETS[model_name].in_chans} (tests/model/test_timm_contract.py covers it)")
    timm_tests.test_features_only_grad_checkpointing_backward(model_name)
