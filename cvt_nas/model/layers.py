"""CvT building blocks: token embedding, convolutional projection, attention, MLP.

Module and parameter names mirror the official microsoft/CvT code (``conv_proj_q.conv``,
``proj_q``, ``mlp.fc1`` ...) so its checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module
from torch import nn

from cvt_nas.model.linear import Linear

# torch.fx traces through our modules, except Linear: its oneDNN dispatch is Python control flow
# on the input tensor, so an fx graph calls it whole (timm's feature extraction and fx tests).
register_notrace_module(Linear)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of the official CvT code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class ConvEmbed(nn.Module):
    """Token embedding: Conv2d (overlapping, or non-overlapping when kernel == stride) + LayerNorm."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x.contiguous(memory_format=torch.channels_last))  # (B, C, H, W), NHWC
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C), a view: no copy for NHWC memory
        return self.norm(x), h, w


class ConvProj(nn.Module):
    """Depthwise Conv2d (no bias) + BatchNorm2d: the paper's convolutional projection."""

    def __init__(self, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size=kernel, stride=stride, padding=kernel // 2, groups=dim, bias=False
        )
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))  # (B, C, h, w), NHWC memory
        return x.flatten(2).transpose(1, 2)  # (B, h*w, C), a view


class AvgProj(nn.Module):
    """AvgPool2d projection (the official ``avg`` method for k and v)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel, stride=stride, padding=kernel // 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(2).transpose(1, 2)  # (B, h*w, C)


def make_proj(method: str, dim: int, kernel: int, stride: int, is_q: bool) -> nn.Module | None:
    """The spatial projection of q, k or v; None means position-wise (identity before the Linear)."""
    if method == "dw_bn":
        return ConvProj(dim, kernel, stride)
    if method == "avg" and not is_q:
        return AvgProj(kernel, stride)
    return None


class Attention(nn.Module):
    """Multi-head attention with convolutional projections of q, k and v.

    The cls token (if any) is split off before the spatial projection and put back in front of
    q, k and v, as in the official code. Attention runs through ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        method: str,
        kernel: int,
        q_stride: int,
        kv_stride: int,
        qkv_bias: bool,
        with_cls_token: bool,
        scale_by: str,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.with_cls_token = with_cls_token
        self.scale = (dim if scale_by == "dim" else dim // num_heads) ** -0.5
        self.conv_proj_q = make_proj(method, dim, kernel, q_stride, is_q=True)
        self.conv_proj_k = make_proj(method, dim, kernel, kv_stride, is_q=False)
        self.conv_proj_v = make_proj(method, dim, kernel, kv_stride, is_q=False)
        self.proj_q = Linear(dim, dim, bias=qkv_bias)
        self.proj_k = Linear(dim, dim, bias=qkv_bias)
        self.proj_v = Linear(dim, dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def _project(
        self, x: torch.Tensor, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.conv_proj_q is None and self.conv_proj_k is None:
            return x, x, x
        cls = x[:, :1]  # (B, 1, C): the cls token, if any
        if self.with_cls_token:
            x = x[:, 1:]  # (B, H*W, C)
        b, n, c = x.shape
        # (B, C, H, W) in NHWC memory: a view of the tokens, except after the cls split, where one
        # copy makes it NHWC-contiguous (else the convolutions fall back to slow NCHW kernels).
        grid = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        q = self.conv_proj_q(grid) if self.conv_proj_q is not None else x  # (B, Nq, C)
        k = self.conv_proj_k(grid) if self.conv_proj_k is not None else x  # (B, Nkv, C)
        v = self.conv_proj_v(grid) if self.conv_proj_v is not None else x  # (B, Nkv, C)
        if self.with_cls_token:
            q, k, v = torch.cat((cls, q), dim=1), torch.cat((cls, k), dim=1), torch.cat((cls, v), dim=1)
        return q, k, v

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        q, k, v = self._project(x, h, w)
        b, nh = x.shape[0], self.num_heads
        q = self.proj_q(q).unflatten(-1, (nh, -1)).transpose(1, 2)  # (B, nh, Nq, hd)
        k = self.proj_k(k).unflatten(-1, (nh, -1)).transpose(1, 2)  # (B, nh, Nkv, hd)
        v = self.proj_v(v).unflatten(-1, (nh, -1)).transpose(1, 2)  # (B, nh, Nkv, hd)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nh, Nq, hd)
        out = out.transpose(1, 2).reshape(b, -1, x.shape[-1])  # (B, Nq, C)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, drop: float) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``."""

    def __init__(self, dim: int, attn: Attention, mlp_hidden: int, act: str, drop: float,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden, act, drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))  # (B, N, C)
        return x + self.drop_path(self.mlp(self.norm2(x)))  # (B, N, C)
