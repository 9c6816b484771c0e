"""The oneDNN Linear path computes what nn.Linear computes: outputs and all three gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cvt_nas
from cvt_nas.model import linear
from cvt_nas.model.linear import Linear, onednn_linear, set_linear_backend

needs_mkldnn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")


@pytest.fixture(autouse=True)
def _restore_backend():
    before = linear.linear_backend()
    yield
    set_linear_backend(before)


def _inputs(shape: tuple[int, ...], contiguous: bool) -> torch.Tensor:
    if contiguous:
        return torch.randn(*shape, requires_grad=True)
    # a transposed view: reshape inside the layer has to copy, and the result must not change
    base = torch.randn(*shape[:-2], shape[-1], shape[-2])
    return base.transpose(-1, -2).requires_grad_()


@needs_mkldnn
@pytest.mark.parametrize("shape", [(5, 16), (2, 37, 16), (2, 3, 9, 16), (1, 1, 16)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_onednn_linear_matches_f_linear(shape: tuple[int, ...], bias: bool, contiguous: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 16, requires_grad=True)
    b = torch.randn(24, requires_grad=True) if bias else None
    x = _inputs(shape, contiguous)
    g = torch.randn(*shape[:-1], 24)

    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, [x, w] + ([b] if bias else []), g)
    out = onednn_linear(x, w, b)
    grads = torch.autograd.grad(out, [x, w] + ([b] if bias else []), g)

    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_mkldnn
def test_model_logits_and_gradients_equal_across_backends() -> None:
    torch.manual_seed(0)
    model = cvt_nas.create_model("cvt_micro", num_classes=10, drop_path=0.0).train()
    x = torch.randn(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    results = {}
    for backend in ("aten", "onednn"):
        set_linear_backend(backend)
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        results[backend] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    (out_a, grads_a), (out_o, grads_o) = results["aten"], results["onednn"]
    torch.testing.assert_close(out_o, out_a, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max() for g in grads_a)
    for ga, go in zip(grads_a, grads_o, strict=True):
        assert (ga - go).abs().max() <= 1e-4 * scale


def test_backend_choice_is_validated_and_aten_bypasses_onednn(monkeypatch) -> None:
    with pytest.raises(ValueError, match="auto, onednn, aten"):
        set_linear_backend("mkl")
    calls = []
    monkeypatch.setattr(linear, "onednn_linear", lambda *a: calls.append(a) or F.linear(*a))
    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    set_linear_backend("aten")
    layer(x)
    assert calls == []
    set_linear_backend("auto")
    layer(x)
    assert len(calls) == (1 if torch.backends.mkldnn.is_available() else 0)
    # tracing (fvcore) and non-float32 inputs always take F.linear
    calls.clear()
    torch.jit.trace(layer, x, check_trace=False)
    layer.double()(x.double())
    assert calls == []


def test_state_dict_is_nn_linear() -> None:
    layer = Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_empty_batches_and_a_bad_environment_value(monkeypatch) -> None:
    layer = Linear(16, 8)
    assert layer(torch.randn(0, 16)).shape == (0, 8)
    assert layer(torch.randn(2, 0, 16)).shape == (2, 0, 8)
    monkeypatch.setenv("CVT_NAS_LINEAR", "off")
    with pytest.raises(ValueError, match="CVT_NAS_LINEAR='off': expected one of auto, onednn, aten"):
        linear._env_backend()
    monkeypatch.setenv("CVT_NAS_LINEAR", "ATEN")
    assert linear._env_backend() == "aten"
