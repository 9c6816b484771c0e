"""`CvT(cfg)`: the Convolutional vision Transformer, built from a `CvTConfig`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.layers import Attention, Block, ConvEmbed
from cvt_nas.model.linear import Linear
from cvt_nas.model.presets import get_config
from cvt_nas.model.registry import register_timm


class Stage(nn.Module):
    """Token embedding, optional position embedding and cls token, then ``depth`` blocks."""

    def __init__(self, cfg: CvTConfig, s: int, in_chans: int, grid: tuple[int, int]) -> None:
        super().__init__()
        dim = cfg.embed_dim[s]
        self.patch_embed = ConvEmbed(
            in_chans, dim, cfg.embed_kernel[s], cfg.embed_stride[s], cfg.embed_padding[s]
        )
        self.grid = grid
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim)) if cfg.pos_embed[s] else None
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.cls_token[s] else None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = cfg.block_drop_path(s)
        self.blocks = nn.ModuleList()
        for j in range(cfg.depth[s]):
            attn = Attention(
                dim,
                cfg.num_heads[s],
                cfg.proj_method[s],
                cfg.qkv_kernel[s],
                cfg.q_stride[s],
                cfg.block_value("kv_stride", s, j),
                cfg.qkv_bias,
                cfg.cls_token[s],
                cfg.attn_scale,
            )
            hidden = int(dim * cfg.block_value("mlp_ratio", s, j))
            self.blocks.append(Block(dim, attn, hidden, cfg.act, cfg.drop_rate, rates[j]))

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        assert self.pos_embed is not None
        if (h, w) == self.grid:
            return self.pos_embed
        gh, gw = self.grid
        grid = self.pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, h, w = self.patch_embed(x)  # (B, H*W, C)
        if self.pos_embed is not None:
            x = x + self._pos_embed(h, w)
        cls = None
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, 1+H*W, C)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, h, w)
        if self.cls_token is not None:
            cls, x = x[:, :1], x[:, 1:]  # (B, 1, C), (B, H*W, C)
        x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)  # (B, C, H, W), NHWC memory
        return x, cls


class CvT(nn.Module):
    """CvT classifier. Parameter names follow the official code (``stage0.blocks.0.attn...``)."""

    def __init__(self, cfg: CvTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        in_chans = cfg.in_chans
        for s, grid in enumerate(cfg.grid_sizes()):
            self.add_module(f"stage{s}", Stage(cfg, s, in_chans, grid))
            in_chans = cfg.embed_dim[s]
        self.num_stages = cfg.num_stages
        self.norm = nn.LayerNorm(cfg.embed_dim[-1])
        self.head = Linear(cfg.embed_dim[-1], cfg.num_classes)
        self.apply(_init_weights)
        for s in range(self.num_stages):
            stage = self.stage(s)
            for p in (stage.pos_embed, stage.cls_token):
                if p is not None:
                    nn.init.trunc_normal_(p, std=0.02)

    def stage(self, s: int) -> Stage:
        module = getattr(self, f"stage{s}")
        assert isinstance(module, Stage)
        return module

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        names = set()
        for name, _ in self.named_parameters():
            if name.endswith(("cls_token", "pos_embed")):
                names.add(name)
        return names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        cls = None
        for s in range(self.num_stages):
            x, cls = self.stage(s)(x)  # (B, C_s, H_s, W_s)
        if self.cfg.cls_token[-1]:
            assert cls is not None
            return self.norm(cls).squeeze(1)  # (B, C)
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        return x.mean(dim=1)  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_model(name: str | CvTConfig, **overrides: Any) -> Any:
    """Build a `CvT` from a preset name (or a config) with overrides."""
    cfg = name.replace(**overrides) if isinstance(name, CvTConfig) else get_config(name, **overrides)
    return CvT(cfg)


register_timm()  # a backstop: timm is loaded by now, whatever happened to the import hook
