"""`check_name`: the one gate for names that become path components."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvt_nas.ablation.experiment import load_experiment
from cvt_nas.cli import main
from cvt_nas.common.names import MAX_NAME_LENGTH, check_name
from cvt_nas.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cvt_micro", "tiny", "table7_kv_stride", "a.b-c_1", "0", "A" * 100])
def test_plain_names_pass(name: str) -> None:
    assert check_name(name, "--study") == name


@pytest.mark.parametrize("name", ["", "..", ".", "../../x", "a/b", "a\\b", "a b", "-rf", ".hidden",
                                  "a:b", "a\nb", "é", "A" * 101, None, 7, ["x"]])
def test_unsafe_names_are_one_clear_error(name: object) -> None:
    with pytest.raises(ValueError) as info:
        check_name(name, "exp.yaml: name")
    text = str(info.value)
    assert text.startswith("exp.yaml: name: ") and "letters, digits" in text
    assert "\n" not in text


@settings(deadline=None, derandomize=True, database=None)  # no timing flakes on a busy CI
@given(st.text(max_size=120))
def test_an_accepted_name_is_one_path_component_inside_its_parent(name: str) -> None:
    try:
        check_name(name, "n")
    except ValueError:
        return
    assert 0 < len(name) <= MAX_NAME_LENGTH
    parent = Path("/results")
    assert (parent / name).resolve().parent == parent  # never escapes, never nests


def test_every_name_that_becomes_a_path_goes_through_the_check(tmp_path: Path, capsys) -> None:
    # a search space's name (its default study and results directory)
    space = tmp_path / "s.yaml"
    space.write_text((ROOT / "tests" / "data" / "tiny_space.yaml").read_text()
                     .replace("name: tiny", "name: ../../escape"))
    with pytest.raises(SpaceError, match=r"s.yaml: name: '../../escape' is not a valid name"):
        load_space(space)
    spaced = tmp_path / "my space.yaml"
    spaced.write_text((ROOT / "tests" / "data" / "tiny_space.yaml").read_text()
                      .replace("name: tiny\n", ""))
    with pytest.raises(SpaceError, match="taken from the file name; add a name: line"):
        load_space(spaced)
    # an experiment's name (its table folder)
    exp = tmp_path / "e.yaml"
    exp.write_text((ROOT / "experiments" / "table7_kv_stride.yaml").read_text()
                   .replace("name: table7_kv_stride", "name: ../../.."))
    with pytest.raises(ValueError, match=r"e.yaml: name: '../../..' is not a valid name"):
        load_experiment(exp)
    # flags: --study, --name; and a run name taken from a config file's name
    for argv in (["search", str(ROOT / "tests/data/tiny_space.yaml"), "--study", "../../x"],
                 ["search", str(ROOT / "tests/data/tiny_space.yaml"), "--study", "a b"],
                 ["train", "--model", "cvt_micro", "--name", "../x"]):
        assert main(argv) == 2
        assert "is not a valid name" in capsys.readouterr().err
    cfg = tmp_path / "my run.yaml"
    cfg.write_text("model: cvt_micro\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "the run name (from the file name): 'my run' is not a valid name" in (
        capsys.readouterr().err)
    assert not (tmp_path.parent / "x").exists()
