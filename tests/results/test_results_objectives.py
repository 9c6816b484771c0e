"""One objectives grammar: space files, `search --objectives`, `report`/`compare --objective` and
study.yaml all accept and refuse the same things."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cvt_nas.cli import main
from cvt_nas.results import parse_objectives, study_objectives
from cvt_nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "results" / "cvt_micro"


@pytest.mark.parametrize(("given", "expected"), [
    ("val_top1:max,macs:min", {"val_top1": "max", "macs": "min"}),
    (["val_top1", "latency"], {"val_top1": "max", "latency": "min"}),
    (["val_top1:max,params:min"], {"val_top1": "max", "params": "min"}),  # repeated flags
    ({"val_top1": "max", "macs": "min"}, {"val_top1": "max", "macs": "min"}),  # study.yaml
])
def test_accepted_forms(given: object, expected: dict[str, str]) -> None:
    assert parse_objectives(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    ("", "--x: no objective given"),
    ([" , "], "--x: no objective given"),
    ("val_top1:min", "--x: val_top1 can only be val_top1:max, got 'val_top1:min'"),
    ("macs:max", "--x: macs can only be macs:min"),
    ("macs=min", "--x: unknown objective 'macs=min'"),
    ("test_top1:max", "--x: unknown objective 'test_top1'"),
    ("macs,macs:min", "--x: macs is listed twice"),
    (3, "--x: expected a list like"),
])
def test_refused_forms(given: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[")):
        parse_objectives(given, "--x")


def test_a_space_file_uses_the_same_grammar(tmp_path: Path) -> None:
    text = (ROOT / "search_spaces" / "cvt_micro.yaml").read_text()
    assert "[val_top1:max, macs:min]" in text
    bad = tmp_path / "s.yaml"
    bad.write_text(text.replace("[val_top1:max, macs:min]", "[val_top1:min, macs:min]"))
    with pytest.raises(ValueError, match=f"{bad}: search.objectives: val_top1 can only be"):
        load_space(bad)


def _copy_results(tmp_path: Path) -> Path:
    out = tmp_path / "cvt_micro"
    out.mkdir()
    for name in ("trials.csv", "trials.parquet", "epochs.parquet", "study.yaml"):
        (out / name).write_bytes((MICRO / name).read_bytes())
    return out


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_refuse_what_search_refuses(
        tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy_results(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    extra = ["--out", str(tmp_path / "cmp")] if command == "compare" else []
    assert main([command, str(d), "--objective", "val_top1:min", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cvt-nas {command}: error: --objective: val_top1 can only be val_top1:max, "
                   "got 'val_top1:min'")
    assert main([command, str(d), "--objective", "", *extra]) == 2
    assert "--objective: no objective given" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing written
    assert not (tmp_path / "cmp").exists()


def test_search_refuses_empty_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    space = ROOT / "tests" / "data" / "tiny_space.yaml"
    assert main(["search", str(space), "--objectives", "", "--dry-run",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "cvt-nas search: error: argument --objectives: no objective given; e.g. "
        "val_top1:max,macs:min (see cvt-nas search --help)")


def test_a_study_yaml_with_a_refused_objective_is_a_clear_error(tmp_path: Path) -> None:
    d = _copy_results(tmp_path)
    meta = yaml.safe_load((d / "study.yaml").read_text())
    assert study_objectives(d) == {"val_top1": "max", "macs": "min"}
    meta["objectives"] = {"val_top1": "min", "macs": "min"}
    (d / "study.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match=r"study.yaml: objectives: val_top1 can only be"):
        study_objectives(d)
