"""`cvt-nas search SPACE --backend table:DIR`: a simulated search, checked against the table."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from cvt_nas.bench import load
from cvt_nas.cli import main
from cvt_nas.results import load_meta
from cvt_nas.search.optuna_backend import stream_seed
from cvt_nas.search.study import open_study
from cvt_nas.search.table_backend import prepare, table_space
from cvt_nas.space import load_space, parse_space
from cvt_nas.space.sampling import RandomSuggest

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
    assert (df["status"] == "pruned").sum() >= 1  # the median pruner did stop some
    b = load(tiny_table)
    for r in df[df["status"] == "pruned"].itertuples():
        assert r.wall_time_s == b.query(r.arch_id, epoch=int(r.epochs), seed=r.seed).time_s


def test_a_resumed_simulated_study_continues_its_clock(tiny_table, tmp_path):
    first = _search(tiny_table, tmp_path / "r", "--trials", "8", "--seed", "2")
    both = _search(tiny_table, tmp_path / "r", "--trials", "14", "--seed", "2")
    assert len(both) == 14
    assert both["sim_time_s"].iloc[7] == pytest.approx(first["sim_time_s"].max())
    assert both["sim_time_s"].is_monotonic_increasing


def _intervals(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial's simulated [start, end], in trial (= ask) order."""
    df = df.sort_values("trial")
    cost = df["wall_time_s"].fillna(0.0)
    return pd.DataFrame({"trial": df["trial"], "start": df["sim_time_s"] - cost,
                         "end": df["sim_time_s"], "cost": cost})


@pytest.fixture(scope="module")
def parallel_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """The same 3-worker simulated search twice (TPE, median pruner on val_top1)."""
    base = tmp_path_factory.mktemp("parallel")
    flags = ("--trials", "30", "--seed", "5", "--sampler", "tpe", "--objectives",
             "val_top1:max", "--pruner", "median", "--n-workers", "3")
    for name in ("a", "b"):
        _search(ROOT / "tests" / "data" / "tiny_bench", base / name, *flags)
    return base / "a", base / "b"


def test_simulated_workers_overlap_in_time_and_ask_in_time_order(parallel_dirs):
    df = pd.read_parquet(parallel_dirs[0] / "trials.parquet")
    assert len(df) == 30
    iv = _intervals(df)
    # trial numbers are handed out by the asks, so asks happened in simulated-time order
    assert iv["start"].is_monotonic_increasing
    busy = iv[iv["cost"] > 0]
    events = sorted([(t, 1) for t in busy["start"]] + [(t, -1) for t in busy["end"]],
                    key=lambda e: (e[0], e[1]))  # an end at t frees its worker before a start
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3  # three workers busy at once, never more
    for worker, own in df.sort_values("trial").groupby("worker"):  # one trial at a time each
        mine = _intervals(own)
        assert (mine["start"].to_numpy()[1:] >= mine["end"].to_numpy()[:-1] - 1e-9).all(), worker
    assert set(df["worker"]) == {"sim:0", "sim:1", "sim:2"}
    total = busy["cost"].sum()
    assert total / 3 <= iv["end"].max() < total  # faster than one worker, at most 3x
    meta = load_meta(parallel_dirs[0])
    assert meta["simulated"]["workers"] == 3
    assert meta["simulated"]["time_s"] == pytest.approx(iv["end"].max())


