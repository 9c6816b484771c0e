"""`cvt-nas models` and `cvt-nas profile`: output and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cvt_nas.cli import main
from cvt_nas.model.presets import list_models


def test_models_lists_every_preset_with_costs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list_models()
    cvt13 = next(r for r in rows if r["name"] == "cvt_13")
    assert cvt13["params"] == 19_997_480 and cvt13["macs"] == 4_566_089_216


def test_profile_json_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "cvt_13", "--set", "kv_stride=1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["params"], int) and isinstance(out["macs"], int)
    assert out["params"] == 19_997_480 and out["macs"] == 6_643_074_560


def test_profile_both_methods_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "cvt_micro", "--img-size", "28", "--num-classes", "5",
                 "--method", "both", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs_analytic"] == out["macs_fvcore"] == out["macs"]
    assert out["img_size"] == 28


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["profile", "cvt_14"], ["unknown model 'cvt_14'", "cvt_13", "cvt_micro"]),
        (["profile", "cvt_13", "--set", "heads=3"], ["unknown CvTConfig field", "num_heads"]),
        (["profile", "cvt_13", "--set", "kv_stride"], ["field=value"]),
        (["profile", "cvt_13", "--set", "num_heads=[1,5,6]"], ["num_heads", "divisible"]),
    ],
)
def test_profile_errors_are_one_line(argv: list[str], fragments: list[str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for frag in fragments:
        assert frag in err


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("argv", [["models"], ["search", "search_spaces/cvt_micro.yaml", "--dry-run"],
                                  ["--help"]])
def test_a_reader_that_left_ends_the_command_quietly(argv: list[str], buffered: bool) -> None:
    # `cvt-nas ... | head`: a real pipe whose reader is gone before the command writes, so
    # every write (or the final flush, when stdout is buffered) meets EPIPE.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "cvt_nas.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    # argparse's --help drops its own write errors (exit 0); otherwise the shell's 128 + SIGPIPE
    assert proc.returncode == (0 if argv == ["--help"] and not buffered else 141)
