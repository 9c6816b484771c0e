"""`load_pretrained`: Hugging Face parity, official-layout and safetensors round trips, errors.

The Hugging Face side and the logit tolerance are those of tests/model/hf_cvt.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_cvt import TINY, TINY_HF, TOL, hf_model, logits, randomize_norms, tiny_input
from safetensors.torch import save_file
from torch import nn

import cvt_nas
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.network import CvT
from cvt_nas.model.weights import load_pretrained, read_state_dict

# -- Hugging Face parity -------------------------------------------------------------------------


@pytest.mark.parametrize("name, depth", [("cvt_13", [1, 2, 10]), ("cvt_21", [1, 4, 16])])
def test_hf_logits_match(name: str, depth: list[int]) -> None:
    hf = hf_model(0, num_labels=1000, depth=depth)
    with torch.device("meta"):  # skip our init: every tensor is overwritten (asserted below)
        ours = cvt_nas.create_model(name, act="gelu")
    ours.to_empty(device="cpu").eval()
    report = load_pretrained(ours, hf.state_dict())

    assert report.layout == "huggingface"
    assert report.num_loaded == len(ours.state_dict()) == len(hf.state_dict())
    assert not report.skipped and not report.kept
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    diff = (logits(hf, x) - logits(ours, x)).abs().max().item()
    assert diff < TOL, f"{name}: max abs logit difference {diff:.3g}"


def test_hf_tolerance_is_meaningful() -> None:
    """QuickGELU instead of the port's GELU is caught: the check is not vacuous."""
    hf = hf_model(0, **TINY_HF)
    x = tiny_input()
    diffs = {}
    for act in ("gelu", "quick_gelu"):
        ours = CvT(TINY.replace(act=act)).eval()
        load_pretrained(ours, hf.state_dict())
        diffs[act] = (logits(hf, x) - logits(ours, x)).abs().max().item()
    assert diffs["gelu"] < TOL
    assert diffs["quick_gelu"] > 100 * TOL


def test_hf_norm_eps_equal_ours() -> None:
    """The port ignores `CvtConfig.layer_norm_eps` (1e-12): all norms use eps 1e-5, as ours."""
    hf = hf_model(0, **TINY_HF)
    assert hf.config.layer_norm_eps == 1e-12
    for model in (hf, CvT(TINY)):
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.BatchNorm2d)]
        assert norms and {m.eps for m in norms} == {1e-5}


@pytest.mark.parametrize("fmt", ["save_pretrained", "bin"])
def test_hf_files_and_mean_pooling(tmp_path: Path, fmt: str) -> None:
    """A model folder (model.safetensors) or pytorch_model.bin; no cls token: mean pooling."""
    hf = hf_model(3, **{**TINY_HF, "cls_token": [False, False, False]})
    if fmt == "save_pretrained":
        hf.save_pretrained(tmp_path)
        src: Path = tmp_path
    else:
        src = tmp_path / "pytorch_model.bin"
        torch.save(hf.state_dict(), src)
    ours = CvT(TINY.replace(cls_token=False)).eval()
    report = load_pretrained(ours, src)
    assert report.num_loaded == len(ours.state_dict())
    assert report.source.endswith(("model.safetensors", "pytorch_model.bin"))
    x = tiny_input()
    assert (logits(hf, x) - logits(ours, x)).abs().max().item() < TOL


def test_hf_without_classifier() -> None:
    """A checkpoint without the classifier loads with strict_head=False; our head is kept."""
    hf = hf_model(0, **TINY_HF)
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("classifier.")}
    ours = CvT(TINY).eval()
    head_before = ours.head.weight.clone()
    with pytest.raises(ValueError, match=r"missing from the checkpoint \(2\): head.weight, "):
        load_pretrained(ours, state)
    report = load_pretrained(ours, state, strict_head=False)
    assert set(report.kept) == {"head.weight", "head.bias"} and not report.skipped
    assert torch.equal(ours.head.weight, head_before)
    assert torch.equal(ours.norm.weight, hf.layernorm.weight)  # final norm came from `layernorm`
    assert torch.equal(ours.stage2.cls_token, hf.state_dict()["cvt.encoder.stages.2.cls_token"])


# -- official layout and safetensors round trips -------------------------------------------------


def _trained_like(cfg: CvTConfig, seed: int) -> CvT:
    torch.manual_seed(seed)
    model = CvT(cfg).eval()
    randomize_norms(model, seed + 1)
    return model


MICRO_POS = cvt_nas.get_config("cvt_micro", pos_embed=True)


def test_official_pth_round_trip(tmp_path: Path) -> None:
    src = _trained_like(MICRO_POS, 0)
    path = tmp_path / "checkpoint.pth"
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"epoch": 3, "model": "cls_cvt", "state_dict": wrapped, "perf": 0.5}, path)

    dst = _trained_like(MICRO_POS, 1)
    report = load_pretrained(dst, path)
    assert report.layout == "official" and report.source == str(path)
    assert report.num_loaded == len(src.state_dict()) and not report.skipped and not report.kept
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(logits(src, x), logits(dst, x))


