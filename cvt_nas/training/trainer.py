"""`run_trial`: train and evaluate one CvT, reporting each epoch; the one trial function that the
search backends (Optuna, Ray Tune) and the ablation runner all call.

A trial never raises for what can go wrong inside it: a NaN/inf loss gives status ``diverged``,
CUDA out-of-memory ``oom``, a `TrialPruned` from the report callback ``pruned``, anything else
``failed`` with ``error`` set. Seeded runs are reproducible on CPU, and a trial given a
``checkpoint_dir`` resumes from its last finished epoch with the same final weights as an
uninterrupted run.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvt_nas.common.pool import raise_pending_stop
from cvt_nas.common.proc import cpu_share
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost
from cvt_nas.training import engine
from cvt_nas.training.augment import seed_all
from cvt_nas.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.data import TrialData
from cvt_nas.training.datasets import adapt_config
from cvt_nas.training.seeds import epoch_seed

Report = Callable[[int, dict[str, Any]], None]

__all__ = ["TrialPruned", "TrialResult", "resolve_device", "run_trial"]


class TrialPruned(Exception):
    """Raise from the report callback to stop a trial; it ends with status ``pruned``."""


class _Diverged(Exception):
    pass


@dataclass
class TrialResult:
    """The outcome of one trial. Accuracies are percent; ``val_*`` are from the last epoch."""

    status: str  # "complete" | "pruned" | "diverged" | "oom" | "failed"
    params: int
    macs: int  # at the trial's image size, for the adapted config
    val_top1: float | None
    val_top5: float | None
    test_top1: float | None  # only when train_cfg.eval_test is true
    test_top5: float | None
    train_loss: float | None  # last epoch's mean
    epochs: int  # epochs actually run (including those restored from a checkpoint)
    wall_time_s: float
    images_per_s: float | None  # training throughput (forward + backward + step)
    seed: int
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    device: str | None = None
    threads: int | None = None
    precision: str | None = None  # what ran: fp32, bf16 or fp16 (``precision: auto`` resolved)
    engine: str | None = None  # eager or graph (cvt_nas.training.engine)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict."""
        return asdict(self)

    @property
    def cpu_share(self) -> float | None:
        """`cvt_nas.common.proc.cpu_share` of the epochs run (None when one lacks ``cpu_s``):
        near 1 when a CPU run had its threads' cores to itself, far below on a shared machine."""
        cpu: list[float] = [float(h["cpu_s"]) for h in self.history
                            if h.get("cpu_s") is not None]
        if not cpu or len(cpu) < len(self.history):
            return None
        wall = sum(float(h.get("time_s") or 0.0) + float(h.get("eval_s") or 0.0)
                   for h in self.history)
        return cpu_share(sum(cpu), wall, self.threads)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other device must exist on this machine.

    Raises:
        ValueError: a CUDA device (or index) or MPS that this machine does not have, so a run
            stops before its first trial instead of failing every trial.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use "
                             "device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use device "
                         "cpu or auto")
    return device


def run_trial(
    model_cfg: CvTConfig,
    train_cfg: TrainConfig,
    report: Report | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    *,
    cost: Cost | None = None,
) -> TrialResult:
    """Build the model, train ``train_cfg.epochs`` epochs, evaluate after each, return the result.

    Args:
        model_cfg: the architecture; adapted to the dataset with `adapt_config`.
        train_cfg: data, schedule, regularization and device.
        report: called as ``report(epoch, metrics)`` after every epoch's evaluation (epoch from
            1; metrics has val_top1, val_top5, train_loss, lr, time_s, images_per_s, eval_s
            and cpu_s: this process's CPU seconds over the epoch's training and evaluation); raise
            `TrialPruned` in it to stop the trial.
        checkpoint_dir: save ``last.pt`` there after every epoch and resume from it if present.
        progress: show a tqdm bar per epoch (for the command line).
        cost: the analytic cost of the adapted config when the caller has it already (the
            search's budget gate); computed here when None.
    """
    start = time.perf_counter()
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    result = TrialResult(
        status="failed", params=0, macs=0, val_top1=None, val_top5=None, test_top1=None,
        test_top5=None, train_loss=None, epochs=0, wall_time_s=0.0, images_per_s=None,
        seed=train_cfg.seed, threads=torch.get_num_threads(),
    )
    try:
        cfg = adapt_config(model_cfg, train_cfg)
        if cost is None or cost.img_size != cfg.img_size:
            cost = analytic_cost(cfg)
        result.params, result.macs = cost.params, cost.macs
        _Trial(cfg, train_cfg, result, checkpoint_dir, progress).run(report)
        result.status = "complete"
    except TrialPruned:
        result.status = "pruned"
    except _Diverged as exc:
        result.status, result.error = "diverged", str(exc)
    except torch.cuda.OutOfMemoryError as exc:
        result.status, result.error = "oom", str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - a trial reports failures, it never raises them
        result.status = "failed"
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.error = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    if result.status == "oom":  # the trial's tensors are unreachable now: give the memory back
        gc.collect()
        torch.cuda.empty_cache()
    result.wall_time_s = time.perf_counter() - start
    return result


