"""Analytic cost model: equal to fvcore on every preset and on random configs; paper fidelity."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cvt_nas
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.fvcore_count import fvcore_cost
from cvt_nas.model.presets import PRESETS, get_config

# fvcore and the analytic model count the same ops, so they agree exactly; the bar is 0.1%.
REL_TOL_FVCORE = 1e-3
# The paper rounds (e.g. 19.98 M, 4.53 G) and its FLOP counter differs slightly from an exact
# count (see the stride-1 note below); 1.5% is the bar the project set for paper numbers.
REL_TOL_PAPER = 0.015


@pytest.mark.parametrize(
    "name",
    [n if n in ("cvt_13", "cvt_micro", "cvt_tiny", "cvt_13_32px")
     else pytest.param(n, marks=pytest.mark.slow) for n in PRESETS],
)
def test_presets_analytic_equals_fvcore(name: str) -> None:
    cfg = PRESETS[name]
    fv = fvcore_cost(cvt_nas.CvT(cfg), cfg.img_size)
    ana = analytic_cost(cfg)
    assert ana.params == fv.params
    assert ana.macs == pytest.approx(fv.macs, rel=REL_TOL_FVCORE)


@st.composite
def configs(draw: st.DrawFn) -> CvTConfig:
    n = draw(st.integers(1, 4))
    heads = [draw(st.sampled_from([1, 2, 3])) for _ in range(n)]
    dims = [h * draw(st.sampled_from([4, 8])) for h in heads]
    depth = [draw(st.integers(1, 2)) for _ in range(n)]
    methods = [draw(st.sampled_from(["dw_bn", "avg", "linear"])) for _ in range(n)]
    embed_type = [draw(st.sampled_from(["conv", "patch"])) for _ in range(n)]
    kern, stride, pad = [], [], []
    for t in embed_type:
        s = draw(st.integers(1, 2))
        if t == "patch":
            kern.append(s), stride.append(s), pad.append(0)
        else:
            k = draw(st.sampled_from([1, 3, 5]))
            kern.append(k), stride.append(s), pad.append(draw(st.integers(0, k // 2)))
    kv, mlp = [], []
    for d, m in zip(depth, methods, strict=True):
        if m == "linear":
            kv.append(1)
        elif draw(st.booleans()):
            kv.append(tuple(draw(st.integers(1, 3)) for _ in range(d)))
        else:
            kv.append(draw(st.integers(1, 3)))
        mlp.append(
            tuple(draw(st.sampled_from([1.0, 2.0, 2.5])) for _ in range(d))
            if draw(st.booleans()) else draw(st.sampled_from([1.0, 4.0]))
        )
    kwargs = dict(
        img_size=draw(st.integers(8, 24)),
        in_chans=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(2, 10)),
        embed_type=tuple(embed_type),
        embed_kernel=tuple(kern),
        embed_stride=tuple(stride),
        embed_padding=tuple(pad),
        embed_dim=tuple(dims),
        depth=tuple(depth),
        num_heads=tuple(heads),
        mlp_ratio=tuple(mlp),
        proj_method=tuple(methods),
        qkv_kernel=tuple(draw(st.sampled_from([1, 3, 5])) for _ in range(n)),
        q_stride=(1,) * n,
        kv_stride=tuple(kv),
        pos_embed=tuple(draw(st.booleans()) for _ in range(n)),
        cls_token=tuple(draw(st.booleans()) for _ in range(n)),
        drop_path=(0.0,) * n,
        qkv_bias=draw(st.booleans()),
    )
    try:
        return CvTConfig(**kwargs)
    except ValueError:  # e.g. a stem that leaves no tokens at this size: not a valid config
        assume(False)
        raise


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_random_configs_analytic_equals_fvcore(cfg: CvTConfig) -> None:
    model = cvt_nas.CvT(cfg)
    fv = fvcore_cost(model, cfg.img_size)
    ana = analytic_cost(cfg)
    assert ana.params == fv.params
    assert ana.macs == pytest.approx(fv.macs, rel=REL_TOL_FVCORE, abs=0)


# Paper Table 2/3: params (M) and FLOPs (G, multiply-accumulates) at 224 and 384.
PAPER = {
    ("cvt_13", 224): (19.98, 4.53), ("cvt_13", 384): (19.98, 16.3),
    ("cvt_21", 224): (31.54, 7.13), ("cvt_21", 384): (31.54, 24.9),
    ("cvt_w24", 224): (276.7, 60.86), ("cvt_w24", 384): (276.7, 193.2),
}


@pytest.mark.parametrize(("name", "size"), list(PAPER))
def test_paper_table2_params_and_flops(name: str, size: int) -> None:
    params_m, gflops = PAPER[(name, size)]
    cost = analytic_cost(get_config(name), size)
    assert cost.params / 1e6 == pytest.approx(params_m, rel=REL_TOL_PAPER)
    assert cost.macs / 1e9 == pytest.approx(gflops, rel=REL_TOL_PAPER)


def test_official_code_param_counts_exact() -> None:
    assert analytic_cost(get_config("cvt_13")).params == 19_997_480
    assert analytic_cost(get_config("cvt_21")).params == 31_622_696
    assert analytic_cost(get_config("cvt_w24")).params == 277_196_392


PATCH = {"embed_type": "patch", "embed_kernel": (4, 2, 2), "embed_stride": (4, 2, 2),
         "embed_padding": 0}


@pytest.mark.parametrize(
    ("overrides", "paper_m"),
    [
        (PATCH | {"pos_embed": False}, 19.5),  # a: no conv embed, no pos embed
        (PATCH | {"pos_embed": True}, 19.9),  # b
        ({"pos_embed": True}, 20.3),  # c
        ({"pos_embed": False}, 20.0),  # d = CvT-13
    ],
)
def test_paper_table6_params(overrides: dict, paper_m: float) -> None:
    cost = analytic_cost(get_config("cvt_13", **overrides))
    assert cost.params / 1e6 == pytest.approx(paper_m, rel=REL_TOL_PAPER)


@pytest.mark.parametrize(("kv_stride", "paper_g"), [(1, 6.55), (2, 4.53)])
def test_paper_table7_flops(kv_stride: int, paper_g: float) -> None:
    # Exact count: 6.643 G at stride 1 (1.4% above the paper's 6.55 G, which sits below every
    # exact count: see docs/model.md "What is counted"), 4.566 G at stride 2.
    cost = analytic_cost(get_config("cvt_13", kv_stride=kv_stride))
    assert cost.macs / 1e9 == pytest.approx(paper_g, rel=REL_TOL_PAPER)


def test_profile_reports_both_counts() -> None:
    prof = cvt_nas.profile(get_config("cvt_micro"), method="both")
    assert prof.analytic is not None and prof.fvcore is not None
    assert prof.analytic.macs == prof.fvcore.macs == prof.macs
    with pytest.raises(ValueError, match="unknown method"):
        cvt_nas.profile(get_config("cvt_micro"), method="ptflops")  # type: ignore[arg-type]


def test_profile_of_a_config_counts_both_ways_at_the_asked_size() -> None:
    # the position embedding's size depends on the image size: fvcore's model must be built
    # at the size the analytic count uses
    cfg = cvt_nas.get_config("cvt_micro", pos_embed=True)
    prof = cvt_nas.profile(cfg, img_size=48, method="both")
    assert prof.analytic is not None and prof.fvcore is not None
    assert prof.analytic.params == prof.fvcore.params > cvt_nas.analytic_cost(cfg).params
    assert prof.analytic.macs == prof.fvcore.macs
