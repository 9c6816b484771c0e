"""Ablation experiments: YAML loading and errors, paper-scale costs, the table arithmetic."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

from cvt_nas.ablation.experiment import cost_rows, load_experiment
from cvt_nas.ablation.table import build_table
from cvt_nas.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ALL = sorted(EXPERIMENTS.glob("table*.yaml"))  # the paper tables (search_algorithms.yaml is a
# study of search methods on CvT-Bench, read by experiments/search_algorithms.py)
# The paper rounds params to 0.1 M (or 1 M) and FLOPs to 0.01 G; its Table 7 stride-1 figure
# (6.55 G) sits 1.4% below an exact count (cvt-paper.md), so 1.5% is the tolerance the issue asks.
TOL = 0.015


def _costs(name: str) -> dict[str, dict]:
    return {r["row"]: r for r in cost_rows(load_experiment(EXPERIMENTS / f"{name}.yaml"))}


def test_every_experiment_file_loads() -> None:
    names = {p.stem for p in ALL}
    assert {"table5_position_embedding", "table6_conv_token_embedding", "table7_kv_stride",
            "table8_conv_projection", "table2_architectures"} <= names
    for path in ALL:
        exp = load_experiment(path)
        assert set(exp.scales) == {"paper", "reduced"}
        assert exp.row(exp.baseline).run


def test_cvt13_baseline_costs_are_exact() -> None:
    costs = _costs("table7_kv_stride")
    assert costs["b"]["params"] == 19_997_480
    assert costs["b"]["macs"] == 4_566_089_216
    assert costs["b"]["img_size"] == 224


@pytest.mark.parametrize("row", ["a", "b", "c", "d"])
def test_table6_params_match_paper(row: str) -> None:
    c = _costs("table6_conv_token_embedding")[row]
    assert abs(c["params_err"]) <= TOL, (row, c["params"], c["paper_params_m"])


def test_table6_patch_embedding_param_counts() -> None:
    c = _costs("table6_conv_token_embedding")
    # 4/2/2 patches without padding, every stage; a learned position embedding adds
    # 56*56*64 + 28*28*192 + 14*14*384 = 426,496 params to either embedding.
    assert c["a"]["params"] == 19_561_064
    assert c["b"]["params"] - c["a"]["params"] == 426_496
    assert c["c"]["params"] - c["d"]["params"] == 426_496


@pytest.mark.parametrize("row", ["a", "b"])
def test_table7_params_and_flops_match_paper(row: str) -> None:
    c = _costs("table7_kv_stride")[row]
    assert abs(c["params_err"]) <= TOL
    assert abs(c["macs_err"]) <= TOL, (row, c["macs"], c["paper_gflops"])


def test_table7_stride1_is_above_the_paper_figure() -> None:
    # Our exact count is 6.643 G; the paper's 6.55 G is 1.4% lower (see cvt-paper.md).
    c = _costs("table7_kv_stride")["a"]
    assert c["macs"] == 6_643_074_560
    assert 0.013 < c["macs_err"] < TOL


@pytest.mark.parametrize("row", ["a", "b", "c", "d", "e", "f"])
def test_table2_3_params_and_flops_match_paper(row: str) -> None:
    c = _costs("table2_architectures")[row]
    assert abs(c["params_err"]) <= TOL, (row, c["params"], c["paper_params_m"])
    assert abs(c["macs_err"]) <= TOL, (row, c["macs"], c["paper_gflops"])


def test_costs_only_command_writes_the_cost_columns(tmp_path: Path) -> None:
    out = tmp_path / "t7"
    assert main(["ablate", str(EXPERIMENTS / "table7_kv_stride.yaml"), "--costs-only",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv")
    assert list(table["row"]) == ["a", "b"]
    assert list(table["params"]) == [19_997_480, 19_997_480]
    assert list(table["macs"]) == [6_643_074_560, 4_566_089_216]
    assert list(table["paper_gflops"]) == [6.55, 4.53]
    assert "| a | k/v stride 1 |" in (out / "table.md").read_text()
    assert not (tmp_path / "studies.db").exists()  # nothing trained, no study


def test_costs_only_without_out_prints_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder would be results/ablations/<name>
    assert main(["ablate", str(EXPERIMENTS / "table7_kv_stride.yaml"), "--costs-only"]) == 0
    assert "| a | k/v stride 1 |" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()  # a trained table there is never overwritten


def test_paper_only_rows_have_no_costs() -> None:
    c = _costs("table5_position_embedding")
    assert c["a"]["params"] is None and c["b"]["params"] is None
    assert c["a"]["paper_top1"] == 79.8
    exp = load_experiment(EXPERIMENTS / "table5_position_embedding.yaml")
    assert [r.row for r in exp.runnable("reduced")] == ["c", "d", "e", "f"]
    with pytest.raises(ValueError, match="paper-only"):
        exp.model_config("a", "reduced")


def test_reduced_rows_keep_the_ablated_mechanism() -> None:
    t6 = load_experiment(EXPERIMENTS / "table6_conv_token_embedding.yaml")
    patch, conv = t6.model_config("a", "reduced"), t6.model_config("d", "reduced")
    assert patch.embed_type == ("patch",) * 3 and patch.embed_kernel == (2, 2, 2)
    assert conv.embed_kernel == (3, 3, 3) and conv.embed_padding == (1, 1, 1)
    assert patch.grid_sizes() == conv.grid_sizes() == [(16, 16), (8, 8), (4, 4)]
    assert t6.model_config("a", "paper").embed_kernel == (4, 2, 2)
    t7 = load_experiment(EXPERIMENTS / "table7_kv_stride.yaml")
    assert t7.model_config("a", "reduced").kv_stride == (1, 1, 1)
    assert t7.model_config("b", "reduced").kv_stride == (2, 2, 2)
    t8 = load_experiment(EXPERIMENTS / "table8_conv_projection.yaml")
    b = t8.model_config("b", "reduced")
    assert b.proj_method == ("dw_bn", "linear", "linear") and b.kv_stride == (2, 1, 1)
    tc = t8.train_config("a", "reduced", seed=2)
    assert tc.seed == 2 and tc.dataset == "fashion-mnist" and tc.epochs >= 1


def test_row_img_size_sets_the_training_size() -> None:
    exp = load_experiment(EXPERIMENTS / "table2_architectures.yaml")
    assert exp.train_config("d", "paper", seed=0).img_size == 384
    assert exp.train_config("b", "paper", seed=0).weight_decay == 0.1
    assert exp.train_config("a", "paper", seed=0).img_size == 224


# -- YAML errors ----------------------------------------------------------------------------

GOOD = """
name: t
title: T
baseline: b
columns: [kv]
scales:
  reduced: {base: cvt_micro, recipe: reduced, seeds: 2}
