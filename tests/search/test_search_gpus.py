"""Every GPU of a machine: which GPUs a search uses, which worker gets which, what records say.

This machine has no GPU. The assignment is checked as pure functions on given GPU lists; the
end-to-end runs fake GPU visibility with ``CVT_NAS_FAKE_GPUS`` (read only by
`cvt_nas.common.gpus.visible_gpus`; torch still sees no CUDA, so every trial trains on the CPU)
and Ray's fake GPU resources (``ray.init(num_gpus=2)``). What never runs here: CUDA in a worker
pinned by ``CUDA_VISIBLE_DEVICES``, and the GPU's name in the ``device`` column.
"""

from __future__ import annotations

import os
import re
import socket
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cvt_nas.cli import main
from cvt_nas.common.gpus import (
    FAKE_GPUS_ENV,
    cpu_warning,
    parse_choice,
    parse_visible,
    physical_device,
    select_gpus,
    visible_gpus,
    worker_env,
    worker_label,
    workers_per_device,
)
from cvt_nas.search.ray_backend import gpus_per_trial

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
WARNING = "ran on cpu while 2 GPU(s) were visible"


def test_visible_gpus_are_named_as_cuda_visible_devices_names_them() -> None:
    assert parse_visible(None, 3) == ("0", "1", "2")  # unset: every GPU by index
    assert parse_visible("2,5", 2) == ("2", "5")  # the physical names, not 0 and 1
    assert parse_visible("2, 5,7", 2) == ("2", "5")  # torch counted 2 usable entries
    assert parse_visible("GPU-8f3a", 1) == ("GPU-8f3a",)
    assert parse_visible("", 4) == () and parse_visible("0", 0) == ()