class _Trial:
    """The state of one trial (model, optimizer, data) and its epoch loop."""

    def __init__(self, cfg: CvTConfig, tcfg: TrainConfig, result: TrialResult,
                 checkpoint_dir: str | Path | None, progress: bool) -> None:
        from cvt_nas.model.network import CvT

        self.cfg, self.tcfg, self.result, self.progress = cfg, tcfg, result, progress
        self.device = resolve_device(tcfg.device)
        precision = engine.resolve_precision(tcfg.precision, self.device)
        result.device, result.precision = str(self.device), precision
        self.amp_dtype = engine.AMP_DTYPES[precision]
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("field 'precision': fp16 autocast needs CUDA; use fp32 or bf16 here")
        result.engine = engine.resolve_engine(tcfg.engine, self.device, precision)
        graph = result.engine == "graph"
        self.stream = engine.trial_stream(self.device)
        with engine.on_stream(self.stream):
            self.data = TrialData(tcfg, self.device)
            fmt = torch.channels_last if tcfg.channels_last else torch.contiguous_format
            with engine.INIT_LOCK:  # seeding is process-wide: one trial at a time draws weights
                seed_all(tcfg.seed)
                # two calls: torch's stubs have no Module.to overload taking device and memory_format
                self.model = CvT(cfg).to(self.device).to(memory_format=fmt)
            self.optimizer = engine.device_optimizer(
                make_optimizer(self.model, tcfg.lr, tcfg.weight_decay), self.device)
            self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
            self.criterion, self.mixup = make_loss(tcfg, cfg.num_classes)
            self.train_step = engine.TrainStep(
                self.model, self.optimizer, self.criterion, self.scaler, self.amp_dtype,
                self.device, tcfg.clip_grad, graph,
                check_every=1 if self.device.type == "cpu" else engine.CUDA_CHECK_EVERY)
            self.eval_step = engine.EvalStep(self.model, self.amp_dtype, self.device,
                                             min(5, cfg.num_classes), graph)
        self.steps = self.data.steps_per_epoch
        self.checkpoint_dir = checkpoint_dir
        self.fingerprint = fingerprint(cfg.to_dict(), tcfg.to_dict())

    # -- the loop ------------------------------------------------------------------------------

    def run(self, report: Report | None) -> None:
        with engine.on_stream(self.stream):
            self._run(report)
        for step in (self.train_step, self.eval_step):
            if step.graphed.fallback:
                self.result.engine = f"eager ({step.graphed.fallback})"

    def _run(self, report: Report | None) -> None:
        first = self._resume() + 1
        for epoch in range(first, self.tcfg.epochs + 1):
            with engine.INIT_LOCK:  # not while another trial of this process draws its weights
                seed_all(epoch_seed(self.tcfg.seed, epoch, "weights"))
            cpu = time.process_time()  # every thread of this process
            train_loss, images, seconds, lr = self.train_epoch(epoch)
            metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            start = time.perf_counter()
            metrics.update(self.evaluate("val") if self.data.num_val else
                           {"val_top1": None, "val_top5": None})
            metrics.update(lr=lr, time_s=seconds, images=images, images_per_s=images / seconds,
                           eval_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu)
            self._record(metrics)
            if self.checkpoint_dir is not None:
                self._save(epoch)
            if report is not None:
                report(epoch, dict(metrics))
        if self.tcfg.eval_test:
            test = self.evaluate("test")
            self.result.test_top1, self.result.test_top5 = test["val_top1"], test["val_top5"]

    def train_epoch(self, epoch: int) -> tuple[float, int, float, float]:
        """One pass over the training split: (mean loss, images, seconds, last lr)."""
        tcfg, step = self.tcfg, self.train_step
        self.model.train()
        step.begin_epoch()
        lr, start = tcfg.lr, time.perf_counter()
        batches: Iterable = self.data.train_batches(epoch, tcfg.seed)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = batches = tqdm(batches, total=self.steps, desc=f"epoch {epoch}/{tcfg.epochs}",
                                 leave=False, dynamic_ncols=True)
        try:
            for i, (x, y) in enumerate(batches):  # x (B, C, S, S), y (B,)
                lr = lr_at((epoch - 1) * self.steps + i, self.steps, tcfg)
                if self.mixup is not None:
                    x, y = self.mixup(x, y)  # y (B, num_classes) soft targets
                step(x, y, lr)
                raise_pending_stop()  # a stop signal a finalizer swallowed
                if bar is not None and i % 10 == 0:
                    bar.set_postfix(loss=f"{step.running_loss():.4f}", lr=f"{lr:.2e}")
            mean, images = step.end_epoch()
        except engine.Diverged as exc:
            at = "" if exc.step is None else f", step {exc.step}"
            raise _Diverged(f"loss became {exc.value} at epoch {epoch}{at}") from None
        finally:
            if bar is not None:
                bar.close()
        return mean, images, time.perf_counter() - start, lr

    @torch.inference_mode()
    def evaluate(self, split: str) -> dict[str, float]:
        """Top-1 / top-5 accuracy (percent) on ``val`` or ``test``, keyed val_top1/val_top5."""
        self.model.eval()
        correct1, correct5, n = self.eval_step(self.data.eval_batches(split))
        n = max(n, 1)
        return {"val_top1": 100.0 * correct1.item() / n, "val_top5": 100.0 * correct5.item() / n}

    # -- helpers -------------------------------------------------------------------------------

    def _record(self, metrics: dict[str, Any]) -> None:
        r = self.result
        r.history.append(metrics)
        r.epochs = metrics["epoch"]
        r.train_loss, r.val_top1, r.val_top5 = (metrics["train_loss"], metrics["val_top1"],
                                                metrics["val_top5"])
        seconds = sum(h["time_s"] for h in r.history)
        r.images_per_s = sum(h["images"] for h in r.history) / seconds if seconds else None

    def _save(self, epoch: int) -> None:
        assert self.checkpoint_dir is not None
        save_checkpoint(self.checkpoint_dir, {
            "epoch": epoch,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.result.history,
            "model_cfg": self.cfg.to_dict(),
            "train_cfg": self.tcfg.to_dict(),
        })

    def _resume(self) -> int:
        """Restore the checkpoint (if any); the last finished epoch, 0 for a fresh start."""
        if self.checkpoint_dir is None:
            return 0
        state = load_checkpoint(self.checkpoint_dir, self.fingerprint)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for metrics in state["history"]:
            self._record(dict(metrics))
        return int(state["epoch"])


def lr_at(step: int, steps_per_epoch: int, tcfg: TrainConfig) -> float:
    """Learning rate at a global step: linear warm-up from ``warmup_lr``, then cosine to
    ``min_lr`` at the end of the last epoch (both per step, so short runs are smooth)."""
    total = max(tcfg.epochs * steps_per_epoch, 1)
    warmup = min(int(round(tcfg.warmup_epochs * steps_per_epoch)), total - 1)
    if step < warmup:
        return tcfg.warmup_lr + (tcfg.lr - tcfg.warmup_lr) * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return tcfg.min_lr + 0.5 * (tcfg.lr - tcfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on norms, biases, cls tokens and position embeddings."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def make_loss(tcfg: TrainConfig, num_classes: int) -> tuple[nn.Module, Any]:
    """The training criterion and, when mixup/cutmix is on, timm's Mixup (which also smooths)."""
    if tcfg.mixup > 0 or tcfg.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=tcfg.mixup, cutmix_alpha=tcfg.cutmix,
                      label_smoothing=tcfg.label_smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    return nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing), None