def test_the_pruner_sees_exactly_the_trials_finished_by_each_report_s_simulated_time(
        parallel_dirs, tiny_table):
    """Brute force over every epoch report of the 3-worker search: Optuna's median pruner (3
    startup trials) must prune exactly when the trial's best value so far is below the median,
    at that epoch, of the trials complete by the report's simulated time, and no others."""
    df = pd.read_parquet(parallel_dirs[0] / "trials.parquet").sort_values("trial")
    curves = pd.read_parquet(parallel_dirs[0] / "epochs.parquet")
    b = load(tiny_table)
    iv = _intervals(df).set_index("trial")
    complete = df[df["status"] == "complete"]
    value = {(t, e): v for t, e, v in zip(curves["trial"], curves["epoch"], curves["val_top1"],
                                          strict=True)}
    checked = pruned_seen = 0
    for r in df[df["status"].isin(["complete", "pruned"]) & df["reused_from"].isna()].itertuples():
        for epoch in range(1, int(r.epochs) + 1):
            at = iv.loc[r.trial, "start"] + b.query(r.arch_id, epoch=epoch, seed=r.seed).time_s
            ends = iv.loc[complete["trial"], "end"].drop(r.trial, errors="ignore")
            if np.isclose(ends, at, rtol=0, atol=1e-9).any():
                continue  # a tie (two runs of one architecture at once): order by worker index
            peers = [value[(t, epoch)] for t in ends[ends < at].index]
            best = max(value[(r.trial, e)] for e in range(1, epoch + 1))
            should = len(peers) >= 3 and best < np.percentile(peers, 50)
            last = epoch == r.epochs
            assert should == (last and r.status == "pruned"), (r.trial, epoch, peers, best)
            checked += 1
            pruned_seen += should
    assert checked >= 15 and pruned_seen >= 1  # 22 reports and 3 prunes with these seeds


def test_a_parallel_simulated_search_is_reproducible(parallel_dirs):
    a, b = (pd.read_parquet(d / "trials.parquet").sort_values("trial") for d in parallel_dirs)
    cols = ["trial", "status", "arch_id", "seed", "params_sampled", "val_top1", "sim_time_s"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True),
                                  b[cols].reset_index(drop=True))


def test_one_simulated_worker_is_the_one_worker_search(tiny_table, tmp_path):
    flags = ("--trials", "12", "--seed", "4", "--sampler", "random")
    one = _search(tiny_table, tmp_path / "one", *flags).sort_values("trial")
    again = _search(tiny_table, tmp_path / "again", *flags, "--n-workers", "1")
    assert list(one["params_sampled"]) == list(again.sort_values("trial")["params_sampled"])
    iv = _intervals(one)
    assert (iv["start"].to_numpy()[1:] == iv["end"].to_numpy()[:-1]).all()  # back to back


def test_a_resumed_parallel_simulated_study_starts_its_workers_at_its_clock(tiny_table,
                                                                              tmp_path):
    first = _search(tiny_table, tmp_path / "r", "--trials", "9", "--seed", "2", "--n-workers", "3")
    both = _search(tiny_table, tmp_path / "r", "--trials", "18", "--seed", "2", "--n-workers", "3")
    assert len(both) == 18
    clock = first["sim_time_s"].max()
    later = _intervals(both)
    later = later[later["trial"] >= 9]
    assert (later["start"] >= clock - 1e-9).all() and later["start"].min() == pytest.approx(clock)


