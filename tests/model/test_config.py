"""CvTConfig: validation messages, dict round trip, arch_id stability."""

from __future__ import annotations

import pytest

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.presets import CVT_13, PRESETS


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
        ({"depth": (1, 0, 10)}, ["depth", ">= 1"]),
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


def test_grid_sizes_and_drop_path_schedule() -> None:
    assert CVT_13.grid_sizes() == [(56, 56), (28, 28), (14, 14)]
    assert CVT_13.grid_sizes(384) == [(96, 96), (48, 48), (24, 24)]
    rates = CVT_13.block_drop_path(2)
    assert len(rates) == 10 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert CVT_13.block_drop_path(0) == [0.0]
