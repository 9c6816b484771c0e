"""Peak device memory of one trial, from the analytic config, and how many trials fit at once.

    bytes(trial) = state + data + batch * activation_elements * bytes_per_element + overhead

* ``state``: parameters, gradients and AdamW's two moments, 16 bytes a parameter (fp32 master
  weights under every precision), from `analytic_cost`'s exact parameter count.
* ``data``: a tensor dataset held on the device as uint8 (the full training set while the split
  is taken, the trial's training and validation images, the test images).
* ``activation_elements``: what autograd saves for the backward pass of one image, counted from
  the config (`activation_elements`: every LayerNorm, projection, attention and MLP input that a
  backward needs, token grid by token grid). On the CPU in fp32 it is within 2% of the bytes that
  torch's saved-tensor hooks see (tests/training/test_memory.py).
* ``bytes_per_element`` and ``overhead``: per device and precision, fitted once by `calibrate`
  from the allocator's peak at two batch sizes (it absorbs temporaries, autocast copies and CUDA
  graph pools) and stored as JSON (`save_calibration`). Uncalibrated defaults are conservative.

`pack_count` and `MemoryBudget` turn estimates into the number of co-tenant trials on a device.
The arithmetic is torch-free; only `calibrate` and `measure_*` import torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cvt_nas.model.config import CvTConfig, conv_out
from cvt_nas.model.cost import _proj_grid, analytic_cost

STATE_BYTES_PER_PARAM = 16  # fp32 weight, gradient, AdamW exp_avg and exp_avg_sq
# Before calibration: fp32 saves 4-byte tensors; autocast keeps fp32 originals beside 2-byte
# copies, and the peak adds temporaries: 1.5x the saved bytes is a safe start.
DEFAULT_BYTES_PER_ELEMENT = {"fp32": 6.0, "bf16": 6.0, "fp16": 6.0}
DEFAULT_OVERHEAD = 512 * 2**20  # cuBLAS/cuDNN workspaces, allocator rounding

__all__ = [
    "Calibration", "MemoryBudget", "TrialMemory", "activation_elements", "calibrate",
    "calibration_path", "estimate", "load_calibration", "measure_saved_bytes", "pack_count",
    "save_calibration", "state_bytes",
]


def state_bytes(cfg: CvTConfig) -> int:
    """Parameters, gradients and AdamW state of ``CvT(cfg)`` (step counters not counted)."""
    return STATE_BYTES_PER_PARAM * analytic_cost(cfg).params


def activation_elements(cfg: CvTConfig, img_size: int | None = None) -> int:
    """Elements autograd saves for backward per image in one training step of ``CvT(cfg)``.

    Per stage: the embedding convolution's input and output; per block: norm1's input, the token
    grid of the projections, each projection's own saved tensors, q/k/v, the attention output and
    its log-sum-exp, norm2's input and output with their statistics, and the MLP's hidden
    activations (two for GELU, three for QuickGELU). Drop-path saves only a per-image mask.
    """
    size = cfg.img_size if img_size is None else img_size
    h = w = size
    cin = cfg.in_chans
    total = 0
    for s in range(cfg.num_stages):
        c, k = cfg.embed_dim[s], cfg.embed_kernel[s]
        total += cin * h * w  # the embedding convolution's input (image or previous stage)
        h = conv_out(h, k, cfg.embed_stride[s], cfg.embed_padding[s])
        w = conv_out(w, k, cfg.embed_stride[s], cfg.embed_padding[s])
        n, cls = h * w, int(cfg.cls_token[s])
        tokens = n + cls
        total += n * c  # convolution output, the embedding LayerNorm's input
        method, kernel, heads = cfg.proj_method[s], cfg.qkv_kernel[s], cfg.num_heads[s]
        for j in range(cfg.depth[s]):
            hidden = int(c * cfg.block_value("mlp_ratio", s, j))
            qh, qw = _proj_grid(method, h, w, kernel, cfg.q_stride[s], True)
            kh, kw = _proj_grid(method, h, w, kernel, cfg.block_value("kv_stride", s, j), False)
            mq, mkv = qh * qw, kh * kw
            nq, nkv = mq + cls, mkv + cls
            e = tokens * c + 2 * tokens  # norm1: input, mean and rstd
            if method == "dw_bn":  # grid; per projection conv output and BN output (or cat)
                e += n * c + (2 * mq + 4 * mkv + 3 * cls) * c
            elif method == "avg":  # grid (pooled for k, v); q is the tokens (a cat with cls)
                e += n * c + cls * tokens * c + 2 * (mkv + cls) * c
            else:  # linear: q, k and v all read norm1's output
                e += tokens * c
            e += (nq + 2 * nkv) * c + nq * c + heads * nq  # q, k, v, output, log-sum-exp
            e += 2 * tokens * c + 2 * tokens  # norm2: input, output (fc1's input), statistics
            e += (3 if cfg.act == "quick_gelu" else 2) * tokens * hidden
            total += e
        cin = c
    c = cfg.embed_dim[-1]
    return total + 2 * c + 2 * cfg.num_classes  # final norm, head input, log-softmax


@dataclass(frozen=True)
class Calibration:
    """Per device and precision: bytes of peak memory per activation element, and a constant."""

    device: str
    precision: str
    bytes_per_element: float
    overhead_bytes: int
    measured_at: str = ""
    torch: str = ""

    @classmethod
    def default(cls, device: str = "uncalibrated", precision: str = "fp32") -> Calibration:
        return cls(device, precision, DEFAULT_BYTES_PER_ELEMENT.get(precision, 6.0),
                   DEFAULT_OVERHEAD)


@dataclass(frozen=True)
class TrialMemory:
    """The parts of one trial's estimated peak, in bytes."""

    state: int
    data: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.state + self.data + self.activations + self.overhead


