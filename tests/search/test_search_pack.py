"""``cvt-nas search --pack K``: K trial loops in threads of one worker, admitted by the memory
model, on a real SQLite study. On this CPU-only machine the trials train on the CPU (the device
memory is the host's available memory); the CUDA side (streams, graphs) is checked by
scripts/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from conftest import cvt_nas_running, running_trials, stop, stopped_trials, wait_for

from cvt_nas.cli import main
from cvt_nas.common.proc import parse_tag
from cvt_nas.common.storage import default_storage_url
from cvt_nas.search import study as store
from cvt_nas.search.optuna_backend import SearchRun
from cvt_nas.search.trial import TrialSettings
from cvt_nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def _args(out: Path, *extra: str) -> list[str]:
    return ["search", str(TINY), "--out", str(out), "--trials", "4", "--pack", "2",
            "--sampler", "random", "--seed", "0", "--threads", "1", "--quiet",
            "--set", "constraints.max_params=1M", *extra]  # every trial trains


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny",
                             storage=store.make_storage(default_storage_url(out), None))


def _run(tmp_path: Path, **kw: Any) -> SearchRun:
    space = load_space(TINY, overrides={"constraints.max_params": "1M"})
    settings = TrialSettings(study="tiny", backend="optuna",
                             objectives={"val_top1": "max", "macs": "min"}, threads=1)
    url = default_storage_url(tmp_path)
    store.open_study(store.make_storage(url, None), "tiny", settings.objectives, space=space)
    return SearchRun(space=space, settings=settings, storage_url=url, trials=3,
                     sampler="random", seed=0, **kw)


def test_two_trial_threads_share_one_worker_and_record_how_they_ran(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert main(_args(out)) == 0
    trials = _study(out).get_trials(deepcopy=False)
    recorded = [t for t in trials if "record" in t.user_attrs]
    records = [t.user_attrs["record"] for t in recorded]
    assert len(records) == 4 and len({r["trial"] for r in records}) == 4  # none lost, none twice
    assert all(r["status"] == "complete" for r in records)
    assert len({r["params_sampled"] for r in records}) == 4  # the threads drew their own
    tags = Counter(t.user_attrs["worker"] for t in recorded)
    assert {tag.rpartition("#")[2] for tag in tags} == {"0", "1"}, tags  # both loops trained
    assert {parse_tag(tag).pid for tag in tags} == {os.getpid()}  # in this one process
    assert all(r["memory_estimate"] > 0 and r["retried_alone"] is False for r in records)
    assert max(r["co_tenants"] for r in records) == 1  # they ran side by side, at most two
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == sorted(r["trial"] for r in records)
    assert {"co_tenants", "memory_estimate", "retried_alone"} <= set(table.columns)
    meta = yaml.safe_load((out / "study.yaml").read_text())
    assert meta["settings"]["pack"] == 2


def test_pack_with_no_room_for_two_runs_trials_one_at_a_time(tmp_path: Path) -> None:
    """A capacity below one trial's estimate: the gate still runs each trial, alone."""
    from cvt_nas.search.optuna_backend import run_worker
    from cvt_nas.search.trial import PackedRunner
    from cvt_nas.training.packing import DeviceGate

    run = _run(tmp_path, runner=PackedRunner(DeviceGate(1, max_k=2, reserve=0.0)))
    ran = [0, 0]

    def loop(j: int) -> None:
        ran[j] = run_worker(run, j, thread=j)

    threads = [threading.Thread(target=loop, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    records = [t.user_attrs["record"] for t in _study(tmp_path).get_trials(deepcopy=False)
               if "record" in t.user_attrs]
    assert len(records) == 3 and sum(ran) >= 3
    assert [r["co_tenants"] for r in records] == [0, 0, 0]  # never two at once


def test_workers_sharing_a_device_pack_into_their_share_of_its_memory(tmp_path: Path) -> None:
    from cvt_nas.search.optuna_backend import packed_runner
    from cvt_nas.training.packing import device_capacity

    runner = packed_runner(_run(tmp_path, pack=2, device_share=4))
    expected = device_capacity("cpu") // 4 * 0.9  # the host's memory on this CPU machine
    assert runner.gate.capacity == pytest.approx(expected, rel=0.05)
    assert runner.gate.budget.max_k == 2


def test_a_loop_that_raises_stops_the_others_but_not_the_signal_handling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner that raises (not a failed trial: a bug) ends every loop of the worker and is
    raised; the process-wide STOP, which only signals set, stays clear."""
    from cvt_nas.common.pool import STOP
    from cvt_nas.search import optuna_backend
    from cvt_nas.search.trial import PackedRunner
    from cvt_nas.training.packing import DeviceGate

    class Broken(PackedRunner):
        def run(self, sample, g, report):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken runner")

    monkeypatch.setattr(optuna_backend, "packed_runner",
                        lambda run: Broken(DeviceGate(2**40, run.pack)))
    STOP.clear()
    with pytest.raises(RuntimeError, match="broken runner"):
        optuna_backend.run_threads(_run(tmp_path, pack=2), 0)
    assert not STOP.is_set()
    states = Counter(t.state.name for t in _study(tmp_path).get_trials(deepcopy=False))
    assert states["RUNNING"] == 0 and states["FAIL"] >= 1 and sum(states.values()) <= 4


@pytest.mark.parametrize(("extra", "message"), [
    (["--pack", "0"], "--pack: expected an integer >= 1"),
    (["--deterministic"], "--pack runs trials side by side in threads"),
    (["--backend", "ray"], "--pack is for the optuna backend; ray places trials itself"),
    (["--backend", "table:nowhere"], "--pack is for the optuna backend; table places trials"),
    (["--objectives", "val_top1:max,latency:min"], "--pack: the latency objective is measured"),
])
def test_bad_pack_settings_are_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(_args(tmp_path / "tiny", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "tiny" / "study.db").exists()  # nothing started


@pytest.mark.slow  # two interrupted trials and a resume: about a minute
def test_sigterm_fails_every_threads_trial_and_the_same_command_completes(
        tmp_path: Path) -> None:
    out, log = tmp_path / "tiny", tmp_path / "search.log"
    args = [*_args(out), "--set", "train.epochs=3"]
    with cvt_nas_running(args, tmp_path, log) as proc:
        both = wait_for(lambda: running_trials(out, at_least=2), "both threads training")
        code, _ = stop(proc, signal.SIGTERM)
    err = log.read_text()
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    study = _study(out)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert "RUNNING" not in states.values()
    both = stopped_trials(both, states)  # failed, to run again with the same parameters
    assert main(args) == 0  # resume
    records = [t.user_attrs["record"] for t in _study(out).get_trials(deepcopy=False)
               if "record" in t.user_attrs]
    assert len(records) == 4
    retried = {t.system_attrs.get("failed_trial") for t in _study(out).get_trials()
               if "record" in t.user_attrs}
    assert {t.number for t in both} <= retried