def test_fake_gpus_replace_torchs_count_but_keep_cuda_visible_devices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    assert visible_gpus() == ()  # this machine has none
    monkeypatch.setenv(FAKE_GPUS_ENV, "2")
    assert visible_gpus() == ("0", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a worker pinned to GPU 1
    assert visible_gpus() == ("1",)


@pytest.mark.parametrize(("text", "choice"), [
    ("all", "all"), ("none", "none"), ("0", "none"), ("2", 2), ("0,2", ("0", "2")),
    ("2,", ("2",)), (" 1 , 3 ", ("1", "3")), ("GPU-8f3a,GPU-77", ("GPU-8f3a", "GPU-77")),
])
def test_gpus_flag_forms(text: str, choice: object) -> None:
    assert parse_choice(text) == choice


@pytest.mark.parametrize("text", ["", ",", "0,,2", "1,1", ",3"])
def test_gpus_flag_rejects_malformed_lists(text: str) -> None:
    with pytest.raises(ValueError, match="expected all, none, a count"):
        parse_choice(text)


def test_default_is_every_visible_gpu_for_auto_and_cuda_only() -> None:
    four = ("0", "1", "2", "3")
    assert select_gpus(None, four, "auto") == four
    assert select_gpus(None, four, "cuda") == four
    assert select_gpus(None, four, "cpu") == ()
    assert select_gpus(None, four, "cuda:1") == ()  # the device names its GPU
    assert select_gpus(None, (), "auto") == ()  # a CPU machine: as before
    assert select_gpus("none", four, "cuda") == ()
    assert select_gpus(2, four, "auto") == ("0", "1")
    assert select_gpus(("3", "1"), four, "cuda") == ("3", "1")
    assert select_gpus("all", ("2", "5"), "cpu") == ("2", "5")  # asked for: pinned anyway


@pytest.mark.parametrize(("choice", "visible", "device", "message"), [
    ("all", (), "auto", "--gpus all: no GPU is visible here"),
    (2, (), "cuda", "--gpus 2: no GPU is visible here"),
    (3, ("0", "1"), "auto", "--gpus 3: only 2 GPU(s) visible (0, 1)"),
    (("0", "5"), ("0", "1"), "auto", "--gpus 0,5: GPU 5 is not visible; visible: 0, 1"),
    (("2",), ("0", "1"), "auto", "--gpus 2,: GPU 2 is not visible; visible: 0, 1"),
    ("all", ("0", "1"), "cuda:1", "--gpus all: --device / train.device cuda:1 names one GPU"),
])
def test_impossible_gpu_choices_are_one_line_errors(
        choice: object, visible: tuple[str, ...], device: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        select_gpus(choice, visible, device)  # type: ignore[arg-type]


def test_workers_take_gpus_round_robin() -> None:
    gpus = ("2", "5")
    assert [worker_env(gpus, i)["CUDA_VISIBLE_DEVICES"] for i in range(5)] == [
        "2", "5", "2", "5", "2"]  # 5 workers on 2 GPUs: GPU 2 runs three of them


def test_device_column_names_the_physical_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert physical_device("cuda:0", "2", "NVIDIA H200") == "cuda:2 (NVIDIA H200)"
    assert physical_device("cuda", "3,1", None) == "cuda:3"  # torch's "cuda" is index 0
    assert physical_device("cuda:1", "3,1", None) == "cuda:1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert physical_device("cuda:1", None, "A100") == "cuda:1 (A100)"  # unset: as torch says
    assert physical_device("cpu") == "cpu" and physical_device(None) is None
    assert physical_device("cuda:2 (NVIDIA H200)", "0") == "cuda:2 (NVIDIA H200)"  # once only


def test_worker_label_adds_the_pinned_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    plain = worker_label()
    assert plain.startswith(f"{socket.gethostname()}:{os.getpid()}:") and "@" not in plain
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert worker_label() == plain + "@gpu3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # pinned to none
    assert worker_label() == plain


def test_cpu_warning_only_when_gpus_were_there() -> None:
    assert cpu_warning("cpu", 2) == WARNING
    assert cpu_warning("cpu", 0) is None
    assert cpu_warning("cuda:1 (H200)", 2) is None
    assert cpu_warning(None, 2) is None  # never trained (infeasible)


def test_ray_requests_a_gpu_per_trial_by_default_on_a_gpu_cluster() -> None:
    assert gpus_per_trial(None, 8, "auto") == 1.0
    assert gpus_per_trial(None, 8, "cuda") == 1.0
    assert gpus_per_trial(None, 0, "auto") == 0.0  # a CPU cluster, as before
    assert gpus_per_trial(None, 8, "cpu") == 0.0
    assert gpus_per_trial(0.5, 8, "auto") == 0.5 and gpus_per_trial(0, 8, "auto") == 0.0
    with pytest.raises(ValueError, match="--gpus-per-trial 0 with --device / train.device cuda"):
        gpus_per_trial(0, 8, "cuda")


def _search(out: Path, *flags: str) -> int:
    return main(["search", str(TINY), "--out", str(out), "--quiet", "--threads", "1", *flags])


def test_gpu_errors_exit_2_before_any_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(FAKE_GPUS_ENV, "2")
    assert _search(tmp_path / "a", "--gpus", "0,5", "--device", "cpu") == 2
    assert "--gpus 0,5: GPU 5 is not visible; visible: 0, 1" in capsys.readouterr().err
    monkeypatch.delenv(FAKE_GPUS_ENV)
    assert _search(tmp_path / "b", "--gpus", "all") == 2
    assert "--gpus all: no GPU is visible here" in capsys.readouterr().err
    assert _search(tmp_path / "c", "--gpus", "1", "--backend", "ray") == 2
    assert "--gpus is for the optuna backend" in capsys.readouterr().err
    assert _search(tmp_path / "d", "--gpus", "1,x,1") == 2  # argparse's own exit code
    assert "argument --gpus: expected all, none" in capsys.readouterr().err
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def _gpu_of(worker: str) -> str | None:
    return worker.partition("@gpu")[2] or None


def test_each_worker_process_sees_its_own_gpu(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two spawned workers on two (fake) GPUs: each trial's record names the GPU its process
    saw in CUDA_VISIBLE_DEVICES (the ``worker`` column), one GPU per process, both used, and
    every trained trial says that it ran on the CPU while there were GPUs."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(FAKE_GPUS_ENV, "2")
    out = tmp_path / "tiny"
    flags = ["--device", "cpu", "--sampler", "random", "--seed", "0", "--set",
             "constraints.max_params=1M"]
    assert _search(out, *flags, "--n-workers", "2", "--gpus", "0,1", "--trials", "3") == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"complete"}
    gpus_of_pid: dict[str, set[str | None]] = defaultdict(set)
    for worker in trials["worker"]:
        gpus_of_pid[worker.split(":")[1]].add(_gpu_of(worker))
    assert str(os.getpid()) not in gpus_of_pid  # trials ran in the workers
    assert sorted(g for gs in gpus_of_pid.values() for g in gs) == ["0", "1"], gpus_of_pid
    assert set(trials["device"]) == {"cpu"} and set(trials["warning"]) == {WARNING}
    meta = yaml.safe_load((out / "study.yaml").read_text())
    assert meta["settings"]["gpus"] == ["0", "1"]



@pytest.mark.slow
def test_ray_places_concurrent_trials_on_distinct_gpus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local Ray with 2 fake GPUs (``num_gpus=2``; torch sees none, so ``auto`` trains on the
    CPU): by default each trial requests one GPU, two trials at once hold different GPUs, and
    every record carries the CPU warning. ``--gpus-per-trial 0`` keeps trials off the GPUs."""
    import ray

    temp = Path("/tmp") / f"cvtg-{os.getpid()}"  # short: Ray's socket paths are long
    ray.init(num_cpus=2, num_gpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, _temp_dir=str(temp))
    try:
        flags = ["--backend", "ray", "--cpus-per-trial", "1", "--sampler", "random", "--seed",
                 "0", "--set", "constraints.max_params=1M"]
        out = tmp_path / "gpu"
        assert _search(out, *flags, "--trials", "4") == 0
        assert "the Ray cluster has 2 GPU(s): each trial gets 1" in capsys.readouterr().err
        trials = pd.read_csv(out / "trials.csv")
        assert len(trials) == 4 and set(trials["status"]) == {"complete"}
        gpus = [_gpu_of(w) for w in trials["worker"]]
        assert set(gpus) <= {"0", "1"} and None not in gpus  # one reserved GPU each
        end = pd.to_datetime(trials["finished_at"])
        start = end - pd.to_timedelta(trials["wall_time_s"], unit="s")
        overlapping = [(i, j) for i in range(4) for j in range(i + 1, 4)
                       if start[i] < end[j] and start[j] < end[i]]
        assert overlapping and all(gpus[i] != gpus[j] for i, j in overlapping), \
            (gpus, overlapping)
        assert set(trials["device"]) == {"cpu"} and set(trials["warning"]) == {WARNING}
        meta = yaml.safe_load((out / "study.yaml").read_text())
        assert meta["settings"]["gpus_per_trial"] == 1.0

        cpu = tmp_path / "cpu"
        assert _search(cpu, *flags, "--trials", "2", "--gpus-per-trial", "0") == 0
        trials = pd.read_csv(cpu / "trials.csv")
        assert [_gpu_of(w) for w in trials["worker"]] == [None, None]
        assert set(trials["warning"]) == {WARNING}
    finally:
        ray.shutdown()


def test_packed_workers_split_their_device_by_the_round_robin() -> None:
    assert workers_per_device(8, ("0", "1")) == 4
    assert workers_per_device(3, ("0", "1")) == 2  # GPU 0 gets workers 0 and 2
    assert workers_per_device(1, ("0", "1", "2")) == 1
    assert workers_per_device(2, ()) == 2  # no GPU: all on the one device there is
