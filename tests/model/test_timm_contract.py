"""The presets as timm models: pretrained configs, the head and pooling API, features_only,
gradient checkpointing, pruning, TorchScript, and pretrained weights from local files.

timm's own model tests run on the presets too (scripts/timm_tests.sh, the CI's timm job); these
tests pin what that suite does not: exact shapes and values, and the checkpoint path offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn
from torch.profiler import ProfilerActivity, profile

from cvt_nas.model.network import CvT, CvTFeatures
from cvt_nas.model.presets import PRESETS
from cvt_nas.model.registry import PRETRAINED_CFGS
from cvt_nas.training.data import dataset_info

# Narrow versions of the paper presets (same layout and stem) keep CPU tests fast.
NARROW = dict(embed_dim=(16, 32, 48), num_heads=(1, 2, 3), depth=(1, 2, 3))


def _small(name: str, **kwargs: object) -> CvT:
    """A preset through timm, narrowed when it is a paper-sized one."""
    narrow = NARROW if PRESETS[name].embed_dim[0] > 32 else {}
    model = timm.create_model(name, **{**narrow, **kwargs})
    assert isinstance(model, CvT)
    return model


def _input(model: nn.Module, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_chans, size, size, generator=gen)


def _size(name: str) -> int:
    return min(PRESETS[name].img_size, 64)


# -- pretrained configs ----------------------------------------------------------------------


def test_every_preset_has_pretrained_configs_named_like_timms() -> None:
    assert set(timm.list_models("cvt_*", name_matches_cfg=True)) >= set(PRESETS)
    assert {name.split(".")[0] for name in PRETRAINED_CFGS} == set(PRESETS)
    assert set(timm.list_pretrained("cvt_*")) == set(HUB_IDS)


# The official weights on the Hugging Face hub (github.com/microsoft/CvT's model zoo, converted)
HUB_IDS = {
    "cvt_13.ms_in1k": "microsoft/cvt-13",
    "cvt_13_384.ms_in1k": "microsoft/cvt-13-384",
    "cvt_13_384.ms_in22k_ft_in1k": "microsoft/cvt-13-384-22k",
    "cvt_21.ms_in1k": "microsoft/cvt-21",
    "cvt_21_384.ms_in1k": "microsoft/cvt-21-384",
    "cvt_21_384.ms_in22k_ft_in1k": "microsoft/cvt-21-384-22k",
    "cvt_w24_384.ms_in22k_ft_in1k": "microsoft/cvt-w24-384-22k",
}


@pytest.mark.parametrize("tagged", sorted(PRETRAINED_CFGS))
def test_pretrained_config_describes_the_preset(tagged: str) -> None:
    name = tagged.split(".")[0]
    preset = PRESETS[name]
    cfg = get_pretrained_cfg(tagged).to_dict()
    assert cfg["input_size"] == (preset.in_chans, preset.img_size, preset.img_size)
    assert cfg["num_classes"] == preset.num_classes
    assert len(cfg["mean"]) == len(cfg["std"]) == preset.in_chans
    assert cfg["interpolation"] == "bicubic" and 0 < cfg["crop_pct"] <= 1
    assert cfg["license"] in ("apache-2.0", "mit")
    assert cfg["first_conv"] == "stage0.patch_embed.proj" and cfg["classifier"] == "head"
    assert cfg.get("hf_hub_id") == HUB_IDS.get(tagged)
    with torch.device("meta"):
        model = timm.create_model(tagged, device="meta")
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    assert model.pretrained_cfg["tag"] == tagged.split(".")[1]


@pytest.mark.parametrize("name, data", [("cvt_micro", "fashion-mnist"), ("cvt_tiny", "fashion-mnist"),
                                        ("cvt_13_32px", "cifar10")])
def test_small_presets_normalize_like_their_data(name: str, data: str) -> None:
    cfg = get_pretrained_cfg(name)
    info = dataset_info(data)
    assert (cfg.mean, cfg.std) == (info.mean, info.std)


# -- head, pooling and classifier --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_forward_is_head_of_features_and_pooling_follows_global_pool(name: str) -> None:
    model = _small(name).eval()
    x = _input(model, _size(name))
    with torch.no_grad():
        tokens = model.forward_features(x)
        out = model(x)
        pre = model.forward_head(tokens, pre_logits=True)
    grid = model.cfg.grid_sizes(x.shape[-1])[-1]
    assert tokens.shape == (2, 1 + grid[0] * grid[1], model.num_features)  # cls token first
    assert torch.equal(out, model.forward_head(tokens))
    assert torch.equal(pre, model.norm(tokens[:, 0]))  # the official head: LayerNorm(cls token)
    assert pre.shape == (2, model.head_hidden_size)
    with torch.no_grad():
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(x), pre)
        model.reset_classifier(0, "avg")
        assert torch.allclose(model(x), model.norm(tokens[:, 1:]).mean(1))
        model.reset_classifier(0, "")
        assert torch.equal(model(x), model.norm(tokens))


def test_reset_classifier_makes_a_fresh_head_where_the_model_is() -> None:
    model = _small("cvt_micro").to(torch.float64).eval()
    model.reset_classifier(7)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert head.weight.dtype == torch.float64 and not head.training
    assert model(_input(model, 32).double()).shape == (2, 7)


def test_pool_and_classes_in_the_constructor() -> None:
    x = torch.randn(2, 1, 32, 32)
    assert timm.create_model("cvt_micro", num_classes=0)(x).shape == (2, 128)
    assert timm.create_model("cvt_micro", num_classes=0, global_pool="")(x).shape == (2, 17, 128)
    assert timm.create_model("cvt_micro", global_pool="avg").global_pool == "avg"
    with pytest.raises(ValueError, match="global_pool 'token' needs a cls token"):
        timm.create_model("cvt_micro", cls_token=False, global_pool="token")
    with pytest.raises(ValueError, match=r"global_pool 'max': choose one of \['token', 'avg', ''\]"):
        timm.create_model("cvt_micro", global_pool="max")


def test_timm_keyword_arguments() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['not_a_model_arg'\]"):
        timm.create_model("cvt_micro", not_a_model_arg=1)
    model = timm.create_model("cvt_13", drop_path_rate=0.2, img_size=(96, 96), **NARROW)
    assert model.cfg.drop_path == (0.0, 0.0, 0.2) and model.cfg.img_size == 96
    meta = timm.create_model("cvt_13", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in meta.parameters()} == {("meta", torch.bfloat16)}


def test_weight_decay_and_layer_groups() -> None:
    from timm.models import group_parameters

    model = timm.create_model("cvt_13", pos_embed=True, **NARROW)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"stage0.pos_embed", "stage1.pos_embed", "stage2.pos_embed",
                                       "stage2.cls_token"} <= set(names)
    fine = group_parameters(model, model.group_matcher(), reverse=True)
    # the stem, one group per block (a stage's embedding joins its first block), the final norm
    # with the last block; the head (unmatched) last
    assert fine["stage0.patch_embed.proj.weight"] == 0
    assert fine["stage1.patch_embed.proj.weight"] == fine["stage1.blocks.0.norm1.weight"] == 2
    assert fine["stage2.blocks.2.mlp.fc2.weight"] == fine["norm.weight"] == 6
    assert fine["head.weight"] == 7 and len(set(fine.values())) == 8
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert len(set(coarse.values())) == 5  # stem, the stages, head


# -- features_only and forward_intermediates ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_features_only_shapes_and_feature_info(name: str) -> None:
    """Every preset at its own size (on the meta device: shapes without compute)."""
    preset = PRESETS[name]
    model = timm.create_model(name, features_only=True, device="meta")
    assert isinstance(model, CvTFeatures)
    strides = torch.tensor(preset.embed_stride).cumprod(0).tolist()
    assert model.feature_info.channels() == list(preset.embed_dim)
    assert model.feature_info.reduction() == strides
    assert model.feature_info.module_name() == ["stage0", "stage1", "stage2"]
    x = torch.randn(2, preset.in_chans, preset.img_size, preset.img_size, device="meta")
    shapes = [tuple(f.shape) for f in model(x)]
    assert shapes == [(2, c, h, w) for c, (h, w) in zip(preset.embed_dim, preset.grid_sizes(), strict=True)]
    assert not hasattr(model.model, "stage3") and isinstance(model.model.head, nn.Identity)


def test_features_are_the_stage_maps() -> None:
    torch.manual_seed(0)
    model = _small("cvt_13", img_size=64).eval()
    features = timm.create_model("cvt_13", features_only=True, out_indices=(1, 2), img_size=64,
                                 **NARROW).eval()
    features.model.load_state_dict(model.state_dict(), strict=False)  # no head in features
    x = _input(model, 64)
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(x)
        assert torch.equal(tokens, model.forward_features(x))
        assert [m.shape[1:] for m in maps] == [(16, 16, 16), (32, 8, 8), (48, 4, 4)]
        # the last map is the spatial tokens of forward_features, cls token removed
        assert torch.equal(maps[2].flatten(2).transpose(1, 2), tokens[:, 1:])
        assert all(torch.equal(a, b) for a, b in zip(features(x), maps[1:], strict=True))
        normed = model.forward_intermediates(x, indices=[2], norm=True, intermediates_only=True)
        assert torch.equal(normed[0].flatten(2).transpose(1, 2), model.norm(tokens[:, 1:]))
        nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        assert nlc[0].shape == (2, 16, 48)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(first[0], maps[0]) and early.shape == (2, 16 * 16, 16)


def test_pruning_keeps_the_taps_and_sizes_the_head() -> None:
    model = _small("cvt_13").eval()
    x = _input(model, 64)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        assert model.prune_intermediate_layers([1]) == [1]
        assert model.num_stages == 2 and not hasattr(model, "stage2")
        assert model.num_features == model.head_hidden_size == 32
        assert torch.equal(model.forward_intermediates(x, intermediates_only=True)[1], taps[1])
        model.reset_classifier(5, "avg")
        assert model(x).shape == (2, 5)


# -- gradient checkpointing --------------------------------------------------------------------


def _train_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Output, gradients, and the bytes still allocated when the forward pass ends (what backward
    will need), measured by the profiler's allocator events."""
    torch.manual_seed(1)  # the same drop-path draws in both runs
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
    held = sum(e.self_cpu_memory_usage for e in prof.events())
    out.logsumexp(-1).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, held


