"""TrainConfig: recipes, validation messages, YAML round-trip (no torch, no data)."""

from __future__ import annotations

import pytest
import yaml

from cvt_nas.training.config import RECIPES, TrainConfig, field_names, get_recipe


def test_reduced_is_the_default_and_matches_the_calibration_recipe() -> None:
    cfg = get_recipe("reduced")
    assert cfg == TrainConfig()
    # ENVIRONMENT.md calibration: AdamW lr 2e-3, label smoothing 0.1, shift + flip, batch 128.
    assert (cfg.dataset, cfg.img_size, cfg.lr, cfg.batch_size) == ("fashion-mnist", 32, 2e-3, 128)
    assert (cfg.label_smoothing, cfg.shift, cfg.hflip, cfg.epochs) == (0.1, 2, 0.5, 10)
    assert cfg.mixup == cfg.cutmix == 0.0 and cfg.randaugment is None


def test_paper_recipe_is_the_official_imagenet_recipe() -> None:
    cfg = get_recipe("paper", dataset="imagefolder:/data/imagenet")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (300, 2048, 2e-3, 0.05)
    assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr) == (5.0, 1e-6, 1e-5)
    assert (cfg.mixup, cfg.cutmix, cfg.label_smoothing) == (0.8, 1.0, 0.1)
    assert cfg.randaugment == "rand-m9-mstd0.5-inc1" and cfg.random_erasing == 0.25
    assert cfg.img_size == 224 and cfg.precision == "fp16"


def test_recipe_overrides_and_unknown_recipe() -> None:
    assert get_recipe("reduced", epochs=3, lr=1e-3).epochs == 3
    with pytest.raises(ValueError, match="unknown recipe 'fast'.*reduced"):
        get_recipe("fast")
    assert set(RECIPES) == {"reduced", "paper"}


def test_unknown_keys_name_the_key_source_and_allowed_fields() -> None:
    with pytest.raises(ValueError, match=r"run.yaml: unknown TrainConfig field\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3}, source="run.yaml")
    with pytest.raises(ValueError, match="allowed: .*'epochs'"):
        TrainConfig().replace(learning_rate=1.0)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("epochs", 0, "integer >= 1"),
        ("epochs", 2.5, "integer >= 1"),
        ("batch_size", True, "integer >= 1"),
        ("lr", 0.0, "> 0"),
        ("lr", -1.0, "finite number >= 0"),
        ("weight_decay", float("nan"), "finite number >= 0"),
        ("val_fraction", 1.0, r"\[0.0, 1.0\)"),
        ("label_smoothing", -0.1, r"\[0.0, 1.0\)"),
        ("hflip", 2, r"\[0.0, 1.0\]"),
        ("precision", "fp8", "one of"),
        ("channels", "gray", "one of"),
        ("resize", "crop", "one of"),
        ("device", "tpu", "'auto', 'cpu'"),
        ("dataset", "imagenet", "imagefolder:PATH"),
        ("dataset", "imagefolder:", "imagefolder:PATH"),
        ("drop_path", 1.0, r"\[0, 1\)"),
        ("drop_path", [0.1, "x"], r"\[0, 1\)"),
        ("randaugment", "m9", "RandAugment string"),
        ("clip_grad", 0, "> 0"),
        ("eval_test", "yes", "true or false"),
        ("train_subset", 0, "integer >= 1 or null"),
        ("threads", -1, "integer >= 0 or null"),
        # hardening: NaN, infinities, absurd sizes and malformed devices are refused by name
        ("val_fraction", float("nan"), r"\[0.0, 1.0\)"),
        ("hflip", float("nan"), r"\[0.0, 1.0\]"),
        ("clip_grad", float("inf"), "finite number > 0"),
        ("clip_grad", float("nan"), "finite number > 0"),
        ("img_size", 10**6, "integer from 1 to 4096 or null"),
        ("seed", 2**32, "integer from 0 to 4294967295"),
        ("device", "cuda:x", "'cuda:N'"),
        ("device", "cuda:", "'cuda:N'"),
    ],
)
def test_bad_values_name_field_value_and_rule(field: str, value: object, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"field '{field}':.*{rule}.*got") as info:
        TrainConfig.from_dict({field: value}, source="cfg")
    assert str(info.value).startswith("cfg: ")


def test_mixup_needs_an_even_batch() -> None:
    with pytest.raises(ValueError, match="field 'batch_size': must be even when mixup"):
        TrainConfig(mixup=0.8, batch_size=33)
    assert TrainConfig(mixup=0.8, batch_size=32).mixup == 0.8


def test_yaml_round_trip_and_yaml11_exponents(tmp_path) -> None:
    cfg = get_recipe("paper", dataset="imagefolder:/x", drop_path=[0.0, 0.0, 0.1], threads=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    back = TrainConfig.from_yaml(path)
    assert back == cfg and back.drop_path == (0.0, 0.0, 0.1)
    assert hash(back) == hash(cfg)
    # YAML 1.1 reads 2e-3 (no dot) as a string; it is accepted as a float.
    path.write_text("lr: 2e-3\nweight_decay: 0\n")
    loaded = TrainConfig.from_yaml(path)
    assert loaded.lr == 2e-3 and isinstance(loaded.weight_decay, float)
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_yaml(path)


def test_contract_fields_exist() -> None:
    required = {"dataset", "data_root", "img_size", "epochs", "batch_size", "lr", "warmup_epochs",
                "weight_decay", "label_smoothing", "seed", "train_subset", "val_fraction",
                "eval_test", "device", "precision", "threads"}
    assert required <= set(field_names())
