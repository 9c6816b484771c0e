"""Search-space YAML: loading, sampling, derived fields, budgets, extremes and errors."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.presets import CVT_13
from cvt_nas.space import (
    FixedSuggest,
    SpaceError,
    analyze,
    load_space,
    parse_number,
    parse_objectives,
    parse_space,
)

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def micro(**sections: object) -> dict:
    """A small valid space as a dict, with sections replaced."""
    data = {
        "name": "t",
        "base": "cvt_micro",
        "model": {"embed_dim": [{"choice": [16, 32]}, 64, 128], "depth": [1, 1, 1]},
        "train": {"epochs": 1},
    }
    data.update(sections)
    return data


def test_shipped_spaces_exist_and_sample_valid_configs() -> None:
    names = {p.name for p in SPACES}
    assert {"cvt_micro.yaml", "cvt13_neighborhood.yaml", "cvt13_nas.yaml"} <= names
    rng = random.Random(0)
    for path in [*SPACES, TINY]:
        space = load_space(path)
        for _ in range(20):
            sample = space.random(rng)
            assert sample.model is not None, (path, sample.error)
            assert sample.model.img_size == space.img_size
            # replaying the recorded parameters rebuilds the same architecture and recipe
            again = space.build(sample.params)
            assert again.model == sample.model and again.train == sample.train
            assert again.arch_id == sample.arch_id == sample.model.arch_id()


NO_TORCH = """
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"{name} imported")
sys.meta_path.insert(0, Block())
# cvt_nas/__init__.py builds models (torch); load the package without it, as a bare namespace
pkg = types.ModuleType("cvt_nas"); pkg.__path__ = [sys.argv[1] + "/cvt_nas"]
sys.modules["cvt_nas"] = pkg
import cvt_nas.space as s
for path in sys.argv[2:]:
    space = s.load_space(path); s.analyze(space, n_random=10); space.random(0)
