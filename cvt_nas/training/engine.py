"""The step engine of a trial: how one training step and one evaluation batch run.

On the CPU a step is the plain PyTorch loop, the same operations in the same order as before the
engine existed (set the learning rate, forward under autocast, zero the gradients, backward,
optional clipping, step, add the batch's loss to a running sum, check it is finite), so seeded CPU
runs give bit-identical numbers.

On CUDA nothing waits for the GPU inside an epoch:

* the loss is summed on the device; every ``check_every`` steps the sum is copied to pinned host
  memory without blocking, and the copy made at the previous check (finished long since) is the
  one read, so the divergence check never stalls the queue (it also runs at the epoch end);
* AdamW is fused and capturable, its learning rate a device tensor filled each step;
* with ``engine: graph`` (the default on CUDA) the fixed-shape training step (forward, loss,
  backward, clipping, optimizer step, loss sum) and the evaluation batch (forward, top-k counts)
  are each captured once as a CUDA graph and replayed; a batch of another shape (a short last
  batch) runs eagerly on the same weights. Capture costs a few eager warm-up steps on the first
  batch, whose effects on weights, norm statistics and optimizer state are undone, so the trial
  trains on exactly its own batches. ``engine: eager`` turns capture off.

Every CUDA trial runs on its own stream (see `trial_stream`), so trials run from several threads
of one process overlap on one GPU (`cvt_nas.training.packing`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

ENGINES = ("eager", "graph")
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}
CUDA_CHECK_EVERY = 50  # steps between divergence checks on CUDA (each costs one tiny copy)
WARMUP_STEPS = 3  # eager steps before a capture (cuBLAS/cuDNN handles, autotuning, lazy state)

# One capture at a time in a process, and model construction under a lock so that concurrent
# trials (threads) each draw their initial weights from their own seed.
CAPTURE_LOCK = threading.Lock()
INIT_LOCK = threading.Lock()

__all__ = [
    "AMP_DTYPES", "ENGINES", "Diverged", "EvalStep", "LossSum", "TrainStep", "device_optimizer",
    "fused_adamw", "on_stream", "resolve_engine", "resolve_precision", "trial_stream",
]


class Diverged(Exception):
    """The running loss sum stopped being finite; ``step`` is the (1-based) step of the check that
    saw it, None when it was seen at the epoch end."""

    def __init__(self, value: float, step: int | None) -> None:
        super().__init__(f"loss became {value}" + ("" if step is None else f" at step {step}"))
        self.value, self.step = value, step


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; other values pass through."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def resolve_engine(engine: str | None, device: torch.device, precision: str) -> str:
    """The engine a trial runs: ``graph`` on CUDA unless asked otherwise, ``eager`` elsewhere.

    Raises:
        ValueError: ``graph`` asked for off CUDA, or with fp16 (GradScaler's checks are not
            captured); the message names the field and the fix.
    """
    if engine is None:
        return "graph" if device.type == "cuda" and precision != "fp16" else "eager"
    if engine == "graph" and device.type != "cuda":
        raise ValueError(f"field 'engine': 'graph' needs CUDA but the device is {device}; "
                         "use engine: eager or leave it unset")
    if engine == "graph" and precision == "fp16":
        raise ValueError("field 'engine': 'graph' does not capture fp16's GradScaler; use "
                         "precision: bf16 (or auto), or engine: eager")
    return engine


def trial_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A stream of its own for a CUDA trial (None elsewhere), so that trials run from several
    threads overlap on one GPU. It first waits for the work already queued on the current
    stream."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def on_stream(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[Any]:
    """Make ``stream`` current (a no-op for None)."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


def device_optimizer(optimizer: torch.optim.Optimizer,
                     device: torch.device) -> torch.optim.Optimizer:
    """The optimizer as it should run on ``device``: unchanged off CUDA (the CPU loop stays as
    it was), `fused_adamw` on CUDA."""
    return fused_adamw(optimizer, device) if device.type == "cuda" else optimizer


def fused_adamw(optimizer: torch.optim.Optimizer, device: torch.device) -> torch.optim.AdamW:
    """The same AdamW groups and hyperparameters, fused and capturable, every group sharing one
    learning-rate tensor on ``device`` (so a captured step reads the current rate)."""
    if not isinstance(optimizer, torch.optim.AdamW):
        raise TypeError(f"fused_adamw: expected AdamW, got {type(optimizer).__name__}")
    impl = {"foreach", "fused", "capturable", "differentiable", "lr"}
    groups = [{k: v for k, v in g.items() if k not in impl} for g in optimizer.param_groups]
    lr = torch.tensor(float(optimizer.defaults["lr"]), device=device)
    fused = torch.optim.AdamW(groups, lr=lr, fused=True, capturable=True)
    for group in fused.param_groups:
        group["lr"] = lr
    return fused


