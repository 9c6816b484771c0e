"""CvTConfig: validation messages, dict round trip, arch_id stability."""

from __future__ import annotations

import pytest

from cvt_nas.model.config import LIMITS, CvTConfig
from cvt_nas.model.presets import CVT_13, PRESETS, get_config


def test_round_trip_every_preset() -> None:
    for name, cfg in PRESETS.items():
        again = CvTConfig.from_dict(cfg.to_dict(), source=name)
        assert again == cfg
        assert again.arch_id() == cfg.arch_id()


def test_to_dict_is_plain_yaml() -> None:
    import yaml

    text = yaml.safe_dump(CVT_13.replace(mlp_ratio=(4, (2, 4), 4)).to_dict())
    back = CvTConfig.from_dict(yaml.safe_load(text))
    assert back.mlp_ratio == (4.0, (2.0, 4.0), 4.0)


def test_arch_id_canonical_and_topology_only() -> None:
    a = CvTConfig(mlp_ratio=[4, 4, 4], depth=[1, 2, 10])
    b = CvTConfig(mlp_ratio=(4.0, 4.0, 4.0))
    assert a.arch_id() == b.arch_id() == CVT_13.arch_id()
    # regularization and data settings do not change the architecture
    assert CVT_13.replace(drop_path=0.2, num_classes=10, img_size=32).arch_id() == CVT_13.arch_id()
    assert CVT_13.replace(kv_stride=1).arch_id() != CVT_13.arch_id()
    assert CVT_13.replace(kv_stride=(2, (1, 2), 2)).arch_id() != CVT_13.arch_id()


def test_replace_scalar_sets_every_stage() -> None:
    cfg = CVT_13.replace(pos_embed=True, proj_method="avg")
    assert cfg.pos_embed == (True, True, True)
    assert cfg.proj_method == ("avg",) * 3


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"num_heads": (1, 5, 6)}, ["num_heads", "stage 2", "192", "divisible"]),
        ({"depth": (1, 2)}, ["depth", "2 entries", "3"]),
        ({"proj_method": ("dw_bn", "conv", "dw_bn")}, ["proj_method", "'conv'", "dw_bn", "avg"]),
        ({"embed_type": ("conv", "patchy", "conv")}, ["embed_type", "patchy"]),
        ({"img_size": 2}, ["embed_stride", "no tokens", "img_size 2"]),
        ({"embed_type": ("patch", "conv", "conv")}, ["patch", "embed_kernel == embed_stride"]),
        ({"proj_method": ("linear", "dw_bn", "dw_bn")}, ["linear", "kv_stride must be 1"]),
        ({"mlp_ratio": (4, (2, 4, 4), 4)}, ["mlp_ratio", "per-block", "depth is 2"]),
        ({"depth": (1, 0, 10)}, ["depth", "stage 2", "from 1 to 64", "got 0"]),
        # size limits: an absurd value is refused with its bound instead of hanging the cost
        ({"depth": (1, 2, 100_000_000)}, ["depth", "stage 3", "from 1 to 64"]),
        ({"img_size": 5000}, ["img_size", "from 1 to 4096"]),
        ({"embed_dim": (64, 192, 10**5)}, ["embed_dim", "stage 3", "from 1 to 8192"]),
        ({"num_heads": (1, 3, 512)}, ["num_heads", "from 1 to 256"]),
        ({"num_classes": 10**6}, ["num_classes", "from 0 to 100000"]),
        ({"kv_stride": (2, (2, 100), 2)}, ["kv_stride", "stage 2", "from 1 to 64"]),
        ({"mlp_ratio": (4, 4, 1e9)}, ["mlp_ratio", "at most 64"]),
        ({"embed_dim": [64] * 9, **{f: [v[0]] * 9 for f, v in CVT_13.to_dict().items()
                                     if isinstance(v, list)}}, ["9 stages", "at most 8"]),
        ({"qkv_bias": "yes"}, ["qkv_bias", "true/false"]),
        ({"drop_rate": "x"}, ["drop_rate", "[0, 1)"]),
        ({"act": "relu"}, ["act", "relu", "quick_gelu"]),
        ({"drop_path": (0, 0, 1.5)}, ["drop_path", "[0, 1)"]),
        ({"q_stride": (1, 2, 1)}, ["q_stride", "must be 1"]),
        ({"qkv_kernel": (3, 4, 3)}, ["qkv_kernel", "odd"]),
        ({"embed_dim": (64.5, 192, 384)}, ["embed_dim", "integer"]),
        ({"pos_embed": (1, 0, 0)}, ["pos_embed", "true/false"]),
        ({"depth": 3}, ["depth", "one entry per stage"]),
    ],
)
def test_validation_names_field_and_rule(overrides: dict, fragments: list[str]) -> None:
    data = CVT_13.to_dict() | overrides
    with pytest.raises(ValueError) as err:
        CvTConfig.from_dict(data, source="my.yaml")
    msg = str(err.value)
    assert "my.yaml" in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_unknown_field_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"unknown CvTConfig field\(s\) \['dim'\].*embed_dim"):
        CvTConfig.from_dict({"dim": 3}, source="x.yaml")
    with pytest.raises(ValueError, match="unknown CvTConfig field"):
        CVT_13.replace(heads=3)


def test_get_config_takes_every_keyword_as_a_field_override() -> None:
    # the preset name is positional-only: `name=` is a (here unknown) field, not the preset
    with pytest.raises(ValueError, match=r"unknown CvTConfig field\(s\) \['name'\]"):
        get_config("cvt_micro", name="x")
    assert get_config("cvt_micro", kv_stride=1).kv_stride == (1, 1, 1)


def test_grid_sizes_and_drop_path_schedule() -> None:
    assert CVT_13.grid_sizes() == [(56, 56), (28, 28), (14, 14)]
    assert CVT_13.grid_sizes(384) == [(96, 96), (48, 48), (24, 24)]
    rates = CVT_13.block_drop_path(2)
    assert len(rates) == 10 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert CVT_13.block_drop_path(0) == [0.0]


def test_size_limits_admit_the_largest_paper_model_at_384_px() -> None:
    """CvT-W24 at 384 px is the largest configuration of the paper: inside every limit."""
    big = PRESETS["cvt_w24_384"]
    assert (big.img_size, max(big.embed_dim), max(big.depth), max(big.num_heads)) == (
        384, 1024, 20, 16)
    for key, (lo, hi) in LIMITS.items():
        values = [big.num_stages] if key == "num_stages" else (
            [getattr(big, key)] if key in ("img_size", "in_chans", "num_classes")
            else [v for stage in getattr(big, key)
                  for v in (stage if isinstance(stage, tuple) else (stage,))])
        assert all(lo <= v <= hi for v in values), key
        assert hi >= 2 * max(values), key  # with room to spare
