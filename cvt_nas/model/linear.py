"""Token-wise Linear layer whose CPU matrix products run through oneDNN.

PyTorch computes ``nn.Linear`` on the CPU with MKL's sgemm. On AMD CPUs MKL takes its AVX2
path even where the core has AVX-512, which halves the attainable rate: on the Zen 5
development machine MKL reaches about 210 GFLOP/s on 2 threads and oneDNN about 450
(``benchmarks/bench_linear.py``). oneDNN picks its kernels by instruction set, not vendor, and
PyTorch reaches it through ``conv2d`` on channels-last tensors. A Linear layer over tokens is a
1x1 convolution over a ``(1, C, 1, tokens)`` grid, and that grid is a free view of the
``(..., tokens, C)`` activations, so the forward, the input gradient and the weight gradient all
become oneDNN calls without a custom autograd function or any copy.

The oneDNN path is taken for float32 CPU tensors outside autocast, tracing and compilation;
everywhere else (CUDA, autocast, fvcore's JIT trace, ``torch.compile``) the layer is exactly
``nn.Linear``. ``set_linear_backend("aten")`` or ``CVT_NAS_LINEAR=aten`` turns it off.
Parameters, their names and the state dict are those of ``nn.Linear``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("auto", "onednn", "aten")


def _env_backend() -> str:
    name = os.environ.get("CVT_NAS_LINEAR", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"environment variable CVT_NAS_LINEAR={name!r}: expected one of "
                         f"{', '.join(BACKENDS)} (aten turns the oneDNN path off)")
    return name


_backend = _env_backend()


def set_linear_backend(name: str) -> None:
    """``auto``/``onednn``: oneDNN on float32 CPU tensors; ``aten``: always ``F.linear``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"linear backend {name!r}: expected one of {', '.join(BACKENDS)}")
    _backend = name


def linear_backend() -> str:
    return _backend


def _use_onednn(x: torch.Tensor) -> bool:
    return (
        _backend != "aten"
        and not torch.jit.is_tracing()  # first: the checks below would warn under tracing
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and x.numel() > 0
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a 1x1 convolution over a channels-last token row."""
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.contiguous().reshape(1, 1, -1, k)  # (1, 1, M, K): a view when x is contiguous
    grid = rows.permute(0, 3, 1, 2)  # (1, K, 1, M) with channels-last strides
    out = F.conv2d(grid, weight[:, :, None, None], bias)  # (1, N, 1, M), channels-last
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])  # (..., N), a view


class Linear(nn.Linear):
    """``nn.Linear`` over the last dimension, computed by oneDNN on float32 CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles only F.linear
            if x.ndim >= 2 and _use_onednn(x):
                return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
