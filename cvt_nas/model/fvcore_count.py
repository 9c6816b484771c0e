"""fvcore counting of a built model, with the op handles fvcore lacks.

fvcore counts ``aten::scaled_dot_product_attention`` as 0; we add a handle that counts
``batch * heads * Nq * Nkv * (d + d_v)`` MACs (QK^T and AV). Norm handles are switched off so the
count covers exactly what `cvt_nas.model.cost.analytic_cost` covers (convolutions, Linear layers and the
attention matmuls); see that module's docstring.
"""

from __future__ import annotations

import warnings
from math import prod
from typing import Any

import torch
from torch import nn

from cvt_nas.model.cost import Cost


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``scaled_dot_product_attention``: Q K^T plus attn V."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    nq, d = q[-2], q[-1]
    nkv, dv = k[-2], v[-1]
    return batch * nq * nkv * (d + dv)


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


_IGNORED_NORMS = ("aten::batch_norm", "aten::layer_norm", "aten::group_norm", "aten::instance_norm")


def fvcore_cost(model: nn.Module, img_size: int, in_chans: int | None = None) -> Cost:
    """Params and MACs of ``model`` on one image, counted by fvcore's FlopCountAnalysis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import warns about torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    cfg = getattr(model, "cfg", None)
    chans = in_chans if in_chans is not None else (cfg.in_chans if cfg is not None else 3)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, chans, img_size, img_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
            for op in _IGNORED_NORMS:
                analysis.set_op_handle(op, _zero)  # set_op_handle(op, None) keeps the default
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            macs = int(analysis.total())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=params, macs=macs, img_size=img_size)
