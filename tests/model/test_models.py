"""Every preset builds, runs forward and backward at a small size, and every parameter learns."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import cvt_nas
from cvt_nas.model.presets import get_config

# Small versions of every preset: same layout flags, fewer/narrower blocks so CPU tests stay fast.
SMALL = {"embed_dim": (16, 32, 48), "num_heads": (1, 2, 3), "depth": (1, 2, 2)}


@pytest.mark.parametrize("name", cvt_nas.list_models())
def test_preset_forward_backward_small(name: str) -> None:
    cfg = get_config(name)
    kw = dict(SMALL) if cfg.embed_dim[0] > 32 else {}
    size = 64 if cfg.img_size >= 224 else cfg.img_size
    # drop_path=0: a dropped residual branch would legitimately get no gradient in one step
    model = cvt_nas.create_model(name, img_size=size, num_classes=7, drop_path=0.0, **kw).train()
    x = torch.randn(2, cfg.in_chans, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    # With a cls-token head, the spatial queries of the very last block feed nothing: their
    # projection gets an exactly-zero gradient (as in the official model).
    last = f"stage{cfg.num_stages - 1}.blocks.{model.cfg.depth[-1] - 1}.attn.conv_proj_q."
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if cfg.cls_token[-1] and pname.startswith(last):
            assert p.grad.abs().sum() == 0, pname
        else:
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(
    "overrides",
    [
        {"proj_method": "avg"},
        {"proj_method": "linear", "kv_stride": 1},
        {"proj_method": ("linear", "avg", "dw_bn"), "kv_stride": (1, 2, 2)},
        {"embed_type": "patch", "embed_kernel": (4, 2, 2), "embed_stride": (4, 2, 2),
         "embed_padding": 0, "pos_embed": True},
        {"cls_token": False},
        {"cls_token": True},
        {"kv_stride": (2, (1, 2), 1), "mlp_ratio": ((2,), (4, 2), 3)},
        {"act": "gelu", "attn_scale": "head_dim", "qkv_bias": False},
    ],
)
def test_ablation_axes_build_and_train(overrides: dict) -> None:
    cfg = get_config("cvt_13", img_size=64, num_classes=5, **SMALL).replace(**overrides)
    model = cvt_nas.CvT(cfg)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # the built model agrees with the analytic parameter count
    assert sum(p.numel() for p in model.parameters()) == cvt_nas.analytic_cost(cfg).params


def test_timm_registry() -> None:
    model = timm.create_model("cvt_13", num_classes=10)
    assert isinstance(model, cvt_nas.CvT)
    assert model.head.out_features == 10
    assert set(cvt_nas.list_models()) <= set(timm.list_models("cvt_*"))


@pytest.mark.parametrize("order", ["cvt_nas first", "timm first", "probe first"])
def test_import_is_torch_free_and_timm_sees_presets_either_way(order: str) -> None:
    """``import cvt_nas`` loads no torch; timm imported before or after it (or probed first with
    ``importlib.util.find_spec``, as transformers does) knows the presets."""
    code = (
        "import sys, importlib.util\n"
        + ("import timm\n" if order == "timm first" else "")
        + "import cvt_nas, cvt_nas.space, cvt_nas.results\n"
        + ("" if order == "timm first" else "assert 'torch' not in sys.modules, 'torch imported'\n")
        + ("assert importlib.util.find_spec('timm') is not None\n" if order == "probe first" else "")
        + "import timm\n"
        "m = timm.create_model('cvt_micro', num_classes=3)\n"
        "assert type(m).__name__ == 'CvT' and m.head.out_features == 3\n"
        "assert callable(cvt_nas.profile) and cvt_nas.CvT is type(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_pos_embed_is_resized_for_other_inputs() -> None:
    model = cvt_nas.create_model("cvt_micro", pos_embed=True).eval()
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 10)


def test_eval_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = cvt_nas.create_model("cvt_micro").eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)