def test_wrong_uses_are_one_line_errors(tiny_table, tmp_path, capsys):
    cases = [
        (["search", str(ROOT / "search_spaces" / "cvt_micro.yaml"), "--backend",
          f"table:{tiny_table}"], "section differs from the space the table"),
        (["search", TINY, "--backend", f"table:{tiny_table}", "--deterministic"],
         "--deterministic: a --backend table search is reproducible from its --seed already"),
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


def test_a_resumed_parallel_simulated_study_does_not_replay_its_first_draws(tiny_table,
                                                                            tmp_path):
    """Each simulated worker of a resumed run samples from a stream of its own: with a random
    sampler, worker i's draws after the resume are not its draws of the first run again."""
    flags = ("--seed", "2", "--n-workers", "3", "--sampler", "random")
    first = _search(tiny_table, tmp_path / "r", "--trials", "9", *flags)
    both = _search(tiny_table, tmp_path / "r", "--trials", "18", *flags).sort_values("trial")
    later = both[both["trial"] >= 9]
    for worker in ("sim:0", "sim:1", "sim:2"):
        before = list(first.sort_values("trial").query("worker == @worker")["params_sampled"])
        after = list(later.query("worker == @worker")["params_sampled"])
        assert before and after
        n = min(len(before), len(after))
        assert after[:n] != before[:n], worker
    assert later["params_sampled"].iloc[0] != first.sort_values("trial")["params_sampled"].iloc[0]


def test_tighter_constraints_map_draws_onto_the_table_architectures_that_meet_them(tiny_table):
    b = load(tiny_table)
    raw = yaml.safe_load(Path(TINY).read_text())
    limit = int(b.archs["params"].median())
    raw["constraints"]["max_params"] = limit
    plain = dataclasses.replace(parse_space(raw, source="tight.yaml"), train=())
    space = table_space(plain, b)
    over = set(b.archs.loc[b.archs["params"] > limit, "arch_id"])
    mapped = moved = 0
    for k in range(300):
        drawn = plain.sample(RandomSuggest(random.Random(k)))
        if drawn.model is None or plain.violations(drawn):
            continue  # refused by the gate, as in a real search
        got = space.sample(RandomSuggest(random.Random(k)))  # the same draw, mapped
        mapped += 1
        assert got.model is not None and not space.violations(got.model)
        assert got.model.arch_id() not in over
        moved += b.nearest(drawn.params)[0] in over  # where it went before the constraint
    assert mapped >= 20 and moved >= 1


def test_trained_and_simulated_trials_never_share_a_study(tiny_table, table_copy):
    objectives = {"val_top1": "max", "macs": "min"}
    space = load_space(TINY)
    sim = table_space(space, load(tiny_table))
    storage = optuna.storages.InMemoryStorage()
    open_study(storage, "real", objectives, space=space)
    with pytest.raises(ValueError, match=r"study 'real' holds trained trials.*new --study name"):
        open_study(storage, "real", objectives, space=sim)
    open_study(storage, "sim", objectives, space=sim)
    with pytest.raises(ValueError, match=r"'sim' holds simulated \(--backend table\) trials"):
        open_study(storage, "sim", objectives, space=space)
    manifest = json.loads((table_copy / "manifest.json").read_text())
    manifest["sample_seed"] = 7  # another table of the same space
    (table_copy / "manifest.json").write_text(json.dumps(manifest))
    other = table_space(space, load(table_copy))
    with pytest.raises(ValueError, match="simulated its trials on another table"):
        open_study(storage, "sim", objectives, space=other)
    open_study(storage, "sim", objectives, space=sim)  # its own table resumes


def test_a_simulated_study_stamped_before_tables_were_resumes(tiny_table, tmp_path):
    out = tmp_path / "old"
    _search(tiny_table, out, "--trials", "3", "--seed", "1")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    sid = storage.get_study_id_from_name("tiny")
    stamp = storage.get_study_user_attrs(sid)["space"]
    assert stamp.pop("table") == load(tiny_table).identity
    storage.set_study_user_attr(sid, "space", stamp)  # as an older cvt-nas left it
    assert len(_search(tiny_table, out, "--trials", "5", "--seed", "1")) == 5
    assert storage.get_study_user_attrs(sid)["space"]["table"] == load(tiny_table).identity


def test_study_yaml_created_is_when_this_study_began_not_an_older_stamp(tiny_table, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.yaml").write_text("created: '2020-01-01T00:00:00+00:00'\n")  # another study's
    before = datetime.now(UTC).replace(microsecond=0)
    _search(tiny_table, out, "--trials", "3")
    created = datetime.fromisoformat(yaml.safe_load((out / "study.yaml").read_text())["created"])
    assert before <= created <= datetime.now(UTC)
    _search(tiny_table, out, "--trials", "5")  # resumed: the same study, the same stamp
    again = yaml.safe_load((out / "study.yaml").read_text())["created"]
    assert datetime.fromisoformat(again) == created


def test_constraints_that_exclude_the_whole_table_are_one_error_before_the_search(table_copy):
    archs = pd.read_parquet(table_copy / "archs.parquet")
    small = archs["params"] <= archs["params"].min()  # keep only the larger ones in the table
    archs[~small].to_parquet(table_copy / "archs.parquet")
    runs = pd.read_parquet(table_copy / "table.parquet")
    runs[~runs["arch_id"].isin(archs.loc[small, "arch_id"])].to_parquet(
        table_copy / "table.parquet")
    raw = yaml.safe_load(Path(TINY).read_text())
    raw["constraints"]["max_params"] = int(archs.loc[~small, "params"].min()) - 1  # the space
    with pytest.raises(ValueError, match=r"tight.yaml: its constraints exclude every sampled "
                                         r"architecture of .*; loosen them"):  # has others
        prepare(parse_space(raw, source="tight.yaml"), table_copy, {"val_top1": "max"}, 0)
