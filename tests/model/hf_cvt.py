"""A Hugging Face `CvtForImageClassification` with seeded random weights, and a small CvT twin:
the other side of the checkpoint tests (tests/model/test_weights.py, test_timm_contract.py).

No downloads: BatchNorm running statistics and LayerNorm/BatchNorm affine parameters are
randomized too, so a wrongly mapped norm or a swapped q/k/v changes the logits.

Tolerance: max abs logit difference 1e-4 in float32. The two implementations compute the same
function with differently ordered float32 ops (SDPA vs einsum attention); the measured difference
is ~2e-6 for CvT-13 and CvT-21 at logit std ~1, while a real mismatch moves the logits by far
more: QuickGELU instead of GELU by ~3e-2, a head_dim attention scale instead of dim by ~0.4.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvt_nas.model.config import CvTConfig

transformers = pytest.importorskip("transformers")
from transformers import CvtConfig, CvtForImageClassification  # noqa: E402

TOL = 1e-4


def randomize_norms(model: nn.Module, seed: int) -> None:
    """Random norm affine parameters, BatchNorm statistics and cls tokens (default init is 1/0)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, mean: float, std: float) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=gen))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                rand(m.weight, 1.0, 0.2)
                rand(m.bias, 0.0, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                rand(m.running_mean, 0.0, 0.2)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(7)
            if isinstance(m, nn.Linear) and m.bias is not None:
                rand(m.bias, 0.0, 0.02)
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "pos_embed")):
                rand(p, 0.0, 1.0)


def hf_model(seed: int, **config: object) -> CvtForImageClassification:
    """A `CvtForImageClassification` with seeded random weights.

    Built on the meta device and filled here, which takes a fraction of the CPU time of its
    own init. Weights are normal with std 1/sqrt(fan_in), so pre-activations and attention
    logits are O(1) as in a trained network (std 0.02 would leave GELU and softmax almost
    linear and hide an activation or scale mismatch).
    """
    with torch.device("meta"):
        model = CvtForImageClassification(CvtConfig(**config))
    model.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.02
            p.normal_(0.0, std, generator=gen)
    randomize_norms(model, seed + 1)
    return model


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if not isinstance(model, CvtForImageClassification):
            return model(x)
        if model.config.cls_token[-1]:
            return model(pixel_values=x).logits
        # Without a cls token the port's forward fails (it indexes outputs[1], which is absent):
        # run its mean-pooling branch by hand.
        tokens = model.cvt(pixel_values=x).last_hidden_state.flatten(2).transpose(1, 2)
        return model.classifier(model.layernorm(tokens).mean(dim=1))


# A small CvT whose Hugging Face twin is built from TINY_HF.
TINY_HF = dict(
    embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=10,
    cls_token=[False, False, True],
)
TINY = CvTConfig(
    img_size=64, num_classes=10, embed_dim=(16, 32, 48), num_heads=(1, 2, 3), depth=(1, 2, 3),
    act="gelu",
)


def tiny_input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
