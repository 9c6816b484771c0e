"""experiments/search_algorithms.py on the tiny table: every output, numbers in range."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location(
        "search_algorithms", ROOT / "experiments" / "search_algorithms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_study_command_writes_tables_curves_plot_and_readme(tiny_table, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(
        f"table: {tiny_table}\nspace: tests/data/tiny_space.yaml\nout: {tmp_path / 'out'}\n"
        "objectives: [val_top1:max, macs:min]\ntrials: 12\nseeds: 3\nmethods:\n"
        "  random: {sampler: random}\n  nsga2+pareto-sha: {sampler: nsga2, pruner: pareto-sha, "
        "population_size: 4}\n  random-3w: {sampler: random, workers: 3}\n")
    study = _study()
    assert study.main([str(config)]) == 0
    out = tmp_path / "out"
    for name in ("README.md", "table.md", "table.csv", "curves.csv", "runs.csv", "hv.png",
                 "kendall.csv", "noise.csv"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == ["random", "nsga2+pareto-sha", "random-3w"]
    assert list(table["workers"]) == [1, 1, 3]
    sim_h = table.set_index("method")["sim_h"]
    assert sim_h["random-3w"] < sim_h["random"]  # three workers: trials overlap in time
    assert ((table["hv@12"] > 0) & (table["hv@12"] <= 1.0)).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 9 and runs["hv"].between(0, 1).all()
    mean = runs.groupby("method", sort=False)["hv"].mean()
    assert table.set_index("method")["hv@12"].to_dict() == mean.to_dict()
    curves = pd.read_csv(out / "curves.csv")
    trials = curves[curves["axis"] == "trials"]
    assert (trials.groupby("method")["mean"].diff().dropna() >= -1e-12).all()  # never falls
    assert (curves["low"] <= curves["mean"] + 1e-12).all()
    readme = (out / "README.md").read_text()
    assert "## The half-budget target" in readme and "Kendall tau" in readme
    noise = pd.read_csv(out / "noise.csv")
    assert list(noise["archs"]) == [3, 3]  # the fixture's architectures run with 2 seeds
    std = noise.set_index("epoch")["seed_std"]
    assert f"epoch 2 (3 architectures, 6 runs): mean std across seeds {std[2]:.2f}" in readme


def test_a_bad_study_file_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("table: x\nspace: y\nout: z\nobjectives: [val_top1:max]\ntrials: 3\n"
                      "seeds: 1\nmethods: {nsga2: {sampler: nsga2}}\n")
    assert _study().main([str(config)]) == 2
    assert "a method named 'random' is the baseline" in capsys.readouterr().err


def test_a_method_s_workers_must_be_a_whole_number(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("table: x\nspace: y\nout: z\nobjectives: [val_top1:max]\ntrials: 3\n"
                      "seeds: 1\nmethods: {random: {sampler: random, workers: 0}}\n")
    assert _study().main([str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods.random.workers: 0; give a whole number >= 1" in err[0]


def test_many_workers_beating_random_on_the_clock_is_not_the_half_budget_target():
    """A method with W workers reaches random's final value in less simulated (wall-clock)
    time because it runs W trials at once: the README says so and does not count it; the same
    time on one worker, or half the trials, does count."""
    from types import SimpleNamespace

    study = _study()
    methods = [study.Method("random", "random"), study.Method("tpe-8w", "tpe", workers=8),
               study.Method("tpe", "tpe"), study.Method("nsga2", "nsga2")]
    cfg = {"trials": 4, "methods": methods, "table": "t", "objectives": {"val_top1": "max"}}
    table = pd.DataFrame({"method": [m.name for m in methods], "workers": [1, 8, 1, 1],
                          "seeds": 2, "hv@4": [0.9, 0.95, 0.95, 0.95],
                          "trials_to_random_final": [4, 4, 4, 2],
                          "time_to_random_final": [1.0, 0.2, 0.4, 0.9]})
    grid = [0.0, 1.0]
    facts = {"target": 0.9, "random_time_s": 1.0, "grid": grid,
             "trial_mean": {m.name: [0.5, 0.6, 0.7, 0.9] for m in methods},
             "time_mean": {m.name: [0.5, 0.9] for m in methods}}
    bench = SimpleNamespace(manifest={"space": "s"}, archs=[1, 2], epochs=2)
    front = SimpleNamespace(runs=2, points=[1])
    text = study.readme(cfg, bench, front, table, facts, pd.DataFrame(), pd.DataFrame(), "cmd")
    assert "The target is **met by tpe, nsga2**." in text  # tpe by time, nsga2 by trials
    line = next(x for x in text.splitlines() if x.startswith("- tpe-8w:"))
    assert "20% of random's simulated time" in line and "not a same-compute budget" in line
    assert "runs W trials at once" in text


@pytest.mark.parametrize(("body", "argv", "message"), [
    ("trials: 3\nseeds: 1\nmethods: {random: {sampler: random}}\n", ["--seeds", "0"],
     "seeds (or --seeds): 0; give a whole number >= 1"),
    ("trials: x\nseeds: 1\nmethods: {random: {sampler: random}}\n", [],
     "trials (or --trials): 'x'; give a whole number >= 1"),
    ("trials: 3\nseeds: 1\nmethods: [random]\n", [], "methods: give a mapping of names"),
    ("trials: 3\nseeds: 1\nmethods: {random: tpe}\n", [],
     "methods.random: 'tpe'; give a mapping such as {sampler: tpe}"),
])
def test_bad_counts_and_methods_are_one_line_exit_2(tmp_path, capsys, body, argv, message):
    config = tmp_path / "study.yaml"
    config.write_text("table: x\nspace: y\nout: z\nobjectives: [val_top1:max]\n" + body)
    assert _study().main([str(config), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
