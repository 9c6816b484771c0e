"""Trial records: the flat schema, infeasible trials, per-block values, tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cvt_nas.model.config import STAGE_FIELDS, CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.presets import get_config
from cvt_nas.results import (
    arch_columns,
    arch_string,
    epochs_frame,
    history_rows,
    make_record,
    records_frame,
    to_latex,
    to_markdown,
)
from cvt_nas.training.config import get_recipe
from cvt_nas.training.trainer import TrialResult

MICRO = get_config("cvt_micro")
TRAIN = get_recipe("reduced", epochs=3, img_size=32, seed=7)


def _result(status: str = "complete", top1: float = 81.5) -> TrialResult:
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_top1": top1 - 3 + e, "val_top5": 98.0,
                "lr": 1e-3, "time_s": 4.0} for e in (1, 2, 3)]
    return TrialResult(status=status, params=123_456, macs=7_890_000, val_top1=top1,
                       val_top5=98.0, test_top1=None, test_top5=None, train_loss=0.7, epochs=3,
                       wall_time_s=12.5, images_per_s=700.0, seed=7, history=history,
                       device="cpu", threads=2)


def test_infeasible_record_takes_costs_from_the_config_at_the_trial_image_size():
    cfg = MICRO.replace(img_size=64)  # the trial trains at TRAIN.img_size = 32
    rec = make_record(study="s", trial=4, backend="optuna", model_cfg=cfg, train_cfg=TRAIN,
                      result=None, reason="macs over budget")
    cost = analytic_cost(cfg, 32)
    assert (rec["params"], rec["macs"]) == (cost.params, cost.macs)
    assert rec["macs"] != analytic_cost(cfg).macs  # not at the config's own 64 px
    assert rec["status"] == "infeasible" and rec["reason"] == "macs over budget"
    assert rec["epochs"] == 0 and rec["val_top1"] is None and rec["seed"] == 7
    assert rec["arch_id"] == cfg.arch_id()
    assert CvTConfig.from_dict(json.loads(rec["arch"])) == cfg
    json.dumps(rec)  # plain values only


def test_complete_record_copies_the_result_and_flattens_every_field():
    rec = make_record(study="s", trial=0, backend="ray", model_cfg=MICRO, train_cfg=TRAIN,
                      result=_result(), extra={"sampler": "nsga2"})
    assert rec["status"] == "complete"
    assert (rec["params"], rec["macs"], rec["val_top1"]) == (123_456, 7_890_000, 81.5)
    assert rec["device"] == "cpu" and rec["wall_time_s"] == 12.5 and rec["sampler"] == "nsga2"
    assert [rec[f"depth_s{s}"] for s in (1, 2, 3)] == list(MICRO.depth)
    for name in arch_columns(MICRO.num_stages):
        assert name in rec, name
    assert {f"train.{k}" for k in TRAIN.to_dict()} <= set(rec)
    assert rec["train.lr"] == TRAIN.lr and rec["train.epochs"] == 3
    assert rec["train_loss"] == 0.7  # the metric, apart from the train.* config columns


def test_record_rejects_unknown_status_and_clashing_extra_columns():
    with pytest.raises(ValueError, match="unknown status 'done'"):
        make_record(study="s", trial=0, backend="x", model_cfg=MICRO, train_cfg=TRAIN,
                    result=None, status="done")
    with pytest.raises(ValueError, match="'macs' clashes"):
        make_record(study="s", trial=0, backend="x", model_cfg=MICRO, train_cfg=TRAIN,
                    result=None, extra={"macs": 1})


def test_status_override_and_image_size_from_the_model_when_training_keeps_it():
    train = TRAIN.replace(img_size=None)
    rec = make_record(study="s", trial=1, backend="x", model_cfg=MICRO, train_cfg=train,
                      result=_result("pruned"), status="diverged")
    assert rec["status"] == "diverged"
    bare = make_record(study="s", trial=2, backend="x", model_cfg=MICRO, train_cfg=train,
                       result=None)
    assert bare["macs"] == analytic_cost(MICRO, MICRO.img_size).macs


def test_per_block_values_become_readable_strings_and_survive_parquet(tmp_path):
    blocky = MICRO.replace(kv_stride=[2, 2, [1, 2, 2]], mlp_ratio=[4.0, [2.0, 4.0], 4.0])
    recs = [make_record(study="s", trial=i, backend="x", model_cfg=c, train_cfg=TRAIN,
                        result=_result())
            for i, c in enumerate([MICRO, blocky])]
    assert recs[1]["kv_stride_s3"] == "1,2,2" and recs[1]["mlp_ratio_s2"] == "2,4"
    df = records_frame(recs)
    assert df["kv_stride_s3"].tolist() == ["2", "1,2,2"]
    assert df["kv_stride_s1"].dtype == "Int64" and df["mlp_ratio_s1"].dtype == "float64"
    df.to_parquet(tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["mlp_ratio_s2"].tolist() == ["4", "2,4"]
    assert arch_string(back.iloc[1]) == (
        "dim 32/64/128; depth 1/2/3; heads 1/2/4; mlp 4/(2,4)/4; kv 2/2/(1,2,2); embed k3s2; "
        "proj dw_bn k3; cls s3")


def test_frame_has_every_schema_column_in_order_even_for_infeasible_only():
    rec = make_record(study="s", trial=0, backend="x", model_cfg=MICRO, train_cfg=TRAIN,
                      result=None)
    df = records_frame([rec])
    assert list(df.columns[:6]) == ["study", "trial", "backend", "status", "reason", "arch_id"]
    stage_cols = [c for c in df.columns if c.rsplit("_s", 1)[0] in STAGE_FIELDS]
    assert stage_cols[:3] == ["embed_type_s1", "embed_type_s2", "embed_type_s3"]
    assert df.columns[-2:].tolist() == ["arch", "error"]
    full = records_frame([make_record(study="s", trial=1, backend="x", model_cfg=MICRO,
                                      train_cfg=TRAIN, result=_result())])
    assert df.columns.tolist() == full.columns.tolist()
    assert df["val_top1"].isna().all() and df["val_top1"].dtype == "float64"


def test_history_rows_make_the_long_epoch_table():
    rows = history_rows("s", 3, _result().history)
    df = epochs_frame(rows)
    assert df.columns.tolist()[:3] == ["study", "trial", "epoch"]
    assert df["epoch"].tolist() == [1, 2, 3] and set(df["trial"]) == {3}
    assert df["val_top1"].tolist() == [79.5, 80.5, 81.5]
    assert history_rows("s", 3, None) == []


def test_arch_string_of_cvt13_reads_like_the_paper_table():
    assert arch_string(get_config("cvt_13")) == (
        "dim 64/192/384; depth 1/2/10; heads 1/3/6; mlp 4; kv 2; embed k7s4/k3s2/k3s2; "
        "proj dw_bn k3; cls s3")


def test_markdown_and_latex_tables():
    df = pd.DataFrame({"trial": [1, 2], "val top-1 (%)": [81.234, float("nan")],
                       "arch": ["a|b", "x_y & 50%"]})
    assert to_markdown(df) == (
        "| trial | val top-1 (%) | arch |\n"
        "| ---: | ---: | :--- |\n"
        "| 1 | 81.23 | a\\|b |\n"
        "| 2 |  | x_y & 50% |")
    assert to_latex(df, caption="Front", label="tab:front") == "\n".join([
        r"\begin{table}[t]", r"\centering", r"\caption{Front}", r"\label{tab:front}",
        r"\begin{tabular}{rrl}", r"\toprule", r"trial & val top-1 (\%) & arch \\", r"\midrule",
        r"1 & 81.23 & a|b \\", r"2 &  & x\_y \& 50\% \\", r"\bottomrule", r"\end{tabular}",
        r"\end{table}"])


# -- the one record builder: invalid samples, a known cost, reuse ----------------------------


def test_an_invalid_architecture_gets_a_record_without_a_config():
    rec = make_record(study="s", trial=5, backend="optuna", model_cfg=None, train_cfg=TRAIN,
                      result=None, reason="invalid architecture: depth", extra={"worker": "w"})
    assert (rec["status"], rec["arch_id"], rec["arch"], rec["params"]) == (
        "infeasible", None, None, None)
    assert rec["epochs"] == 0 and rec["img_size"] == 32 and rec["seed"] == 7
    assert rec["train.lr"] == TRAIN.lr and rec["worker"] == "w"
    bare = make_record(study="s", trial=6, backend="optuna", model_cfg=None, train_cfg=None,
                       result=None, reason="invalid training config")
    assert bare["img_size"] is None and bare["reason"] == "invalid training config"
    df = records_frame([rec, bare, make_record(study="s", trial=7, backend="optuna",
                                               model_cfg=MICRO, train_cfg=TRAIN, result=None)])
    assert df["arch_id"].isna().tolist() == [True, True, False]
    assert df["depth_s1"].isna().tolist() == [True, True, False]


def test_a_given_cost_is_used_instead_of_computing_it():
    from cvt_nas.model.cost import Cost

    rec = make_record(study="s", trial=0, backend="x", model_cfg=MICRO, train_cfg=TRAIN,
                      result=None, cost=Cost(params=11, macs=22, img_size=32))
    assert (rec["params"], rec["macs"]) == (11, 22)  # not analytic_cost's numbers
    ran = make_record(study="s", trial=1, backend="x", model_cfg=MICRO, train_cfg=TRAIN,
                      result=_result(), cost=Cost(params=11, macs=22, img_size=32))
    assert (ran["params"], ran["macs"]) == (123_456, 7_890_000)  # the trained model's own


def test_a_reused_record_names_its_source_and_spends_no_time():
    from cvt_nas.results import reused_record

    source = make_record(study="t7", trial=3, backend="ablate", model_cfg=MICRO,
                         train_cfg=TRAIN, result=_result(), extra={"row": "b"})
    rec = reused_record(source, study="t8", trial=9, row="a")
    assert (rec["study"], rec["trial"], rec["row"], rec["reused_from"]) == ("t8", 9, "a", "t7#3")
    assert rec["wall_time_s"] == 0.0 and rec["reason"] == "same run as t7#3: its result, not retrained"
    assert rec["val_top1"] == source["val_top1"] and rec["arch"] == source["arch"]
    assert rec["finished_at"] >= source["finished_at"]
    assert source["trial"] == 3 and "reused_from" not in source  # the source is not changed
    worded = reused_record(source, study="t7", trial=4, reason="same parameters as trial 3")
    assert worded["reason"] == "same parameters as trial 3"