def test_grad_checkpointing_same_results_less_memory() -> None:
    torch.manual_seed(0)
    model = timm.create_model("cvt_micro", drop_path_rate=0.1).train()
    x = _input(model, 32, batch=16)
    out, grads, held = _train_step(model, x)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(model.stage(s).grad_checkpointing for s in range(3))
    out_ck, grads_ck, held_ck = _train_step(model, x)
    torch.testing.assert_close(out_ck, out, rtol=0, atol=0)
    assert grads_ck.keys() == grads.keys() == {n for n, _ in model.named_parameters()}
    for n in grads:
        torch.testing.assert_close(grads_ck[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)
    # Measured: 33.6 MB without, 3.4 MB with (block activations are recomputed in backward).
    assert held_ck < 0.5 * held, (held_ck, held)


def test_features_only_forwards_grad_checkpointing() -> None:
    features = timm.create_model("cvt_micro", features_only=True)
    features.set_grad_checkpointing(True)
    assert all(features.model.stage(s).grad_checkpointing for s in range(3))
    sum(f.sum() for f in features(torch.randn(2, 1, 32, 32))).backward()


# -- TorchScript -------------------------------------------------------------------------------


def test_torchscript_matches_eager() -> None:
    """Scripted, the model runs F.linear where eager CPU float32 runs oneDNN: equal to ~1e-6."""
    model = _small("cvt_13", img_size=64).eval()
    x = _input(model, 64)
    with torch.no_grad():
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)