def estimate(cfg: CvTConfig, batch_size: int, calibration: Calibration | None = None,
             data_bytes: int = 0, eval_batch_size: int | None = None) -> TrialMemory:
    """Estimated peak memory of training ``CvT(cfg)`` (already adapted to its data) at
    ``batch_size``. Evaluation saves nothing; its batch (default 2x) counts a quarter as much."""
    cal = calibration or Calibration.default()
    per_image = activation_elements(cfg) * cal.bytes_per_element
    eval_images = 2 * batch_size if eval_batch_size is None else eval_batch_size
    images = batch_size + 0.25 * eval_images
    return TrialMemory(state_bytes(cfg), data_bytes, math.ceil(images * per_image),
                       cal.overhead_bytes)


def tensor_data_bytes(images: int, channels: int, height: int, width: int,
                      held_images: int) -> int:
    """uint8 images a tensor dataset keeps on the device: the full training set (``images``)
    plus the trial's own copies (``held_images``: train subset, validation and test)."""
    return (images + held_images) * channels * height * width


# -- packing -----------------------------------------------------------------------------------


def pack_count(free_bytes: int, trial_bytes: int, max_k: int, reserve: float = 0.1) -> int:
    """How many trials of ``trial_bytes`` each run at once in ``free_bytes``: as many as fit
    after keeping ``reserve`` of the memory free, at least 1 (a trial alone always runs; if it
    does not fit it ends ``oom`` and says so) and at most ``max_k``."""
    if trial_bytes <= 0:
        raise ValueError(f"trial_bytes must be > 0, got {trial_bytes}")
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    if not 0.0 <= reserve < 1.0:
        raise ValueError(f"reserve must be in [0, 1), got {reserve}")
    return max(1, min(max_k, int(free_bytes * (1.0 - reserve)) // trial_bytes))


class MemoryBudget:
    """Admission of trials of different sizes onto one device: a trial starts when its estimate
    fits beside the running ones (or when nothing runs), and gives its bytes back when done."""

    def __init__(self, capacity_bytes: int, max_k: int) -> None:
        self.capacity, self.max_k = capacity_bytes, max_k
        self.running: list[int] = []

    def fits(self, nbytes: int) -> bool:
        if not self.running:
            return True
        return len(self.running) < self.max_k and sum(self.running) + nbytes <= self.capacity

    def admit(self, nbytes: int) -> bool:
        """Start a trial of ``nbytes`` if it fits; whether it did."""
        if not self.fits(nbytes):
            return False
        self.running.append(nbytes)
        return True

    def release(self, nbytes: int) -> None:
        self.running.remove(nbytes)


# -- calibration ------------------------------------------------------------------------------


def calibration_path(device: str, precision: str, root: str | Path | None = None) -> Path:
    """``<root>/<device>-<precision>.json``; root defaults to ``$CVT_NAS_CACHE/memory`` or
    ``~/.cache/cvt-nas/memory``."""
    if root is None:
        base = os.environ.get("CVT_NAS_CACHE")
        root = Path(base) / "memory" if base else Path.home() / ".cache" / "cvt-nas" / "memory"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return Path(root) / f"{slug}-{precision}.json"


def save_calibration(cal: Calibration, root: str | Path | None = None) -> Path:
    path = calibration_path(cal.device, cal.precision, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal), indent=1) + "\n")
    return path


