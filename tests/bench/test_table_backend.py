"""`cvt-nas search SPACE --backend table:DIR`: a simulated search, checked against the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvt_nas.bench import load
from cvt_nas.cli import main
from cvt_nas.results import load_meta
from cvt_nas.search.optuna_backend import stream_seed

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "data" / "tiny_space.yaml")


def _search(table: Path, out: Path, *flags: str) -> pd.DataFrame:
    code = main(["search", TINY, "--backend", f"table:{table}", "--out", str(out), "--quiet",
                 *flags])
    assert code == 0
    return pd.read_parquet(out / "trials.parquet")


@pytest.fixture(scope="module")
def nsga2_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "nsga2"
    _search(ROOT / "tests" / "data" / "tiny_bench", out, "--trials", "40", "--seed", "3",
            "--sampler", "nsga2", "--population-size", "8")
    return out


def test_each_trial_is_answered_by_a_recorded_run_of_the_table(nsga2_dir, tiny_table):
    b, df = load(tiny_table), pd.read_parquet(nsga2_dir / "trials.parquet")
    assert len(df) == 40 and set(df["backend"]) == {"table"}
    done = df[df["status"] == "complete"]
    assert len(done) >= 10
    sampled = set(b.archs.loc[b.archs["source"] == "sample", "arch_id"])
    for r in done.itertuples():
        assert r.arch_id in sampled  # restricted to the table's sampled architectures
        seeds = b.seeds(r.arch_id)
        assert r.seed == seeds[stream_seed(3, r.arch_id) % len(seeds)]  # the documented seed
        q = b.query(r.arch_id, seed=r.seed)
        assert (r.val_top1, r.val_top5, r.test_top1, r.macs, r.params, r.epochs) == (
            q.val_top1, q.val_top5, q.test_top1, q.macs, q.params, 2)
        drawn = json.loads(r.params_sampled)
        assert r.table_distance == b.distance(drawn, r.arch_id)
        assert b.nearest(drawn) == (r.arch_id, r.table_distance)
        if pd.isna(r.reason):  # not a reused draw: it cost the run's recorded time
            assert r.wall_time_s == q.time_s
    assert (df.loc[df["status"] == "infeasible", "reason"].str.contains("max_params")).all()


def test_the_simulated_clock_is_the_sum_of_the_trials_recorded_times(nsga2_dir):
    df = pd.read_parquet(nsga2_dir / "trials.parquet").sort_values("trial")
    cost = df["wall_time_s"].fillna(0.0).to_numpy()
    assert np.allclose(df["sim_time_s"].to_numpy(), np.cumsum(cost))
    at = pd.to_datetime(df["finished_at"], format="ISO8601")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert all(abs(t - (epoch + timedelta(seconds=s))) < timedelta(milliseconds=1)
               for t, s in zip(at, df["sim_time_s"], strict=True))
    meta = load_meta(nsga2_dir)
    assert meta["simulated"]["time_s"] == pytest.approx(df["sim_time_s"].max())
    assert meta["settings"]["backend"].startswith("table:")


def test_the_pareto_front_matches_a_brute_force_front_of_the_table_rows(nsga2_dir, tiny_table):
    b, df = load(tiny_table), pd.read_parquet(nsga2_dir / "trials.parquet")
    done = df[df["status"] == "complete"]
    # brute force: the table rows the search visited, each dominated by none of the others
    rows = [(b.query(a, seed=s).val_top1, b.query(a, seed=s).macs, a)
            for a, s in set(zip(done["arch_id"], done["seed"], strict=True))]
    front = {a for v, m, a in rows
             if not any(v2 >= v and m2 <= m and (v2 > v or m2 < m) for v2, m2, _ in rows)}
    pareto = pd.read_csv(nsga2_dir / "pareto.csv")
    assert set(pareto["arch_id"]) == front
    assert (nsga2_dir / "pareto.png").stat().st_size > 0


def test_report_reads_a_simulated_study_from_its_journal(nsga2_dir, capsys):
    assert (nsga2_dir / "study.journal").is_file() and not (nsga2_dir / "study.db").exists()
    assert main(["report", str(nsga2_dir)]) == 0
    out = capsys.readouterr().out
    assert "40 trials" in out and "study.journal" in out and "| trial | val top-1 (%) |" in out


def test_pareto_sha_stops_trials_at_the_rung_and_charges_only_its_epochs(tiny_table, tmp_path):
    b = load(tiny_table)
    df = _search(tiny_table, tmp_path / "sha", "--trials", "30", "--seed", "1",
                 "--sampler", "random", "--pruner", "pareto-sha")
    pruned = df[df["status"] == "pruned"]
    assert len(pruned), "random draws on this table give trials behind the front at epoch 1"
    for r in pruned.itertuples():
        q = b.query(r.arch_id, epoch=1, seed=r.seed)
        assert r.epochs == 1 and r.val_top1 == q.val_top1 and r.wall_time_s == q.time_s
    epochs = pd.read_parquet(tmp_path / "sha" / "epochs.parquet")
    assert set(epochs.loc[epochs["trial"].isin(pruned["trial"]), "epoch"]) == {1}


def test_optuna_pruners_read_the_per_epoch_rows(tiny_table, tmp_path):
    df = _search(tiny_table, tmp_path / "median", "--trials", "20", "--seed", "0",
                 "--sampler", "random", "--objectives", "val_top1:max", "--pruner", "median")
    assert set(df["status"]) <= {"complete", "pruned", "infeasible"}
    b = load(tiny_table)
    for r in df[df["status"] == "pruned"].itertuples():
        assert r.wall_time_s == b.query(r.arch_id, epoch=int(r.epochs), seed=r.seed).time_s


def test_a_resumed_simulated_study_continues_its_clock(tiny_table, tmp_path):
    first = _search(tiny_table, tmp_path / "r", "--trials", "8", "--seed", "2")
    both = _search(tiny_table, tmp_path / "r", "--trials", "14", "--seed", "2")
    assert len(both) == 14
    assert both["sim_time_s"].iloc[7] == pytest.approx(first["sim_time_s"].max())
    assert both["sim_time_s"].is_monotonic_increasing


def test_wrong_uses_are_one_line_errors(tiny_table, tmp_path, capsys):
    cases = [
        (["search", str(ROOT / "search_spaces" / "cvt_micro.yaml"), "--backend",
          f"table:{tiny_table}"], "section differs from the space the table"),
        (["search", TINY, "--backend", f"table:{tiny_table}", "--n-workers", "2"],
         "--n-workers: --backend table runs its trials in this process"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["search", TINY, "--backend", "table:"]) == 2
    assert "choose optuna, ray or table:DIR" in capsys.readouterr().err


def test_latency_comes_from_the_table_and_must_be_measured(tiny_table, table_copy, tmp_path,
                                                           capsys):
    b = load(tiny_table)
    df = _search(tiny_table, tmp_path / "lat", "--trials", "12", "--objectives",
                 "val_top1:max,latency:min")
    done = df[df["status"] == "complete"]
    assert len(done) and all(r.latency == b.query(r.arch_id).latency_ms
                             for r in done.itertuples())
    archs = pd.read_parquet(table_copy / "archs.parquet")
    archs.loc[0, "latency_ms"] = float("nan")
    archs.to_parquet(table_copy / "archs.parquet")
    assert main(["search", TINY, "--backend", f"table:{table_copy}", "--objectives",
                 "val_top1:max,latency:min", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "has no latency_ms for 1 architectures yet" in capsys.readouterr().err
