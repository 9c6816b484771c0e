"""Sampler seeds: a single seeded run draws what it always drew; searches that share a study draw
different trials, even when started at the same moment with the same seed."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cvt_nas.cli import main
from cvt_nas.search import study as store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
# Only the smallest architecture (22,778 params) passes: nearly every trial is over budget and
# ends at once, so many trials take a few seconds.
NEARLY_ALL_OVER = ["--set", "constraints.max_params=22.8k"]

# What `cvt-nas search tests/data/tiny_space.yaml --trials 6 --sampler S --seed 7` drew before
# the per-worker seed streams existed (train.lr identifies each draw).
BEFORE = {
    "random": [0.001695701542869797, 0.0012027517441476289, 0.0022118455768637127,
               0.0018061367701231843, 0.0022739324134894256, 0.0016100138057632697],
    "tpe": [0.001695701542869797, 0.0012027517441476289, 0.0010599858541839528,
            0.0039544807455355, 0.003856663072005138, 0.0038691993778424173],
    "nsga2": [0.001695701542869797, 0.0012027517441476289, 0.0022118455768637127,
              0.0018061367701231843, 0.0012027517441476289, 0.0018061367701231843],
}
FIRST_RANDOM = {"embed_dim_s2": 32, "embed_dim_s3": 64, "kv_stride_s2": 2, "mlp_ratio_s1": 2,
                "mlp_ratio_s2": 2, "mlp_ratio_s3": 4, "train.lr": 0.001695701542869797}


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_single_seeded_run_draws_what_it_drew_before(tmp_path: Path, sampler: str) -> None:
    out = tmp_path / sampler
    assert main(["search", str(TINY), "--out", str(out), "--trials", "6", "--sampler", sampler,
                 "--seed", "7", "--threads", "1", "--quiet", *NEARLY_ALL_OVER]) == 0
    drawn = [json.loads(p) for p in pd.read_csv(out / "trials.csv")["params_sampled"]]
    assert [d["train.lr"] for d in drawn] == BEFORE[sampler]
    if sampler == "random":
        assert drawn[0] == FIRST_RANDOM


def test_a_resumed_seeded_run_does_not_replay_the_draws_it_already_has(tmp_path: Path) -> None:
    """Before, a resumed random search drew its first trials again (copied, not retrained, but
    each one a wasted slot of --trials)."""
    args = ["search", str(TINY), "--out", str(tmp_path / "r"), "--sampler", "random", "--seed",
            "7", "--threads", "1", "--quiet", *NEARLY_ALL_OVER]
    assert main([*args, "--trials", "3"]) == 0
    assert main([*args, "--trials", "6"]) == 0
    drawn = [json.loads(p) for p in pd.read_csv(tmp_path / "r" / "trials.csv")["params_sampled"]]
    assert [d["train.lr"] for d in drawn[:3]] == BEFORE["random"][:3]
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) == 6


def _search_after(barrier, out: str, url: str) -> None:  # noqa: ANN001 - a multiprocessing.Barrier
    barrier.wait()
    code = main(["search", str(TINY), "--out", out, "--storage", url, "--trials", "20",
                 "--sampler", "random", "--seed", "3", "--threads", "1", "--quiet",
                 *NEARLY_ALL_OVER])
    raise SystemExit(code)


@pytest.mark.slow  # two processes: about a minute on a busy 2-core machine
def test_two_searches_started_together_with_one_seed_draw_no_trial_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_search_after, args=(barrier, str(tmp_path / f"out{i}"), url))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0, 0]
    study = optuna.load_study(study_name="tiny", storage=store.make_storage(url, None))
    drawn = [t for t in study.get_trials(deepcopy=False) if t.params]
    workers = {t.user_attrs["worker"] for t in drawn}
    assert len(workers) == 2  # both searches drew trials
    keys = [json.dumps(t.params, sort_keys=True) for t in drawn]
    assert len(keys) >= 20 and len(set(keys)) == len(keys)
