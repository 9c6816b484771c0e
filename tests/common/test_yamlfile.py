"""Every YAML file a user writes fails the same clear way: the file named, no parser traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cvt_nas.ablation.experiment import load_experiment
from cvt_nas.cli import main
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.space import SpaceError, load_space
from cvt_nas.training.config import TrainConfig

LOADERS: dict[str, Callable[[Path], Any]] = {
    "space": load_space,
    "experiment": load_experiment,
    "train config": TrainConfig.from_yaml,
}


@pytest.mark.parametrize("name", LOADERS)
def test_bad_yaml_and_missing_files_name_the_file(name: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML: while parsing a flow sequence"):
        LOADERS[name](bad)
    with pytest.raises(FileNotFoundError, match=r"nope.yaml: no such .* file \(does not exist\)"):
        LOADERS[name](tmp_path / "nope.yaml")


def test_space_errors_keep_their_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {depth: [1, 2\n")
    with pytest.raises(SpaceError):
        load_space(bad)


def test_a_mapping_is_required_where_asked(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list.yaml: expected a mapping .* got list"):
        read_yaml(listing, "config file")
    with pytest.raises(ValueError, match=r": is a directory, not a config file"):
        read_yaml(tmp_path, "config file")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.yaml: not UTF-8 text .* save the config file as UTF-8"):
        read_yaml(latin, "config file")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty, "config file") == {}
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_yaml(listing)


def test_train_command_reports_bad_config_yaml_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_text("model: {depth: [1, 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvt-nas train: error:") and "cfg.yaml: not valid YAML" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
