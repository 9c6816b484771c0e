"""Analytic params and MACs of a CvT, from the config alone (no torch, no model built).

What is counted (the same as `cvt_nas.model.fvcore_count.fvcore_cost`, so the two can be compared):
multiply-accumulates of every convolution (token embeddings, depthwise projections), every
Linear (q/k/v/out projections, MLP, head) and the two attention matrix products (QK^T and AV).
Not counted: biases, norms, activations, softmax, pooling, residual adds, position-embedding adds.
One multiply-add is one MAC (the paper's "FLOPs").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cvt_nas.model.config import CvTConfig, conv_out


@dataclass(frozen=True)
class Cost:
    """Exact parameter count and MACs for one image at ``img_size``."""

    params: int
    macs: int
    img_size: int
    breakdown: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def _proj_grid(method: str, h: int, w: int, kernel: int, stride: int, is_q: bool) -> tuple[int, int]:
    if method == "dw_bn":
        return conv_out(h, kernel, stride, kernel // 2), conv_out(w, kernel, stride, kernel // 2)
    if method == "avg" and not is_q:
        return (
            conv_out(h, kernel, stride, kernel // 2, ceil_mode=True),
            conv_out(w, kernel, stride, kernel // 2, ceil_mode=True),
        )
    return h, w


def analytic_cost(cfg: CvTConfig, img_size: int | None = None) -> Cost:
    """Params and MACs of ``CvT(cfg)`` on one ``img_size`` x ``img_size`` image."""
    size = cfg.img_size if img_size is None else img_size
    params = macs = 0
    bd = {"embed": 0, "conv_proj": 0, "qkv_proj": 0, "attn_matmul": 0, "out_proj": 0, "mlp": 0,
          "head": 0}
    h = w = size
    cin = cfg.in_chans
    bias = int(cfg.qkv_bias)
    for s in range(cfg.num_stages):
        c, k = cfg.embed_dim[s], cfg.embed_kernel[s]
        h = conv_out(h, k, cfg.embed_stride[s], cfg.embed_padding[s])
        w = conv_out(w, k, cfg.embed_stride[s], cfg.embed_padding[s])
        if h < 1 or w < 1:
            raise ValueError(f"stage {s + 1}: no tokens left at img_size {size}")
        n = h * w
        params += c * cin * k * k + c + 2 * c  # conv weight, bias, LayerNorm
        bd["embed"] += n * c * cin * k * k
        cls = int(cfg.cls_token[s])
        params += cls * c + (n * c if cfg.pos_embed[s] else 0)
        method, kq = cfg.proj_method[s], cfg.qkv_kernel[s]
        for j in range(cfg.depth[s]):
            kv_stride = cfg.block_value("kv_stride", s, j)
            hidden = int(c * cfg.block_value("mlp_ratio", s, j))
            qh, qw = _proj_grid(method, h, w, kq, cfg.q_stride[s], is_q=True)
            kh, kw = _proj_grid(method, h, w, kq, kv_stride, is_q=False)
            nq, nkv = qh * qw + cls, kh * kw + cls
            if method == "dw_bn":
                params += 3 * (c * kq * kq + 2 * c)  # depthwise conv + BatchNorm affine
                bd["conv_proj"] += (qh * qw + 2 * kh * kw) * c * kq * kq
            params += 3 * (c * c + bias * c) + c * c + c  # proj_q/k/v, proj
            bd["qkv_proj"] += (nq + 2 * nkv) * c * c
            bd["attn_matmul"] += 2 * nq * nkv * c
            bd["out_proj"] += nq * c * c
            params += 4 * c  # norm1, norm2
            params += c * hidden + hidden + hidden * c + c
            bd["mlp"] += 2 * (n + cls) * c * hidden
        cin = c
    c = cfg.embed_dim[-1]
    params += 2 * c + c * cfg.num_classes + cfg.num_classes
    bd["head"] += c * cfg.num_classes
    macs = sum(bd.values())
    return Cost(params=params, macs=macs, img_size=size, breakdown=bd)
