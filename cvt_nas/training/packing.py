"""Several trials at once on one GPU: threads of one process, each trial on its own CUDA stream.

A small trial leaves a GPU idle most of the time (its kernels are tiny and short), and separate
processes only time-slice the device. Trials run from threads of one process overlap instead:
every CUDA trial has its own stream (`cvt_nas.training.engine.trial_stream`), a captured step is
one graph launch that releases the GIL, and captures take turns under one lock.

How many run together comes from the memory model (`cvt_nas.training.memory`): a trial starts
when its estimated peak fits beside the running ones within the device's free memory (less a
reserve), up to ``max_k``. A trial that still runs out of memory while sharing the device is run
again alone (new trials wait meanwhile), and `PackedRun` records that it was. `DeviceGate` is
that admission, shared by the threads of a process: `run_packed` runs a list of trials through
it, and the ``--pack`` workers of a search (`cvt_nas.search.optuna_backend.run_threads`) and of
an ablation (`cvt_nas.ablation.runner`) run one loop per thread through it.

Concurrent trials seed their data order exactly as alone, and on CUDA their initial weights too.
Draws from the process-wide generators during training (dropout, drop-path, Mixup) interleave
between threads, and on the CPU those draws (cvt_micro has drop-path) can fall between another
thread's seeding and its weight initialisation: packed runs are not bit-for-bit the runs alone
(on the CPU not even their initial weights). The retry after an out-of-memory error is for
CUDA's (`torch.cuda.OutOfMemoryError`); the CPU has no such error to catch.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cvt_nas.model.config import CvTConfig
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.datasets import adapt_config
from cvt_nas.training.memory import Calibration, MemoryBudget, TrialMemory, estimate
from cvt_nas.training.trainer import TrialResult, run_trial

RunFn = Callable[[CvTConfig, TrainConfig], TrialResult]

__all__ = ["DeviceGate", "PackedRun", "device_capacity", "device_gate", "packed_columns",
           "run_gated", "run_packed", "trial_memory"]


@dataclass(eq=False)  # told apart by identity in the gate's running list
class PackedRun:
    """One trial of a packed batch: its result and how it ran."""

    index: int  # position in the job list
    estimate_bytes: int
    co_tenants: int  # trials already running on the device when it started
    result: TrialResult | None = None
    shared: bool = False  # another trial ran on the device at some time during its run
    retried_alone: bool = False
    first_error: str | None = None  # the out-of-memory message of the shared attempt


def trial_memory(model_cfg: CvTConfig, train_cfg: TrainConfig,
                 calibration: Calibration | None = None) -> TrialMemory:
    """The estimated peak of one trial as it would run (config adapted to its data)."""
    from cvt_nas.training.data import TensorData, load_dataset

    cfg = adapt_config(model_cfg, train_cfg)
    data = load_dataset(train_cfg.dataset, train_cfg.data_root, train_cfg.download)
    data_bytes = 0
    if isinstance(data, TensorData):  # kept on the device: the full set while split, then copies
        data_bytes = 2 * data.train_x.nbytes + data.test_x.nbytes
    return estimate(cfg, train_cfg.batch_size, calibration, data_bytes,
                    train_cfg.eval_batch_size)


class DeviceGate:
    """Admission of trials onto one device, shared by threads: `run` blocks until the trial's
    estimate fits beside the running trials (`MemoryBudget`; alone, anything runs), in arrival
    order (a big trial waiting for room is not overtaken by smaller ones that arrive later), and
    a trial that ran out of memory while sharing is run again alone before anything new
    starts."""

    def __init__(self, capacity_bytes: int, max_k: int, reserve: float = 0.1) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"reserve must be in [0, 1), got {reserve}")
        self.capacity = int(capacity_bytes * (1.0 - reserve))
        self.budget = MemoryBudget(self.capacity, max_k)
        self._cond = threading.Condition()
        self._running: list[PackedRun] = []
        self._queue: deque[PackedRun] = deque()  # waiting for admission, in arrival order
        self._alone_waiting = 0  # retries waiting for the device to empty

    def _admit(self, info: PackedRun) -> None:
        with self._cond:
            self._queue.append(info)
            try:
                while (self._alone_waiting or self._queue[0] is not info
                       or not self.budget.fits(info.estimate_bytes)):
                    self._cond.wait()
            finally:
                self._queue.remove(info)
                self._cond.notify_all()  # the next in line may fit too
            self.budget.admit(info.estimate_bytes)
            info.co_tenants = len(self._running)
            if self._running:
                for other in [info, *self._running]:
                    other.shared = True
            self._running.append(info)

    def _leave(self, info: PackedRun, retry: bool = False) -> None:
        with self._cond:
            self.budget.release(info.estimate_bytes)
            self._running.remove(info)
            if retry:  # under the same lock: nothing new slips in before the retry
                self._alone_waiting += 1
            self._cond.notify_all()

    def run(self, estimate_bytes: int, trial: Callable[[], TrialResult],
            index: int = 0) -> PackedRun:
        """Run ``trial`` (estimated to peak at ``estimate_bytes``) once admitted; an
        out-of-memory result of a shared run is retried alone (the returned `PackedRun` says
        so). ``index`` is copied into the `PackedRun`."""
        info = PackedRun(index, estimate_bytes, co_tenants=0)
        self._admit(info)
        retry = False
        try:
            info.result = trial()
            retry = info.result.status == "oom" and info.shared
        finally:
            self._leave(info, retry)
        if not retry:
            return info
        with self._cond:  # wait for the device to empty; nothing new starts meanwhile
            while self._running:
                self._cond.wait()
            self._alone_waiting -= 1
            self.budget.admit(estimate_bytes)
            self._running.append(info)
        assert info.result is not None
        info.first_error, info.retried_alone = info.result.error, True
        try:
            info.result = trial()
        finally:
            self._leave(info)
        return info


def device_capacity(device: str) -> int:
    """Free memory of a device now: CUDA's free bytes, or the host's available memory for the
    CPU (``MemAvailable``; a machine without /proc/meminfo counts as unlimited)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def device_gate(device: str, precision: str, max_k: int,
                share: int = 1) -> tuple[DeviceGate, Calibration | None]:
    """The gate of one worker process over ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``):
    its free memory now divided among the ``share`` workers on that device (less 10 %), at most
    ``max_k`` trials; and the device's stored memory calibration for ``precision`` (``auto``
    resolved as a trial would), None when there is none (the model's defaults then)."""
    from cvt_nas.common.proc import cpu_name
    from cvt_nas.training.engine import resolve_precision
    from cvt_nas.training.memory import load_calibration
    from cvt_nas.training.trainer import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(dev)
    else:
        name = cpu_name()
    gate = DeviceGate(device_capacity(str(dev)) // max(1, share), max_k)
    return gate, load_calibration(name, resolve_precision(precision, dev))


def run_gated(gate: DeviceGate, model_cfg: CvTConfig, train_cfg: TrainConfig,
              calibration: Calibration | None = None,
              trial: Callable[[], TrialResult] | None = None) -> PackedRun:
    """One trial through ``gate``, admitted by its `trial_memory` estimate; ``trial`` defaults
    to ``run_trial(model_cfg, train_cfg)``."""
    estimate = trial_memory(model_cfg, train_cfg, calibration).total
    return gate.run(estimate, trial or functools.partial(run_trial, model_cfg, train_cfg))


def packed_columns(packed: PackedRun) -> dict[str, Any]:
    """The record columns of a trial that ran through a gate: ``co_tenants`` (trials running
    when it started), ``shared`` (another trial ran at some time during it: its times are not
    its own), ``memory_estimate`` (bytes), ``retried_alone``, and a ``warning`` when it was
    retried."""
    out: dict[str, Any] = {"co_tenants": packed.co_tenants, "shared": packed.shared,
                           "memory_estimate": packed.estimate_bytes,
                           "retried_alone": packed.retried_alone}
    if packed.retried_alone:
        out["warning"] = (f"ran out of memory beside other trials ({packed.first_error}); "
                          "run again alone")
    return out


def run_packed(jobs: Sequence[tuple[CvTConfig, TrainConfig]], max_k: int,
               capacity_bytes: int | None = None, calibration: Calibration | None = None,
               reserve: float = 0.1, run: RunFn = run_trial,
               sizes: Sequence[int] | None = None) -> list[PackedRun]:
    """Run ``jobs`` with up to ``max_k`` at once on one device (`DeviceGate`); results in job
    order.

    Args:
        jobs: (model config, train config) pairs; all on the same device.
        max_k: most trials at once.
        capacity_bytes: memory to fill; None takes the CUDA device's free memory now.
        calibration: the device's memory calibration (`memory.load_calibration`).
        reserve: share of ``capacity_bytes`` kept free.
        run: the trial function (`run_trial`).
        sizes: estimated bytes per job, instead of `trial_memory` (for tests and callers that
            already have them).
    """
    if capacity_bytes is None:
        capacity_bytes = device_capacity("cuda")
    estimates = list(sizes) if sizes is not None else [
        trial_memory(m, t, calibration).total for m, t in jobs]
    gate = DeviceGate(capacity_bytes, max_k, reserve)
    with cf.ThreadPoolExecutor(max_workers=max_k, thread_name_prefix="trial") as pool:
        futures = [pool.submit(gate.run, estimates[i], functools.partial(run, *job), i)
                   for i, job in enumerate(jobs)]
        return [f.result() for f in futures]