def _lr_tensor(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    lr = optimizer.param_groups[0]["lr"]
    return lr if isinstance(lr, torch.Tensor) else None


class _Snapshot:
    """Copies of a model's parameters and buffers, the optimizer's state and extra tensors, to
    undo warm-up steps in place (a captured graph holds these very tensors). Optimizer state
    created after the snapshot is reset to zeros, which is AdamW's fresh state."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 extra: Iterable[torch.Tensor]) -> None:
        self.model, self.optimizer, self.extra = model, optimizer, list(extra)
        self.saved = {id(t): (t, t.detach().clone()) for t in self._tensors()}

    def _tensors(self) -> Iterator[torch.Tensor]:
        yield from self.model.parameters()
        yield from self.model.buffers()
        for state in self.optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        yield from self.extra

    @torch.no_grad()
    def restore(self) -> None:
        for t in self._tensors():
            if id(t) in self.saved:
                t.copy_(self.saved[id(t)][1])
            else:
                t.zero_()


class LossSum:
    """The epoch's running loss sum on the device and its divergence check.

    By default (off CUDA) the check reads the sum directly, as the plain loop always did. With
    ``async_copy`` (the default on CUDA) each check copies the sum to host memory without
    blocking (pinned memory and an event on CUDA) and reads the copy of the previous check, which
    is ``check_every`` steps old and so already done: a divergence is seen at most two checks
    late, and at the latest by `mean` at the epoch end.
    """

    def __init__(self, device: torch.device, check_every: int,
                 async_copy: bool | None = None) -> None:
        self.device, self.check_every = device, check_every
        self.total = torch.zeros((), device=device)
        self.async_copy = device.type == "cuda" if async_copy is None else async_copy
        cuda = device.type == "cuda"
        self.host = torch.zeros(2, pin_memory=cuda)
        self.events = [torch.cuda.Event(), torch.cuda.Event()] if cuda else None
        self.pending: tuple[int, int] | None = None  # (slot, step) of the last copy
        self.slot = 0
        self.last_read = 0.0  # the latest sum read back on the host (for progress displays)

    def reset(self) -> None:
        self.total.zero_()
        self.pending, self.last_read = None, 0.0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach().float() * n

    def check(self, step: int) -> None:
        """Raise `Diverged` if the sum was seen not finite; ``step`` counts from 1."""
        if step % self.check_every:
            return
        if not self.async_copy:
            if not torch.isfinite(self.total):
                raise Diverged(self.total.item(), step)
            return
        previous = self.pending
        self.host[self.slot].copy_(self.total, non_blocking=True)
        if self.events is not None:
            self.events[self.slot].record()
        self.pending, self.slot = (self.slot, step), 1 - self.slot
        if previous is not None:
            slot, seen_at = previous
            if self.events is not None:  # recorded check_every steps ago: already complete
                self.events[slot].synchronize()
            self.last_read = float(self.host[slot])
            if not torch.isfinite(self.host[slot]):
                raise Diverged(self.last_read, seen_at)

    def mean(self, images: int) -> float:
        """The epoch's mean loss (waits for the device); `Diverged` if not finite."""
        mean = self.total.item() / max(images, 1)
        if not math.isfinite(mean):
            raise Diverged(mean, None)
        return mean


class _Graphed:
    """A fixed-shape step captured once, on its first batch, as a CUDA graph and replayed on
    every batch of that shape (copied into the captured inputs); other batches are the caller's
    to run eagerly. If capture fails for any reason but memory, the step stays eager and
    ``fallback`` says why."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled, self.device = enabled, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fallback: str | None = None
        self.capture_s = 0.0

    def replay(self, x: torch.Tensor, y: torch.Tensor,
               body: Callable[[torch.Tensor, torch.Tensor], None],
               undo: Callable[[], Callable[[], None]] | None = None) -> bool:
        """Replay on (x, y) when it has the captured shape (capturing ``body`` first if this is
        the first batch); whether it did. ``undo()`` is called before the warm-up and returns
        what to call after the capture to take the warm-up's effects back."""
        if self.enabled and self.graph is None:
            start = time.perf_counter()
            sx, sy = self.inputs = (x.clone(), y.clone())
            restore = undo() if undo is not None else None
            try:
                self.graph = _capture(self.device, lambda: body(sx, sy))
            except _CaptureFailed as exc:  # an op that cannot be captured: run eagerly
                self.enabled, self.fallback = False, str(exc)
            if restore is not None:
                restore()
            self.capture_s = time.perf_counter() - start
        if self.graph is None or self.inputs is None or not _fits(self.inputs, x, y):
            return False
        self.inputs[0].copy_(x)
        self.inputs[1].copy_(y)
        self.graph.replay()
        return True


class TrainStep:
    """One optimizer step per call; eager, or replayed from a CUDA graph captured on first use.

    Args:
        model, optimizer, criterion, scaler: the trial's (optimizer from `device_optimizer`).
        amp_dtype: autocast dtype, None for fp32.
        clip_grad: max gradient norm, None for no clipping.
        graph: capture the fixed-shape step as a CUDA graph (CUDA only).
        check_every: steps between divergence checks (1 on the CPU).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: Callable[..., torch.Tensor], scaler: torch.amp.GradScaler,
                 amp_dtype: torch.dtype | None, device: torch.device, clip_grad: float | None,
                 graph: bool, check_every: int) -> None:
        self.model, self.optimizer, self.criterion, self.scaler = model, optimizer, criterion, scaler
        self.amp_dtype, self.device, self.clip_grad = amp_dtype, device, clip_grad
        self.graphed = _Graphed(graph, device)
        self.loss = LossSum(device, check_every)
        self.lr = _lr_tensor(optimizer)
        self.images = self.steps = 0

    def begin_epoch(self) -> None:
        self.loss.reset()
        self.images = self.steps = 0
        if self.lr is not None:  # loading a checkpoint replaces the groups' rates: re-share ours
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def running_loss(self) -> float:
        """The mean loss so far as far as the host knows without waiting (for progress bars)."""
        total = self.loss.last_read if self.loss.async_copy else self.loss.total.item()
        return total / max(self.images, 1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """Train on one batch (x (B, C, S, S), y (B,) or soft (B, classes)) at rate ``lr``."""
        if self.lr is not None:
            self.lr.fill_(lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if not self.graphed.replay(x, y, self._captured_body, self._snapshot):
            self._body(x, y, cache=True)
        self.images += len(x)
        self.steps += 1
        self.loss.check(self.steps)

    def end_epoch(self) -> tuple[float, int]:
        """(mean loss, images) of the epoch; waits for this trial's queued work."""
        mean = self.loss.mean(self.images)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return mean, self.images

    def _body(self, x: torch.Tensor, y: torch.Tensor, cache: bool) -> None:
        model, opt, scaler = self.model, self.optimizer, self.scaler
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None, cache_enabled=cache):
            loss = self.criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.clip_grad is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad)
        scaler.step(opt)
        scaler.update()
        self.loss.add(loss, len(x))

    def _captured_body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._body(x, y, cache=False)  # autocast's weight cache cannot live across replays

    def _snapshot(self) -> Callable[[], None]:
        return _Snapshot(self.model, self.optimizer, [self.loss.total]).restore