def test_safetensors_and_state_dict_round_trip(tmp_path: Path) -> None:
    src = _trained_like(MICRO_POS, 0)
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    x = torch.randn(2, 1, 32, 32)
    for checkpoint in (path, str(path), src.state_dict()):
        dst = _trained_like(MICRO_POS, 1)
        load_pretrained(dst, checkpoint)
        assert torch.equal(logits(src, x), logits(dst, x))
    state, layout = read_state_dict(path)
    assert layout == "official" and state.keys() == src.state_dict().keys()


def test_read_state_dict_renames_hf_keys() -> None:
    hf_state = hf_model(0, **TINY_HF).state_dict()
    state, layout = read_state_dict(hf_state)
    assert layout == "huggingface"
    assert state.keys() == CvT(TINY).state_dict().keys()
    # A `CvtModel` (backbone) state dict has no "cvt." prefix and no layernorm/classifier.
    backbone = {k[4:]: v for k, v in hf_state.items() if k.startswith("cvt.")}
    state, layout = read_state_dict(backbone)
    assert layout == "huggingface"
    assert state.keys() == CvT(TINY).state_dict().keys() - {
        "norm.weight", "norm.bias", "head.weight", "head.bias"
    }


# -- fine-tuning options and errors --------------------------------------------------------------


def test_head_mismatch_message_and_strict_head_false() -> None:
    src = _trained_like(cvt_nas.get_config("cvt_micro"), 0)
    dst = _trained_like(cvt_nas.get_config("cvt_micro", num_classes=7), 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_pretrained(dst, src.state_dict())
    assert ("head.weight: checkpoint (10, 128) vs model (7, 128); pass num_classes=10 or "
            "strict_head=False") in str(err.value)
    # A failed load leaves the model untouched.
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())

    report = load_pretrained(dst, src.state_dict(), strict_head=False)
    assert set(report.skipped) == {"head.weight", "head.bias"} == set(report.kept)
    assert report.num_loaded == len(src.state_dict()) - 2
    assert "skipped (2): head.bias, head.weight: the checkpoint head has 10 classes, the model 7" \
        in str(report)
    assert torch.equal(dst.head.weight, before["head.weight"])
    assert torch.equal(dst.norm.weight, src.norm.weight)


def test_hf_head_mismatch_names_the_hf_key() -> None:
    ours = CvT(TINY.replace(num_classes=5))
    with pytest.raises(ValueError, match=r"head\.weight \(checkpoint classifier\.weight\): "
                       r"checkpoint \(10, 48\) vs model \(5, 48\); pass num_classes=10"):
        load_pretrained(ours, hf_model(0, **TINY_HF).state_dict())


def test_missing_pos_embed() -> None:
    src = _trained_like(cvt_nas.get_config("cvt_micro"), 0)  # no position embedding
    dst = _trained_like(MICRO_POS, 1)
    with pytest.raises(ValueError, match=r"model has a position embedding \(stage0\.pos_embed, "
                       r"stage1\.pos_embed, stage2\.pos_embed\) but the checkpoint has none.*"
                       r"strict_pos_embed=False"):
        load_pretrained(dst, src.state_dict())
    report = load_pretrained(dst, src.state_dict(), strict_pos_embed=False)
    assert set(report.kept) == {f"stage{s}.pos_embed" for s in range(3)}
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(logits(src, x), logits(dst, x))  # zero position embedding: same function


def test_unexpected_pos_embed_and_depth_hint() -> None:
    src = _trained_like(cvt_nas.get_config("cvt_tiny", pos_embed=True), 0)
    dst = CvT(cvt_nas.get_config("cvt_micro"))
    with pytest.raises(ValueError) as err:
        load_pretrained(dst, src.state_dict())
    msg = str(err.value)
    assert "unexpected in the checkpoint (3): stage0.pos_embed, stage1.pos_embed, " in msg
    assert "missing from the checkpoint (62): stage1.blocks.1.*, stage2.blocks.2.*" in msg
    assert "the checkpoint looks like depth=(1, 1, 2), pos_embed=(True, True, True)" in msg


def test_preset_hint() -> None:
    src = _trained_like(cvt_nas.get_config("cvt_tiny"), 0)
    with pytest.raises(ValueError, match=r"create_model\('cvt_tiny'\)"):
        load_pretrained(CvT(cvt_nas.get_config("cvt_micro")), src.state_dict())


class _NotATensor:
    pass


def test_file_errors(tmp_path: Path) -> None:
    model = CvT(cvt_nas.get_config("cvt_micro"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(model, tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_pretrained(model, tmp_path)
    odd = tmp_path / "weights.ckpt"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint suffix '.ckpt'"):
        load_pretrained(model, odd)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": model.state_dict(), "args": _NotATensor()}, unsafe)
    with pytest.raises(ValueError, match="Python objects besides tensors"):
        load_pretrained(model, unsafe)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        load_pretrained(model, broken)


def test_layout_errors() -> None:
    model = CvT(cvt_nas.get_config("cvt_micro"))
    with pytest.raises(ValueError, match="unrecognized checkpoint layout.*fc.weight"):
        load_pretrained(model, {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"not a state dict: entries epoch are not tensors"):
        load_pretrained(model, {"epoch": 3, "head.weight": torch.zeros(1)})
