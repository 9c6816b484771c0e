"""`CvT(cfg)`: the Convolutional vision Transformer, built from a `CvTConfig`, with timm's model API.

A CvT is a hierarchy of stages, each a convolutional token embedding and transformer blocks over
its token grid. The model follows timm's contract (as in timm's ``vision_transformer.py`` and
``maxxvit.py``):

- ``forward_features(x)``: the last stage's tokens, ``(B, num_prefix_tokens + H*W, C)``, with the
  cls token first when the last stage has one; ``forward_head(x, pre_logits)``: the final
  LayerNorm, pooling (``global_pool``: ``"token"``, the cls token, as the official CvT;
  ``"avg"``, the mean of the normalized spatial tokens; ``""``, none) and the classifier. Like the
  official code, the norm is applied per token before pooling: ``forward`` computes exactly what
  the official CvT computes.
- ``forward_intermediates``: the stages' feature maps ``(B, C_s, H_s, W_s)`` (``feature_info``
  lists their channels and strides), so ``timm.create_model(..., features_only=True)`` serves
  detection and segmentation necks.
- ``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``, ``no_weight_decay``,
  ``prune_intermediate_layers``.
"""

from __future__ import annotations

import typing
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import checkpoint
from torch import nn

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.layers import Attention, Block, ConvEmbed
from cvt_nas.model.linear import Linear
from cvt_nas.model.presets import get_config

GLOBAL_POOLS = ("token", "avg", "")


@register_notrace_function  # a leaf for torch.fx: the size check below is Python control flow
def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """A position embedding learned on ``grid``, resized (bicubic) to an ``h`` x ``w`` token grid."""
    if (h, w) == grid:
        return pos_embed
    gh, gw = grid
    out = pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    out = F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False)
    return out.flatten(2).transpose(1, 2)