class EvalStep:
    """Top-1 / top-5 hit counts over evaluation batches; the full-size batch replayed from a CUDA
    graph when ``graph`` is true. Call under ``torch.inference_mode()`` with the model in eval
    mode."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None, device: torch.device,
                 k: int, graph: bool) -> None:
        self.model, self.amp_dtype, self.device, self.k = model, amp_dtype, device, k
        self.graphed = _Graphed(graph, device)
        self.counts: torch.Tensor | None = None  # (2,) hits at 1 and at k, the graph's output

    def __call__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(top-1 hits, top-k hits, images) as device tensors and an int."""
        correct1 = correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        if self.counts is not None:
            self.counts.zero_()
        n = 0
        for x, y in batches:
            if not self.graphed.replay(x, y, self._accumulate, self._fresh_counts):
                hit1, hitk = self._hits(x, y, cache=True)
                correct1 = correct1 + hit1
                correct5 = correct5 + hitk
            n += len(y)
        if self.counts is not None and self.graphed.graph is not None:
            correct1, correct5 = correct1 + self.counts[0], correct5 + self.counts[1]
        return correct1, correct5, n

    def _hits(self, x: torch.Tensor, y: torch.Tensor, cache: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None, cache_enabled=cache):
            logits = self.model(x)  # (B, num_classes)
        top = logits.topk(self.k, dim=1).indices  # (B, k)
        hits = top == y[:, None]
        return hits[:, 0].sum(), hits.any(dim=1).sum()

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        assert self.counts is not None
        hit1, hitk = self._hits(x, y, cache=False)
        self.counts[0] += hit1
        self.counts[1] += hitk

    def _fresh_counts(self) -> Callable[[], None]:
        counts = self.counts = torch.zeros(2, device=self.device, dtype=torch.long)

        def reset() -> None:  # after the warm-up runs have added to it
            counts.zero_()

        return reset


class _CaptureFailed(Exception):
    pass


def _capture(device: torch.device, body: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """``body`` captured as a CUDA graph after a few eager warm-up runs on a side stream.

    Raises:
        torch.cuda.OutOfMemoryError: as is (the trial ends ``oom``).
        _CaptureFailed: any other error of the capture (the caller runs eagerly).
    """
    graph = torch.cuda.CUDAGraph()
    with CAPTURE_LOCK:
        try:
            side = _warm_up(device, body)
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                body()
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # capture_end's error; the cause is in its context
            cause = exc.__context__ or exc
            if isinstance(cause, torch.cuda.OutOfMemoryError):
                raise cause from None
            first = (str(cause).splitlines() or [type(cause).__name__])[0]
            raise _CaptureFailed(f"CUDA graph capture failed: {first}") from exc
    return graph


def _warm_up(device: torch.device, body: Callable[[], None]) -> torch.cuda.Stream:
    """Run ``body`` a few times on a side stream (as capture requires); that stream."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            body()
    current.wait_stream(side)
    return side


def _fits(static: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> bool:
    sx, sy = static
    return (sx.shape == x.shape and sy.shape == y.shape and sx.dtype == x.dtype
            and sy.dtype == y.dtype and sx.stride() == x.stride())
