"""The one dataset table and `adapt_config`: what every stage reads about a dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvt_nas.model.presets import get_config
from cvt_nas.space import load_space
from cvt_nas.training import config as train_config
from cvt_nas.training import data as D
from cvt_nas.training.config import get_recipe
from cvt_nas.training.datasets import BUILTIN, adapt_config, dataset_info

ROOT = Path(__file__).resolve().parents[2]


def test_every_stage_reads_the_same_table() -> None:
    assert train_config.DATASETS == tuple(BUILTIN)  # what TrainConfig accepts
    assert D.dataset_info is dataset_info  # what data loading decodes against
    for name, info in BUILTIN.items():
        assert dataset_info(name) is info
        assert len(info.mean) == len(info.std) == info.channels
    assert (BUILTIN["cifar100"].channels, BUILTIN["cifar100"].num_classes) == (3, 100)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_space_is_costed_on_the_model_its_dataset_trains(tmp_path: Path, name: str) -> None:
    """Space parsing adapts the base with the same `adapt_config` as the trainer, so the
    satisfiability and budget checks see the classes and channels that are trained."""
    path = tmp_path / "s.yaml"
    path.write_text(f"base: cvt_micro\nmodel: {{depth: [1, 1, {{choice: [1, 2]}}]}}\n"
                    f"train: {{dataset: {name}, channels: repeat, img_size: 32}}\n")
    space = load_space(path)
    sample = space.random(0)
    trained = adapt_config(sample.model, sample.train)
    assert (space.base.in_chans, space.base.num_classes) == (3, BUILTIN[name].num_classes)
    assert trained == sample.model  # nothing left to adapt: the space already holds it


def test_adapt_config_channels_size_and_drop_path() -> None:
    recipe = get_recipe("reduced", channels="repeat", drop_path=0.2)
    cfg = adapt_config(get_config("cvt_13"), recipe)
    assert (cfg.in_chans, cfg.num_classes, cfg.img_size) == (3, 10, 32)
    assert cfg.drop_path == (0.2, 0.2, 0.2)
    kept = adapt_config(get_config("cvt_13"), get_recipe("reduced", img_size=None))
    assert (kept.in_chans, kept.img_size, kept.drop_path) == (1, 224, (0.0, 0.0, 0.1))


def test_an_image_folder_is_counted_without_opening_images(tmp_path: Path) -> None:
    for cls in ("a", "b", "c"):
        (tmp_path / "train" / cls).mkdir(parents=True)
    info = dataset_info(f"imagefolder:{tmp_path}")
    assert (info.channels, info.num_classes, info.img_size) == (3, 3, None)
    with pytest.raises(FileNotFoundError, match="PATH/train/<class>"):
        dataset_info(f"imagefolder:{tmp_path / 'none'}")


def test_gating_a_sample_imports_no_torch() -> None:
    """The budget gate (adapt, cost, constraints) runs without torch in a fresh interpreter."""
    code = (
        "import sys\n"
        "from cvt_nas.space import load_space\n"
        "from cvt_nas.search.trial import TrialSettings, gate\n"
        f"space = load_space({str(ROOT / 'search_spaces' / 'cvt_micro.yaml')!r})\n"
        "settings = TrialSettings('s', 'optuna', {'val_top1': 'max', 'macs': 'min'})\n"
        "gates = [gate(space, space.random(i), settings) for i in range(8)]\n"
        "assert all(g.cost is not None and g.model.in_chans == 1 for g in gates)\n"
        "print(sum(g.feasible for g in gates), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    feasible, torch_loaded = out.stdout.split()
    assert int(feasible) > 0 and torch_loaded == "False", out.stdout
