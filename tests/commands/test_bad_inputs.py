"""Fuzzing the command line with malformed inputs: a bad input is exit code 2 and ONE line.

Hypothesis mutates valid search spaces, experiment files and train configs (values replaced by
random YAML, keys dropped or added, the text cut short) and draws random ``--set`` and flag
values. Each input goes to `cvt_nas.cli.main` in-process, always through a command that trains
nothing (``search --dry-run``, ``ablate --costs-only``, ``train --dry-run``, ``profile``), with a
per-case alarm. An input is either valid (exit 0) or refused with exit code 2 and one stderr line
that names the file, the flag or the field: never a traceback, never a hang. The issue's known
cases also run as real subprocesses for the true exit code. Run with ``-s`` to see the tally.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvt_nas.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
EXPERIMENT = ROOT / "experiments" / "table7_kv_stride.yaml"
TRAIN_DOC = {"model": {"preset": "cvt_micro", "depth": [1, 1, 1]}, "recipe": "reduced",
             "train": {"epochs": 1, "train_subset": 256, "batch_size": 64}}
CASE_SECONDS = 30  # far above any case here (well under a second); a hang ends the case
EXAMPLES = int(os.environ.get("CVT_NAS_FUZZ_EXAMPLES", "25"))
TALLY: Counter[str] = Counter()
# CVT_NAS_FUZZ_RANDOM=1 explores new inputs each run (CI replays one fixed sequence).
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("CVT_NAS_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(BaseException):
    """Raised by the per-case alarm (a BaseException: no `except Exception` swallows it)."""


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[None]:
    yield
    print("\nbad-input fuzzing: " + ", ".join(f"{k} {TALLY[k]}" for k in
          ("cases", "clear errors", "accepted (valid)", "tracebacks", "hangs")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``cvt-nas argv`` run in-process under the per-case alarm."""
    err = io.StringIO()

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(CASE_SECONDS)
    TALLY["cases"] += 1
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main(argv)
    except Hang:
        TALLY["hangs"] += 1
        pytest.fail(f"cvt-nas {' '.join(argv)}: no answer within {CASE_SECONDS} s")
    except BaseException:  # noqa: BLE001 - a traceback is what this suite looks for
        TALLY["tracebacks"] += 1
        pytest.fail(f"cvt-nas {' '.join(argv)} raised:\n{traceback.format_exc()}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def expect_clear(argv: list[str], names: tuple[str, ...], *, may_pass: bool = True) -> str:
    """Run ``argv``: exit 0 (a valid input, when allowed) or 2 with one stderr line naming one
    of ``names``; returns that line."""
    code, err = run_cli(argv)
    lines = err.strip().splitlines()
    if code == 0 and may_pass:
        TALLY["accepted (valid)"] += 1
        return ""
    assert code == 2, (argv, code, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err
    assert any(n in lines[0] for n in names), (names, lines[0])
    TALLY["clear errors"] += 1
    return lines[0]


# -- strategies -------------------------------------------------------------------------------

WORDS = ["", " ", "0", "-1", "1e400", "nan", "inf", "1.5M", "2e6", "cvt_13", "cvt_micro", "choice",
         "int", "float", "per", "stage", "block", "model", "../x", "a b", "[1, 2", "{a: 1",
         "fashion-mnist", "cifar10", "dw_bn", "gelu", "true", "~", "é", "x" * 200]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12),
    st.sampled_from([0, -1, 1, 2, 3, 64, 65, 10**8, 10**30, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS),
    st.text(max_size=8),
)
KEYS = st.one_of(st.sampled_from(["choice", "int", "float", "per", "step", "log", "preset",
                                  "depth", "embed_dim", "epochs", "lr", "max_params", "name",
                                  "trials", "objectives", "row", "model", "train", "seeds",
                                  "self", "source", "cls"]),
                 st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a YAML document (mapping keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """A copy of ``doc`` with one to three random edits (replace, delete, add a key, wrap)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap"]))
        if not path:
            if action == "replace":
                doc = data.draw(VALUES)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = data.draw(VALUES)
        elif action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent[last], dict):
            parent[last][data.draw(KEYS)] = data.draw(VALUES)
    return doc


def _document(base: Any, data: st.DataObject) -> str:
    """YAML text: the base mutated, or its text cut short or with junk inserted."""
    kind = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "cut", "junk"]))
    text = yaml.safe_dump(base, sort_keys=False)
    if kind == "cut":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "junk":
        at = data.draw(st.integers(0, len(text)))
        return text[:at] + data.draw(st.sampled_from(["{", "[", ":", "- ", "\t", "&a *b", "!!x ",
                                                      "\x00", "'", "%"])) + text[at:]
    return yaml.safe_dump(_mutate(base, data), sort_keys=False, allow_unicode=True)


def _write(workdir: Path, name: str, text: str) -> Path:
    path = workdir / name
    path.write_text(text, encoding="utf-8")
    return path


def _set_value(data: st.DataObject) -> str:
    """A ``--set`` value: YAML of a random value, or raw text (often malformed YAML)."""
    if data.draw(st.booleans()):
        return json.dumps(data.draw(VALUES), allow_nan=True)
    return data.draw(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)))


# -- files ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_malformed_search_spaces(workdir: Path, data: st.DataObject) -> None:
    path = _write(workdir, "space.yaml", _document(yaml.safe_load(TINY.read_text()), data))
    expect_clear(["search", str(path), "--dry-run"], (str(path),))


@FUZZ
@given(data=st.data())
def test_malformed_experiments(workdir: Path, data: st.DataObject) -> None:
    path = _write(workdir, "exp.yaml", _document(yaml.safe_load(EXPERIMENT.read_text()), data))
    expect_clear(["ablate", str(path), "--costs-only"], (str(path),))


@FUZZ
@given(data=st.data())
def test_malformed_train_configs(workdir: Path, data: st.DataObject) -> None:
    doc = _document(TRAIN_DOC, data)
    if "download" in doc:
        return  # a download would reach for the network
    path = _write(workdir, "run.yaml", doc)
    expect_clear(["train", "--config", str(path), "--dry-run"],
                 (str(path), "--", "dataset '"))


# -- flags ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_malformed_set_values(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(["depth", "embed_dim", "num_heads", "img_size", "kv_stride",
                                     "mlp_ratio", "act", "pos_embed", "heads", ""]))
    value = _set_value(data)
    expect_clear(["profile", "cvt_micro", "--set", f"{key}={value}"], ("--set",))
    space_key = data.draw(st.sampled_from(["train.epochs", "train.lr", "model.depth", "train",
                                           "constraints.max_params", "search.trials", "name",
                                           "model.embed_dim.x", "x.y"]))
    expect_clear(["search", str(TINY), "--dry-run", "--set", f"{space_key}={value}"],
                 ("--set", str(TINY)))
    train_key = data.draw(st.sampled_from(["epochs", "lr", "depth", "train.seed", "dataset",
                                           "model.act", "img_size", "nope"]))
    expect_clear(["train", "--model", "cvt_micro", "--dry-run", "--set", f"{train_key}={value}"],
                 ("--set", "flags", "dataset '"))


FLAGS = [("search", "--trials"), ("search", "--seed"), ("search", "--population-size"),
         ("search", "--objectives"), ("search", "--study"), ("search", "--device"),
         ("search", "--cpus-per-trial"), ("search", "--n-workers"), ("ablate", "--seeds"),
         ("ablate", "--n-workers"), ("train", "--epochs"), ("train", "--lr"),
         ("train", "--batch-size"), ("train", "--name"), ("profile", "--img-size")]


@FUZZ
@given(flag=st.sampled_from(FLAGS),
       value=st.one_of(st.sampled_from(WORDS), st.integers(-5, 5).map(str), st.text(max_size=8)))
def test_malformed_flag_values(flag: tuple[str, str], value: str) -> None:
    command, name = flag
    argv = {"search": ["search", str(TINY), "--dry-run"],
            "ablate": ["ablate", str(EXPERIMENT), "--costs-only"],
            "train": ["train", "--model", "cvt_micro", "--dry-run"],
            "profile": ["profile", "cvt_micro"]}[command]
    expect_clear([*argv, f"{name}={value}"], (name, "dataset '"))


# -- the cases, known inputs ----------------------------------------------------------

BAD_SPACE = TINY.read_text().replace("depth: [1, 1, 1]", "depth: [1, 1, {int: [1, 100000000]}]")
KNOWN = [
    (["search", str(TINY), "--trials", "0"], "--trials"),
    (["search", str(TINY), "--objectives", ""], "--objectives"),
    (["search", str(TINY), "--cpus-per-trial", "-1", "--backend", "ray"], "--cpus-per-trial"),
    (["search", str(TINY), "--study", "../../x"], "--study"),
    (["search", str(TINY), "--set", "model.depth=[1,2"], "--set"),
    (["ablate", str(EXPERIMENT), "--seeds", "0"], "--seeds"),
    (["profile", "cvt_13", "--set", "depth=100000000"], "--set"),
    (["train", "--model", "cvt_micro", "--set", "depth=[1,2"], "--set"),
]


@pytest.mark.parametrize(("argv", "flag"), KNOWN, ids=[" ".join(k[0][2:] or k[0]) for k in KNOWN])
def test_known_bad_flags_are_one_line(argv: list[str], flag: str) -> None:
    assert flag in expect_clear(argv, (flag,), may_pass=False)


def test_known_bad_files_are_one_line(workdir: Path) -> None:
    space = _write(workdir, "huge.yaml", BAD_SPACE)
    line = expect_clear(["search", str(space), "--dry-run"], (str(space),), may_pass=False)
    assert "model.depth[2].int: 100000000 is out of range for depth" in line
    empty = _write(workdir, "empty.yaml", "")
    line = expect_clear(["train", "--config", str(empty)], (str(empty),), may_pass=False)
    assert "the config file is empty" in line
    listed = _write(workdir, "listed.yaml", "model: cvt_micro\ntrain: [1, 2]\n")
    line = expect_clear(["train", "--config", str(listed)], (str(listed),), may_pass=False)
    assert "train: must be a mapping" in line


def test_a_bad_experiment_train_field_fails_before_any_study_exists(workdir: Path) -> None:
    exp = _write(workdir, "badtrain.yaml",
                 EXPERIMENT.read_text().replace("epochs: 2", "epochs: 0"))
    out = workdir / "tables" / "badtrain"
    line = expect_clear(["ablate", str(exp), "--out", str(out)], (str(exp),), may_pass=False)
    assert "row 'a' at scale 'reduced'" in line and "field 'epochs'" in line
    assert not (workdir / "tables" / "studies.db").exists() and not out.exists()


def test_known_cases_exit_2_from_a_real_process(workdir: Path) -> None:
    """The console's own exit code and stderr, four cases at once (real processes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    empty = _write(workdir, "empty2.yaml", "")
    cases = [["search", str(TINY), "--trials", "0"], ["ablate", str(EXPERIMENT), "--seeds", "0"],
             ["profile", "cvt_13", "--set", "depth=100000000"], ["train", "--config", str(empty)]]
    import torch

    if not torch.cuda.is_available():  # the device check needs a machine without CUDA
        cases.append(["search", str(TINY), "--device", "cuda"])
    procs = [subprocess.Popen([sys.executable, "-m", "cvt_nas.cli", *argv], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in cases]
    for argv, proc in zip(cases, procs, strict=True):
        _, err = proc.communicate(timeout=120)
        TALLY["cases"] += 1
        assert proc.returncode == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        TALLY["clear errors"] += 1

