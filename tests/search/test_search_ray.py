"""`cvt-nas search --backend ray` against a real Ray head on 127.0.0.1 that the test starts
(the ``ray_head`` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import optuna
import pandas as pd

from cvt_nas.cli import main
from cvt_nas.common.storage import default_storage_url
from cvt_nas.results import from_ray
from cvt_nas.search import study as store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def test_ray_search_on_a_real_local_cluster_records_gates_and_resumes(
        ray_head: str, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    args = ["search", str(TINY), "--backend", "ray", "--address", ray_head, "--out", str(out),
            "--sampler", "random", "--seed", "2", "--cpus-per-trial", "1", "--quiet",
            "--set", "train.epochs=2"]
    assert main([*args, "--trials", "3"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    # random seed 2: feasible, over the 60k-param budget, feasible (as on the optuna backend)
    assert list(trials["trial"]) == [0, 1, 2]
    assert list(trials["status"]) == ["complete", "infeasible", "complete"]
    assert set(trials["backend"]) == {"ray"}
    assert trials.loc[1, "epochs"] == 0 and "> max_params 60k" in trials.loc[1, "reason"]
    hosts_pids = {w.rsplit(":", 1)[0] for w in trials["worker"]}
    assert f"{socket.gethostname()}:{os.getpid()}" not in hosts_pids  # ran in Ray workers
    study = optuna.load_study(study_name="tiny",
                              storage=store.make_storage(default_storage_url(out), None))
    budget = {t.number: t.constraints["budget"] for t in study.trials}
    assert budget[1] > 0 and budget[0] == budget[2] == 0  # set by the driver before training
    experiments = sorted((out / "ray").glob("ray-*"))
    assert len(experiments) == 1
    imported = from_ray(experiments[0]).trials  # the contract: record_json in the last report
    cols = ["trial", "status", "params", "macs", "val_top1", "arch_id"]
    pd.testing.assert_frame_equal(imported[cols], trials[cols], check_dtype=False)

    # Resume with --trials 4 and ASHA: one more trial (per-epoch reports); the first three are
    # not run again.
    time.sleep(1.1)  # a new experiment folder name (timestamped to the second)
    assert main([*args, "--trials", "4", "--pruner", "asha"]) == 0
    again = pd.read_csv(out / "trials.csv")
    assert list(again["trial"]) == [0, 1, 2, 3]
    keep = ["status", "val_top1", "finished_at"]
    pd.testing.assert_frame_equal(again[keep].iloc[:3], trials[keep])
    assert again.loc[3, "epochs"] == 2 and again.loc[3, "status"] == "complete"
    # the resumed driver's sampler is on a stream of its own, not seed 2's first draw again
    assert again.loc[3, "params_sampled"] != trials.loc[0, "params_sampled"]
    second = sorted((out / "ray").glob("ray-*"))[-1]
    reports = [json.loads(line) for line in
               next(second.glob("trial_00003_*/result.json")).read_text().splitlines()]
    statuses = [json.loads(r["record_json"])["status"] for r in reports]
    assert statuses == ["pruned", "complete"]  # what it would have left if ASHA had stopped it
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert list(epochs[epochs["trial"] == 3]["epoch"]) == [1, 2]