def load_calibration(device: str, precision: str,
                     root: str | Path | None = None) -> Calibration | None:
    """The stored calibration of a device and precision, or None when there is none."""
    path = calibration_path(device, precision, root)
    if not path.is_file():
        return None
    try:
        return Calibration(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a memory calibration ({exc}); delete it to recalibrate"
                         ) from None


def calibrate(cfg: CvTConfig, device: str, precision: str,
              measure: Callable[[int], int], batches: Iterable[int] = (32, 128)) -> Calibration:
    """Fit ``bytes_per_element`` and ``overhead`` from peaks measured at two or more batch sizes.

    ``measure(batch)`` returns the peak bytes of a training step of ``CvT(cfg)`` at that batch
    (state included): `measure_cuda_peak` on a GPU, `measure_saved_bytes` plus state on a CPU.
    The slope over the batch gives bytes per activation element, the intercept minus the state
    the overhead.
    """
    sizes = sorted(set(batches))
    if len(sizes) < 2:
        raise ValueError("calibrate needs at least two batch sizes")
    peaks = [measure(b) for b in sizes]
    n = len(sizes)
    mean_b, mean_p = sum(sizes) / n, sum(peaks) / n
    slope = (sum((b - mean_b) * (p - mean_p) for b, p in zip(sizes, peaks, strict=True))
             / sum((b - mean_b) ** 2 for b in sizes))
    intercept = mean_p - slope * mean_b
    import torch

    return Calibration(
        device=device, precision=precision,
        bytes_per_element=slope / activation_elements(cfg),
        overhead_bytes=max(0, int(intercept - state_bytes(cfg))),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"), torch=torch.__version__,
    )


def measure_saved_bytes(model: Any, x: Any, y: Any) -> int:
    """Bytes of the distinct tensors (storages) autograd saves in one forward of ``model`` on
    ``(x, y)`` with cross-entropy, parameters excluded: torch's own account of activations."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return sum(saved.values())


def measure_cuda_peak(cfg: CvTConfig, batch: int, precision: str, device: Any,
                      steps: int = 3) -> int:
    """Peak allocated bytes of a few eager training steps of ``CvT(cfg)`` at ``batch`` on a
    CUDA device (model, fused AdamW and autocast as a trial runs them)."""
    import torch

    from cvt_nas.model.network import CvT
    from cvt_nas.training.engine import AMP_DTYPES

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model = CvT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    dtype = AMP_DTYPES[precision]
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del model, opt, x, y, loss
    torch.cuda.empty_cache()
    return int(peak)
