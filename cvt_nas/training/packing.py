"""Several trials at once on one GPU: threads of one process, each trial on its own CUDA stream.

A small trial leaves a GPU idle most of the time (its kernels are tiny and short), and separate
processes only time-slice the device. Trials run from threads of one process overlap instead:
every CUDA trial has its own stream (`cvt_nas.training.engine.trial_stream`), a captured step is
one graph launch that releases the GIL, and captures take turns under one lock.

How many run together comes from the memory model (`cvt_nas.training.memory`): a trial starts
when its estimated peak fits beside the running ones within the device's free memory (less a
reserve), up to ``max_k``. A trial that still runs out of memory while sharing the device is run
again alone after the others, and `PackedRun` records that it was.

Concurrent trials seed their initial weights and data order exactly as alone; draws from the
process-wide generators during training (dropout, drop-path, Mixup) interleave between threads,
so such runs are not bit-for-bit repeatable when packed.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cvt_nas.model.config import CvTConfig
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.datasets import adapt_config
from cvt_nas.training.memory import Calibration, MemoryBudget, TrialMemory, estimate
from cvt_nas.training.trainer import TrialResult, run_trial

RunFn = Callable[[CvTConfig, TrainConfig], TrialResult]

__all__ = ["PackedRun", "run_packed", "trial_memory"]


@dataclass
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


def run_packed(jobs: Sequence[tuple[CvTConfig, TrainConfig]], max_k: int,
               capacity_bytes: int | None = None, calibration: Calibration | None = None,
               reserve: float = 0.1, run: RunFn = run_trial,
               sizes: Sequence[int] | None = None) -> list[PackedRun]:
    """Run ``jobs`` with up to ``max_k`` at once on one device; results in job order.

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
        import torch

        capacity_bytes = torch.cuda.mem_get_info()[0]
    estimates = list(sizes) if sizes is not None else [
        trial_memory(m, t, calibration).total for m, t in jobs]
    budget = MemoryBudget(int(capacity_bytes * (1.0 - reserve)), max_k)
    pending = deque(range(len(jobs)))
    done: dict[int, PackedRun] = {}
    retry: list[int] = []
    with cf.ThreadPoolExecutor(max_workers=max_k, thread_name_prefix="trial") as pool:
        running: dict[cf.Future[TrialResult], PackedRun] = {}
        while pending or running:
            while pending and budget.fits(estimates[pending[0]]):
                i = pending.popleft()
                info = PackedRun(i, estimates[i], co_tenants=len(running))
                if running:
                    for other in [info, *running.values()]:
                        other.shared = True
                budget.admit(estimates[i])
                running[pool.submit(run, *jobs[i])] = info
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                info = running.pop(future)
                budget.release(info.estimate_bytes)
                info.result = future.result()
                done[info.index] = info
                if info.result.status == "oom" and info.shared:
                    retry.append(info.index)
    for i in retry:  # alone now: nothing else holds memory
        info = done[i]
        assert info.result is not None
        info.first_error, info.retried_alone = info.result.error, True
        info.result = run(*jobs[i])
    return [done[i] for i in range(len(jobs))]