rows:
  - {row: a, label: one, model: {kv_stride: 1}, columns: {kv: 1}, paper: {top1: 1.0}}
  - {row: b, label: two, paper: {top1: 2.0}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_minimal_file_loads(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, GOOD))
    assert [r.row for r in exp.rows] == ["a", "b"] and exp.scales["reduced"].seeds == 2


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        ("title: T", "title: T\ntitel: X", r"unknown key\(s\) \['titel'\] in the top level; "
                                            r"allowed: .*'title'"),
        ("label: one,", "label: one, modle: {},", r"unknown key\(s\) \['modle'\] in rows\[0\]"),
        ("paper: {top1: 1.0}", "paper: {top_1: 1.0}", r"\['top_1'\] in row 'a'.paper"),
        ("seeds: 2", "seeds: 2, epochs: 3", r"\['epochs'\] in scales.reduced; allowed"),
        ("{kv_stride: 1}", "{kv_strid: 1}", r"row 'a' at scale 'reduced': unknown CvTConfig"),
        ("{kv_stride: 1}", "{proj_method: linear}", r"row 'a'.*'linear' projection"),
        ("base: cvt_micro", "base: cvt_nano", r"unknown model 'cvt_nano'"),
        ("  reduced:", "  tiny:", r"unknown scale 'tiny'"),
        ("baseline: b", "baseline: z", r"no row 'z'"),
        ("columns: {kv: 1}", "columns: {kv: 1, stride: 2}", r"column\(s\) \['stride'\]"),
        ("row: b,", "row: a,", r"duplicate row\(s\) \['a'\]"),
        ("title: T", "title: T\nrows: [", r"not valid YAML"),
        ("seeds: 2", "seeds: 0", r"seeds must be an integer >= 1"),
    ],
)
def test_bad_files_name_file_key_and_rule(tmp_path: Path, old: str, new: str,
                                          pattern: str) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ValueError, match=pattern) as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_baseline_cannot_be_paper_only(tmp_path: Path) -> None:
    text = GOOD.replace("{row: b, label: two,", "{row: b, label: two, run: false,")
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="baseline row 'b' is paper-only"):
        load_experiment(path)