# -- pretrained weights from local files -------------------------------------------------------


def _official_checkpoint(path: Path, model: CvT) -> None:
    """An official-style training checkpoint: a state dict under "state_dict" with the
    DistributedDataParallel "module." prefix, beside other entries."""
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 300, "state_dict": wrapped, "perf": 81.6}, path)


def _create(file: Path, **kwargs: object) -> nn.Module:
    return timm.create_model("cvt_13.ms_in1k", pretrained=True,
                             pretrained_cfg_overlay={"file": str(file)}, **{**NARROW, **kwargs})


def test_official_pth_through_timm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = timm.create_model("cvt_13", **NARROW).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nothing left at its initial value
    path = tmp_path / "CvT-13-224x224-IN-1k.pth"
    _official_checkpoint(path, src)
    x = _input(src, 64)

    model = _create(path).eval()
    assert model.pretrained_cfg["file"] == str(path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(model(x), src(x))

    # timm adapts the head and the stem; features_only drops the head
    fresh = _create(path, num_classes=5)
    assert fresh.head.out_features == 5
    assert torch.equal(fresh.stage2.blocks[2].mlp.fc2.weight, src.stage2.blocks[2].mlp.fc2.weight)
    gray = _create(path, in_chans=1)
    assert torch.allclose(gray.stage0.patch_embed.proj.weight,
                          src.stage0.patch_embed.proj.weight.sum(1, keepdim=True))
    assert _create(path, num_classes=0)(x).shape == (2, 48)
    maps = _create(path, features_only=True).eval()(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 16), (32, 8, 8), (48, 4, 4)]


@pytest.mark.parametrize("layout", ["folder", "safetensors", "bin"])
def test_hugging_face_checkpoint_through_timm(tmp_path: Path, layout: str) -> None:
    from hf_cvt import TINY_HF, TOL, hf_model, logits

    hf = hf_model(0, **{**TINY_HF, "num_labels": 1000})
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors
    path = {"folder": tmp_path, "safetensors": tmp_path / "model.safetensors"}.get(layout)
    if path is None:
        path = tmp_path / "pytorch_model.bin"
        torch.save(hf.state_dict(), path)
    model = _create(path, act="gelu").eval()  # the port runs the weights with exact GELU
    assert model.pretrained_cfg["file"].endswith(("model.safetensors", "pytorch_model.bin"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert (logits(hf, x) - logits(model, x)).abs().max().item() < TOL


def test_checkpoint_errors_through_timm(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.pth does not exist"):
        _create(tmp_path / "nope.pth")
    path = tmp_path / "cvt_21.pth"
    _official_checkpoint(path, timm.create_model("cvt_21", **{**NARROW, "depth": (1, 3, 3)}))
    with pytest.raises(ValueError, match=r"(?s)cannot load .*cvt_21.pth \(official layout\).*"
                       r"unexpected in the checkpoint \(\d+\): stage1.blocks.2.\*.*"
                       r"the checkpoint looks like depth=\(1, 3, 3\)"):
        _create(path)
    with pytest.raises(RuntimeError, match="No pretrained weights exist for cvt_micro"):
        timm.create_model("cvt_micro", pretrained=True)
    with pytest.raises(ValueError, match="feature_cls='hook' is not supported"):
        timm.create_model("cvt_micro", features_only=True, feature_cls="hook")