"""


def test_space_module_and_its_imports_need_no_torch() -> None:
    subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT), *map(str, SPACES)], check=True,
                   cwd=ROOT)


def test_cvt13_nas_space_matches_the_paper_layout_and_its_cost_extremes_are_exact() -> None:
    space = load_space(ROOT / "search_spaces" / "cvt13_nas.yaml")
    grid = space.grid()
    assert len(grid) == 26 and space.size() == 2**26  # 13 layers x (kv stride, MLP ratio)
    assert all(v == [1, 2] for k, v in grid.items() if k.startswith("kv_stride"))
    assert all(v == [2, 4] for k, v in grid.items() if k.startswith("mlp_ratio"))
    report = analyze(space, n_random=50)
    # The extremes by hand: everything at stride 2 / ratio 2 is the smallest, stride 1 / ratio 4
    # the largest (params do not depend on the stride; MACs grow with ratio and shrink with it).
    small = analytic_cost(CVT_13.replace(kv_stride=2, mlp_ratio=2.0))
    large = analytic_cost(CVT_13.replace(kv_stride=1, mlp_ratio=4.0))
    assert report.params_range == (small.params, large.params) == (13_779_368, 19_997_480)
    assert report.macs_range == (small.macs, large.macs) == (3_121_544_704, 6_643_074_560)
    rng = random.Random(1)
    for _ in range(50):
        cost = space.cost(space.random(rng).model)
        assert small.params <= cost.params <= large.params
        assert small.macs <= cost.macs <= large.macs
    # per-block choices reach the config as per-block tuples
    cfg = space.build({**{k: v[0] for k, v in grid.items()}, "kv_stride_s3_b4": 2}).model
    assert cfg.kv_stride[2] == (1, 1, 1, 2, 1, 1, 1, 1, 1, 1)
    assert cfg.mlp_ratio[1] == (2.0, 2.0)


def test_tied_per_stage_and_per_block_draws_and_their_names() -> None:
    space = parse_space(micro(model={
        "embed_dim": {"choice": [32, 64]},  # tied: one draw
        "depth": [1, {"int": [1, 3]}, 2],
        "mlp_ratio": {"choice": [2, 4], "per": "stage"},
        "kv_stride": [1, {"choice": [1, 2], "per": "block"}, 2],
    }))
    for seed in range(10):
        s = space.random(seed)
        cfg = s.model
        assert len(set(cfg.embed_dim)) == 1 and s.params["embed_dim"] == cfg.embed_dim[0]
        assert [s.params[f"mlp_ratio_s{i}"] for i in (1, 2, 3)] == list(cfg.mlp_ratio)
        d2 = s.params["depth_s2"]
        assert cfg.depth == (1, d2, 2)
        blocks = sorted(k for k in s.params if k.startswith("kv_stride"))
        assert blocks == [f"kv_stride_s2_b{b}" for b in range(1, d2 + 1)]
        assert cfg.kv_stride == (1, tuple(s.params[k] for k in blocks), 2)


def test_head_dim_derives_num_heads_and_list_choices_are_whole_stage_lists() -> None:
    space = parse_space(micro(model={
        "embed_dim": {"choice": [[32, 64, 128], [64, 128, 256]]},
        "head_dim": {"choice": [16, 32]},
        "depth": [1, 1, 1],
    }))
    seen = set()
    for seed in range(12):
        s = space.random(seed)
        hd = s.params["head_dim"]
        assert s.model.num_heads == tuple(d // hd for d in s.model.embed_dim)
        assert isinstance(s.params["embed_dim"], str)  # lists travel through samplers as JSON
        seen.add(s.model.embed_dim)
    assert seen == {(32, 64, 128), (64, 128, 256)}
    assert space.size() == 4


def test_an_optuna_trial_is_a_suggest_object_and_fixed_suggest_replays_it() -> None:
    space = load_space(TINY)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sample = space.sample(trial)
    assert trial.params == sample.params
    assert space.sample(FixedSuggest(trial.params)).model == sample.model
    with pytest.raises(KeyError, match="train.lr"):
        space.build({k: v for k, v in sample.params.items() if k != "train.lr"})


def test_train_fields_and_the_recipe_reach_the_train_config() -> None:
    space = load_space(TINY)
    s = space.random(3)
    assert (s.train.epochs, s.train.train_subset, s.train.dataset) == (1, 1200, "fashion-mnist")
    assert 1e-3 <= s.train.lr <= 4e-3 and s.params["train.lr"] == s.train.lr
    assert (space.base.in_chans, space.base.num_classes, space.img_size) == (1, 10, 32)


def test_budget_violations_name_the_constraint_and_measure_the_excess() -> None:
    space = parse_space(micro(constraints={"max_params": "100k", "max_macs": 5e6,
                                           "nondecreasing": ["embed_dim"], "min_head_dim": 16}),
                        check=False)
    cfg = space.base.replace(embed_dim=(64, 32, 128), num_heads=(1, 1, 16), depth=(1, 1, 1))
    cost = space.cost(cfg)
    vs = {v.key: v for v in space.violations(cfg)}
    assert set(vs) == {"max_params", "max_macs", "nondecreasing", "min_head_dim"}
    assert vs["max_params"].amount == pytest.approx(cost.params / 100_000 - 1)
    assert vs["max_macs"].amount == pytest.approx(cost.macs / 5e6 - 1)
    assert "> max_params 100k" in vs["max_params"].message
    assert space.constraints(space.base.replace(depth=(1, 1, 1), embed_dim=(16, 32, 64))) == []


def test_greedy_analysis_finds_a_feasible_corner_that_random_draws_rarely_hit() -> None:
    # Only the all-smallest corner (16/32/32 wide, depth 1, ratio 2) of 4096 fits the budget:
    # any other choice adds more than 1000 params. Random draws hit it with p = 1/4096.
    model = {"embed_dim": [{"choice": [16, 64]}, {"choice": [32, 128]}, {"choice": [32, 256]}],
             "depth": [{"int": [1, 4]}, {"int": [1, 4]}, {"int": [1, 4]}],
             "mlp_ratio": {"choice": [2, 4], "per": "stage"}, "num_heads": [1, 1, 1]}
    corner = parse_space(micro(), check=False).base.replace(
        embed_dim=(16, 32, 32), depth=(1, 1, 1), mlp_ratio=2.0, num_heads=1)
    budget = analytic_cost(corner, 32).params + 1000
    space = parse_space(micro(model=model, constraints={"max_params": budget}))
    report = analyze(space, n_random=100)
    assert report.n_infeasible == 100
    assert report.params_range[0] == budget - 1000
    assert report.smallest.model.embed_dim == (16, 32, 32)
    assert report.smallest.model.depth == (1, 1, 1)


def test_parse_number_and_objectives() -> None:
    assert parse_number("1.5M", "k", "f") == 1.5e6
    assert parse_number("2e6", "k", "f") == 2e6  # YAML 1.1 reads 2e6 as a string
    assert parse_number(4.6e9, "k", "f") == 4.6e9
    with pytest.raises(SpaceError, match="f: k: expected a number"):
        parse_number("lots", "k", "f")
    assert parse_objectives("val_top1:max,macs:min,latency") == {
        "val_top1": "max", "macs": "min", "latency": "min"}
    # the one objectives grammar (cvt_nas.results.objectives) raises ValueError
    with pytest.raises(ValueError, match="val_top1 can only be val_top1:max"):
        parse_objectives(["val_top1:min"])
    with pytest.raises(ValueError, match="unknown objective 'flops'"):
        parse_objectives(["flops:min"])


BAD = [
    ({"epochs": 3}, ": epochs: unknown key", None),
    ({"model": {"widths": 3}}, "model.widths: unknown key", None),
    ({"model": {"img_size": 64}}, "img_size comes from train.img_size", None),
    ({"model": {"depth": {"int": [3, 1]}}}, "model.depth.int: low 3 must be below high 1", None),
    ({"model": {"depth": {"int": [1, 4], "step": 2}}}, "must be a multiple of step 2", None),
    ({"model": {"mlp_ratio": {"float": [0, 4], "log": True}}}, "log ranges need low > 0", None),
    ({"model": {"depth": {"choice": [1, 2], "per": "block"}}},
     "block draws are only possible for", None),
    ({"model": {"depth": [1, 2]}}, "has 2 entries but the base has 3 stages", None),
    ({"model": {"depth": {"choice": [1, 2], "prob": [0.5, 0.5]}}}, "model.depth.prob: unknown",
     None),
    ({"model": {"depth": {"choice": [1, 2], "int": [1, 2]}}}, "exactly one of", None),
    ({"model": {"depth": {"float": [1, 2]}}}, "a float range does not fit a int field", None),
    ({"model": {"act": {"choice": ["gelu", "relu"]}}}, "'relu' is not one of", None),
    ({"model": {"embed_dim": {"choice": [16, 16]}}}, "duplicate values", None),
    ({"model": {"head_dim": 16, "num_heads": [1, 1, 1]}}, "either head_dim", None),
    ({"base": "cvt_99"}, "base: unknown preset 'cvt_99'", None),
    ({"train": {"epochs": 0}}, "train.epochs: ", "must be an integer >= 1"),
    ({"train": {"img_size": {"choice": [32, 64]}}}, "train.img_size: must be fixed", None),
    ({"train": {"recipe": "fast"}}, "train.recipe: unknown recipe 'fast'", None),
    ({"train": {"learning_rate": 0.1}}, "train.learning_rate: unknown TrainConfig field", None),
    ({"constraints": {"max_flops": 1}}, "constraints.max_flops: unknown key", None),
    ({"constraints": {"max_params": 2000}}, "constraints.max_params: unsatisfiable",
     "relax constraints.max_params"),
    ({"constraints": {"min_params": 10, "max_params": 5}}, "min_params: 10 is above", None),
    ({"constraints": {"nondecreasing": ["widths"]}}, "'widths' is not a per-stage field", None),
    ({"model": {"embed_dim": [{"choice": [18, 30]}, 64, 128], "num_heads": [4, 4, 4]}},
     "every architecture tried is invalid", "not divisible by num_heads"),
    ({"search": {"sampler": "cmaes"}}, "search.sampler: 'cmaes' is not one of", None),
    ({"search": {"trials": 0}}, "search.trials: must be an integer >= 1", None),
    # sizes past CvTConfig's limits are refused at load, not sampled (a 10**8 depth range hung)
    ({"model": {"depth": [1, 1, {"int": [1, 100_000_000]}]}},
     "model.depth[2].int: 100000000 is out of range for depth (allowed: 1 to 64)", None),
    ({"model": {"embed_dim": {"choice": [16, 10**6]}}}, "model.embed_dim.choice: 1000000", None),
    ({"model": {"mlp_ratio": {"float": [1, 1e9]}}}, "out of range for mlp_ratio", None),
    ({"model": {"head_dim": 10**5}}, "model.head_dim: 100000 is out of range", None),
    ({"model": {"depth": {"int": [1, 10**30]}}}, "model.depth.int: bounds must be within", None),
    ({"name": "../../x"}, "name: '../../x' is not a valid name", None),
    ({"name": "a b"}, "name: 'a b' is not a valid name", None),
    ({"train": {"recipe": ["reduced"]}}, "train.recipe: unknown recipe ['reduced']", None),
    ({"base": {"preset": ["cvt_13"]}}, "base.preset: unknown preset", None),
]


@pytest.mark.parametrize(("change", "message", "also"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_spaces_name_the_file_the_key_and_the_problem(
    tmp_path: Path, change: dict, message: str, also: str | None
) -> None:
    data = micro()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "model":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError) as info:
        load_space(path)
    text = str(info.value)
    assert text.startswith(str(path) + ": "), text
    assert message in text, text
    if also:
        assert also in text, text


def test_yaml_syntax_errors_and_missing_files_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: {depth: [1, 2\n")
    with pytest.raises(SpaceError, match=r"broken.yaml: not valid YAML"):
        load_space(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_grid_refuses_continuous_and_depth_dependent_spaces() -> None:
    with pytest.raises(SpaceError, match="train.lr: grid search needs a finite set"):
        load_space(TINY).grid()
    space = parse_space(micro(model={"depth": [1, {"int": [1, 2]}, 1],
                                     "kv_stride": {"choice": [1, 2], "per": "block"}}))
    with pytest.raises(SpaceError, match="depend on the sampled depth"):
        space.grid()
    fixed = parse_space(micro(model={"depth": [1, 2, 1],
                                     "kv_stride": {"choice": [1, 2], "per": "block"},
                                     "embed_dim": [16, 32, {"int": [32, 64], "step": 16}]}))
    grid = fixed.grid()
    assert grid == {"embed_dim_s3": [32, 48, 64], "kv_stride_s1_b1": [1, 2],
                    "kv_stride_s2_b1": [1, 2], "kv_stride_s2_b2": [1, 2],
                    "kv_stride_s3_b1": [1, 2]}
    assert fixed.size() == 48


def test_a_training_field_named_like_a_model_field_keeps_its_own_parameter() -> None:
    space = parse_space(micro(model={"drop_path": {"choice": [0.0, 0.1]}, "depth": [1, 1, 1]},
                              train={"epochs": 1, "drop_path": {"choice": [0.0, 0.2]},
                                     "lr": {"choice": [1.0e-3, 2.0e-3]}}))
    assert space.grid() == {"drop_path": [0.0, 0.1], "train.drop_path": [0.0, 0.2],
                            "train.lr": [1.0e-3, 2.0e-3]}
    s = space.build({"drop_path": 0.1, "train.drop_path": 0.2, "train.lr": 2.0e-3})
    assert s.model.drop_path == (0.1, 0.1, 0.1) and s.train.drop_path == 0.2
    assert s.train.lr == 2.0e-3


def test_arch_id_is_stable_across_equal_configs_and_ignores_training_fields() -> None:
    space = load_space(TINY)
    a = space.random(5)
    params = dict(a.params)
    params["train.lr"] = 3.9e-3
    b = space.build(params)
    assert a.arch_id == b.arch_id and a.train != b.train
    same = CvTConfig.from_dict(a.model.to_dict())
    assert same.arch_id() == a.arch_id


def test_a_huge_training_range_is_counted_not_listed() -> None:
    """Sizes and greedy corners come from counts: a 10**8-value range costs nothing to analyse,
    and only grid search (which must list it) refuses it."""
    space = parse_space(micro(train={"epochs": {"int": [1, 100_000_000]},
                                     "seed": {"int": [0, 10**9], "step": 10}}))
    assert space.size() == 2 * 100_000_000 * (10**8 + 1)
    report = analyze(space, n_random=8)
    assert report.params_range[0] <= report.params_range[1]
    with pytest.raises(SpaceError, match=r"train.epochs: grid search over 100,000,000 values"):
        space.grid()