def test_missing_file_and_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")
    path = _write(tmp_path, GOOD.replace("title: T", "title: T\ntitel: X"))
    assert main(["ablate", str(path), "--costs-only", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cvt-nas ablate: error:" in err and "titel" in err and "Traceback" not in err


# -- table arithmetic -----------------------------------------------------------------------


def test_table_mean_std_delta_and_sign(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, GOOD.replace("{top1: 1.0}", "{top1: 1.5}")))
    a, b = [70.0, 72.0, 71.0], [74.0, 73.0, 75.0]
    records = pd.DataFrame(
        [{"row": "a", "seed": i, "status": "complete", "val_top1": v, "params": 10, "macs": 20}
         for i, v in enumerate(a)]
        + [{"row": "b", "seed": i, "status": "complete", "val_top1": v, "params": 11, "macs": 21}
           for i, v in enumerate(b)]
        + [{"row": "b", "seed": 9, "status": "failed", "val_top1": None, "params": 11,
            "macs": 21}]
    )
    t = build_table(exp, "reduced", records).set_index("row")
    assert t.loc["a", "top1_mean"] == pytest.approx(statistics.mean(a))
    assert t.loc["a", "top1_std"] == pytest.approx(statistics.stdev(a))
    assert t.loc["b", "seeds"] == 3  # the failed run is not counted
    delta = statistics.mean(a) - statistics.mean(b)
    assert t.loc["a", "delta"] == pytest.approx(delta)
    se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
    assert t.loc["a", "delta_se"] == pytest.approx(se)
    assert t.loc["a", "paper_delta"] == pytest.approx(-0.5)
    assert t.loc["a", "same_sign"] is True or t.loc["a", "same_sign"] == True  # noqa: E712
    assert t.loc["a", "within_noise"] == (abs(delta) <= 2 * se)
    assert t.loc["b", "delta"] == 0.0 and pd.isna(t.loc["b", "same_sign"])
    # flip the paper's sign: our (negative) delta no longer agrees
    exp2 = load_experiment(_write(tmp_path, GOOD.replace("{top1: 1.0}", "{top1: 3.0}")))
    t2 = build_table(exp2, "reduced", records).set_index("row")
    assert t2.loc["a", "same_sign"] == False  # noqa: E712
    # equal means: a delta of 0 agrees with no sign
    tied = records.copy()
    tied.loc[tied["row"] == "a", "val_top1"] = b
    t3 = build_table(exp2, "reduced", tied).set_index("row")
    assert t3.loc["a", "delta"] == pytest.approx(0.0) and pd.isna(t3.loc["a", "same_sign"])


# -- the committed tables come from the committed studies -----------------------------------

ABLATIONS = Path(__file__).resolve().parents[2] / "results" / "ablations"
COMMITTED = ["table5_position_embedding", "table6_conv_token_embedding", "table7_kv_stride",
             "table8_conv_projection"]


@pytest.fixture(scope="module")
def committed_studies(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("abl") / "studies.db"
    db.write_bytes((ABLATIONS / "studies.db").read_bytes())  # a copy: reading never writes it
    return f"sqlite:///{db}"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_tables_rebuild_byte_identical_from_their_study(
        name: str, committed_studies: str, tmp_path: Path) -> None:
    from cvt_nas.ablation.runner import study_name
    from cvt_nas.ablation.table import table_markdown, table_records, write_table
    from cvt_nas.results import from_optuna

    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    tables = from_optuna(committed_studies, study_name(exp, "reduced"))
    records, epochs = table_records(tables, exp.scales["reduced"].seeds)
    table = build_table(exp, "reduced", records)
    write_table(exp, "reduced", table, tmp_path, records, epochs)
    for file in ("table.csv", "table.md", "records.csv", "epochs.csv"):
        assert (tmp_path / file).read_bytes() == (ABLATIONS / name / file).read_bytes(), file
    assert table_markdown(exp, "reduced", table) == (ABLATIONS / name / "table.md").read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no debris


def test_ablate_on_complete_studies_trains_nothing_and_writes_a_results_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's check: `cvt-nas ablate` on a copy of results/ablations rebuilds the table
    from the stored pairs, and the folder is also a results directory `report` reads."""
    from cvt_nas.results import load, load_meta

    (tmp_path / "studies.db").write_bytes((ABLATIONS / "studies.db").read_bytes())
    out = tmp_path / "table7_kv_stride"
    assert main(["ablate", str(EXPERIMENTS / "table7_kv_stride.yaml"), "--scale", "reduced",
                 "--out", str(out)]) == 0
    assert "training" not in capsys.readouterr().out
    for file in ("table.csv", "table.md", "records.csv", "epochs.csv"):
        assert (out / file).read_bytes() == (ABLATIONS / "table7_kv_stride" / file).read_bytes()
    trials = load(out)
    assert len(trials) == 10 and set(trials["status"]) == {"complete"}
    assert trials["reused_from"].notna().sum() == 5  # the baseline row came from Table 5
    meta = load_meta(out)
    assert meta["study"] == "table7_kv_stride-reduced" and meta["settings"]["seeds"] == 5
    assert main(["report", str(out)]) == 0
    assert "10 trials (10 complete)" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--set", "img_size=3"], ["row 'a'", "img_size 3", "leaves no tokens"]),
    (["--set", "device=cuda:64"], ["--set device", "'cuda:64'"]),
    pytest.param(["--set", "device=cuda"], ["--set device", "CUDA is not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_a_set_that_cannot_run_is_one_line_before_any_study(
        extra: list[str], fragments: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "studies.db"
    assert main(["ablate", str(EXPERIMENTS / "table6_conv_token_embedding.yaml"),
                 "--out", str(tmp_path / "t6"), "--storage", f"sqlite:///{storage}",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cvt-nas ablate: error: ")
    assert "table6_conv_token_embedding.yaml" in err
    for frag in fragments:
        assert frag in err
    assert not storage.exists() and not (tmp_path / "t6").exists()  # no study, no folder