def pooled_tokens(x: torch.Tensor, pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """The tokens ``pool`` reads: the cls token (``"token"``), the spatial tokens (``"avg"``) or
    all. The final norm comes next, per token, so only these tokens are normalized."""
    if pool == "token":
        return x[:, :1]  # (B, 1, C)
    if pool == "avg":
        return x[:, num_prefix_tokens:]  # (B, H*W, C)
    return x


def pool_reduce(x: torch.Tensor, pool: str) -> torch.Tensor:
    """The pooled features ``(B, C)`` from the normalized `pooled_tokens`."""
    if pool == "token":
        return x.squeeze(1)
    if pool == "avg":
        return x.mean(dim=1)
    return x


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
        self.grad_checkpointing = False
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, [1 +] H*W, C)`` (cls token first, if any), and the spatial tokens as a
        feature map ``(B, C, H, W)`` in NHWC memory (a view: no copy)."""
        x, h, w = self.patch_embed(x)  # (B, H*W, C)
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, self.grid, h, w)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, 1+H*W, C)
        x = self.pos_drop(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, h, w)  # keeps only the block input; recomputes in backward
            else:
                x = blk(x, h, w)
        spatial = x[:, 1:] if self.cls_token is not None else x  # (B, H*W, C)
        return x, spatial.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)


class CvT(nn.Module):
    """CvT classifier. Parameter names follow the official code (``stage0.blocks.0.attn...``).

    Args:
        cfg: the architecture.
        global_pool: ``"token"`` (the default with a cls token in the last stage), ``"avg"``
            (the default without one) or ``""`` (no pooling: ``forward`` gives per-token outputs).
        device: where to create the parameters (``"meta"`` creates none).
        dtype: parameter dtype.
    """

    def __init__(
        self,
        cfg: CvTConfig,
        *,
        global_pool: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.device(device) if device is not None else nullcontext():
            in_chans = cfg.in_chans
            for s, grid in enumerate(cfg.grid_sizes()):
                self.add_module(f"stage{s}", Stage(cfg, s, in_chans, grid))
                in_chans = cfg.embed_dim[s]
            self.num_stages = cfg.num_stages
            self.norm: nn.Module = nn.LayerNorm(cfg.embed_dim[-1])
            self.head: nn.Module = (
                Linear(cfg.embed_dim[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
            )
            self.apply(_init_weights)
            for s in range(self.num_stages):
                stage = self.stage(s)
                for p in (stage.pos_embed, stage.cls_token):
                    if p is not None:
                        nn.init.trunc_normal_(p, std=0.02)
        if dtype is not None:
            self.to(dtype)
        # timm's model attributes
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.embed_dim[-1]
        self.num_prefix_tokens = 1 if cfg.cls_token[-1] else 0
        default_pool = "token" if self.num_prefix_tokens else "avg"
        self.global_pool = self._check_pool(default_pool if global_pool is None else global_pool)
        self.grad_checkpointing = False
        self.feature_info: list[dict[str, Any]] = []
        reduction = 1
        for s in range(self.num_stages):
            reduction *= cfg.embed_stride[s]
            self.feature_info.append(
                dict(num_chs=cfg.embed_dim[s], reduction=reduction, module=f"stage{s}")
            )

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of this model (see `ScriptableCvT`)."""
        return ScriptableCvT(self)

    def stage(self, s: int) -> Stage:
        module = getattr(self, f"stage{s}")
        assert isinstance(module, Stage)
        return module

    # -- training helpers --------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        names = set()
        for name, _ in self.named_parameters():
            if name.endswith(("cls_token", "pos_embed")):
                names.add(name)
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay: the stem, then stage by stage
        (block by block unless ``coarse``), then the final norm; the head comes last."""
        return dict(
            stem=r"^stage0\.(?:patch_embed|pos_embed)",
            blocks=r"^stage(\d+)" if coarse else [
                (r"^stage(\d+)\.(?:patch_embed|pos_embed|cls_token)", (0,)),
                (r"^stage(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = enable
        for s in range(self.num_stages):
            self.stage(s).grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none, the model outputs pooled features),
        and a new pooling if ``global_pool`` is given."""
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.num_classes = num_classes
        ref = next(self.parameters())
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            _init_weights(head)
        self.head = head.train(self.training)

    def _check_pool(self, pool: str) -> str:
        if pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool {pool!r}: choose one of {list(GLOBAL_POOLS)}")
        if pool == "token" and not self.num_prefix_tokens:
            raise ValueError(
                "global_pool 'token' needs a cls token in the last stage (cls_token=(..., True)); "
                "use 'avg'"
            )
        return pool

    # -- forward -----------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens ``(B, num_prefix_tokens + H*W, C)``, before the final norm."""
        tokens = x
        for s in range(self.num_stages):
            stage = self.stage(s)
            tokens, x = stage(x)  # (B, [1+]H_s*W_s, C_s), (B, C_s, H_s, W_s): next stage's input
        return tokens

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final LayerNorm, pooling and classifier on `forward_features`' tokens."""
        x = self.norm(pooled_tokens(x, self.global_pool, self.num_prefix_tokens))
        x = pool_reduce(x, self.global_pool)  # (B, C); (B, N, C) without pooling
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (B, num_classes)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' feature maps, and the final tokens as `forward_features` gives them.

        Args:
            x: images ``(B, in_chans, H, W)``.
            indices: stages to return: all if None, the last n if an int, else these indices.
            norm: apply the final LayerNorm to the last stage's map.
            stop_early: run no stage after the last one requested.
            output_fmt: ``"NCHW"`` maps ``(B, C_s, H_s, W_s)`` or ``"NLC"`` spatial tokens
                ``(B, H_s*W_s, C_s)``.
            intermediates_only: return only the list of maps.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt {output_fmt!r}: choose 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = self.num_stages - 1
        stop = max_index + 1 if stop_early and not torch.jit.is_scripting() else self.num_stages
        intermediates = []
        tokens = x
        for s in range(stop):
            stage = self.stage(s)
            tokens, x = stage(x)  # (B, [1+]H_s*W_s, C_s), (B, C_s, H_s, W_s)
            if s in take_indices:
                feat = x
                if norm and s == last:
                    feat = self.norm(feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                if output_fmt == "NLC":
                    feat = feat.flatten(2).transpose(1, 2)  # (B, H_s*W_s, C_s)
                intermediates.append(feat)
        if intermediates_only:
            return intermediates
        return tokens, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Remove the stages after the last of ``indices`` (and the norm/head); returns the
        absolute indices to pass to `forward_intermediates`."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        prune_end = max_index < self.num_stages - 1
        for s in range(max_index + 1, self.num_stages):
            delattr(self, f"stage{s}")
        self.num_stages = max_index + 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # sized for (and applied to) the last stage only
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.num_prefix_tokens = 1 if self.stage(max_index).cls_token is not None else 0
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


class ScriptableCvT(nn.Module):
    """A `CvT` as TorchScript can compile it: the same modules and parameters, with the stages in
    a ModuleList (TorchScript cannot pick a submodule by a computed name, and the ``stage{i}``
    names are the official checkpoints'). Its state dict keys are ``stages.{i}...``."""

    def __init__(self, model: CvT) -> None:
        super().__init__()
        self.stages = nn.ModuleList([model.stage(s) for s in range(model.num_stages)])
        self.norm = model.norm
        self.head = model.head
        self.global_pool = model.global_pool
        self.num_prefix_tokens = model.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x
        for stage in self.stages:
            tokens, x = stage(x)
        tokens = self.norm(pooled_tokens(tokens, self.global_pool, self.num_prefix_tokens))
        return self.head(pool_reduce(tokens, self.global_pool))


class CvTFeatures(FeatureGetterNet):
    """``features_only=True``: the stage maps of `CvT.forward_intermediates` (timm's getter
    wrapper), with gradient checkpointing passed on to the model, as detection and segmentation
    trainers switch it on through the backbone."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        model = self.model
        assert isinstance(model, CvT)
        model.set_grad_checkpointing(enable)


# torch.fx writes forward's annotations into the code it generates, where the postponed (string)
# ones of this module would not resolve (an fx graph of CvT could not be scripted).
CvT.forward.__annotations__.update(typing.get_type_hints(CvT.forward))


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


TIMM_KWARGS = ("global_pool", "drop_path_rate", "device", "dtype")


def build_for_timm(cfg: CvTConfig, **kwargs: Any) -> CvT:
    """`CvT` from timm's keyword arguments: the `CvTConfig` fields plus `TIMM_KWARGS`.

    ``drop_path_rate`` sets the last stage's stochastic-depth rate, as the official recipes do
    (``DROP_PATH_RATE: [0.0, 0.0, 0.1]``); ``img_size`` may be timm's ``(H, W)`` with H == W.

    Raises:
        TypeError: an argument that is neither (timm's contract for unknown arguments).
    """
    timm_args = {k: kwargs.pop(k) for k in TIMM_KWARGS if k in kwargs}
    fields = set(cfg.to_dict())
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(
            f"CvT got unexpected keyword argument(s) {unknown}; it takes {list(TIMM_KWARGS)} "
            f"and the CvTConfig fields {sorted(fields)}"
        )
    rate = timm_args.pop("drop_path_rate", None)
    if rate is not None:
        kwargs["drop_path"] = (*cfg.drop_path[:-1], float(rate))
    size = kwargs.get("img_size")
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"img_size {size!r}: CvT presets take a square size; pass one integer")
        kwargs["img_size"] = int(size[0])
    return CvT(cfg.replace(**kwargs) if kwargs else cfg, **timm_args)

