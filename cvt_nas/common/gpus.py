"""Which GPUs a process sees, which one each worker of a search gets, and how records name them.

A GPU is named by its entry in ``CUDA_VISIBLE_DEVICES`` (``"2"``, or a ``GPU-<uuid>``), or by
its index when that variable is unset: the physical GPU, whatever CUDA calls it inside a
process. Worker ``i`` of a search on GPUs ``gpus`` gets ``CUDA_VISIBLE_DEVICES=gpus[i %
len(gpus)]`` before its interpreter imports torch, so ``cuda`` in that worker is its own GPU;
more workers than GPUs share them round-robin (several trials per GPU).

Torch is imported only when the machine may have a GPU (a ``/dev`` node of a GPU driver on
Linux), so a CPU-only search stays torch-free in its parent process. ``CVT_NAS_FAKE_GPUS=N``
makes this module report N visible GPUs whatever torch sees: tests use it to check the
assignment on machines without one (torch still sees none, so trials run on CPU).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence

from cvt_nas.common.proc import worker_tag

__all__ = ["FAKE_GPUS_ENV", "GpuChoice", "cpu_warning", "parse_choice", "parse_visible",
           "physical_device", "select_gpus", "visible_gpus", "worker_env", "worker_label",
           "workers_per_device"]

FAKE_GPUS_ENV = "CVT_NAS_FAKE_GPUS"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
# Device nodes of GPU drivers torch can use (NVIDIA, WSL's GPU paravirtualisation, AMD ROCm).
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")

GpuChoice = str | int | tuple[str, ...]  # "all", "none", a count, or GPU names


def parse_visible(cuda_visible: str | None, count: int) -> tuple[str, ...]:
    """The names of the ``count`` GPUs CUDA shows a process with this ``CUDA_VISIBLE_DEVICES``.

    Unset: ``0 .. count-1``. Set: its first ``count`` entries (CUDA stops at the first entry it
    cannot use, which torch's count already reflects); empty: none.
    """
    if cuda_visible is None:
        return tuple(str(i) for i in range(count))
    names = [x.strip() for x in cuda_visible.split(",") if x.strip()]
    return tuple(names[:count])


def _torch_count() -> int:
    if sys.platform.startswith("linux") and not any(glob.glob(p) for p in _GPU_NODES):
        return 0  # no GPU driver: skip importing torch
    import torch

    return int(torch.cuda.device_count())


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process can use, by name (``CVT_NAS_FAKE_GPUS`` replaces torch's count)."""
    fake = os.environ.get(FAKE_GPUS_ENV, "").strip()
    count = int(fake) if fake.isdigit() else _torch_count()
    return parse_visible(os.environ.get(VISIBLE_ENV), count)


def parse_choice(text: str) -> GpuChoice:
    """``--gpus``: ``all``, ``none``, a count (``2``; ``0`` is none) or GPU names (``0,2``; one
    GPU as ``2,``, the trailing comma telling a name from a count, as in PyTorch Lightning).

    Raises:
        ValueError: anything else (one line naming the forms).
    """
    text = text.strip()
    if text in ("all", "none"):
        return text
    if text.isdigit():
        return int(text) or "none"
    names = [x.strip() for x in text.split(",")]
    if len(names) > 1 and names[-1] == "":
        names.pop()
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--gpus {text!r}: expected all, none, a count such as 2, or distinct "
                         "GPU names such as 0,2 (one GPU: 2,)")
    return tuple(names)


def select_gpus(choice: GpuChoice | None, visible: Sequence[str], device: str) -> tuple[str, ...]:
    """The GPUs a search spreads its workers over.

    Args:
        choice: `parse_choice`'s value of ``--gpus``; None when not given: every visible GPU if
            ``device`` is ``auto`` or ``cuda``, else none.
        visible: `visible_gpus` of the launching process.
        device: the trials' device (``--device``, else the space's ``train.device``).

    Raises:
        ValueError: GPUs asked for but none visible, a count over the visible ones, a name that
            is not visible, or ``--gpus`` beside a device that names its GPU (``cuda:1``).
    """
    if choice is None:
        return tuple(visible) if device in ("auto", "cuda") else ()
    if choice == "none":
        return ()
    if device.startswith("cuda:"):
        raise ValueError(f"--gpus {_show(choice)}: --device / train.device {device} names one "
                         "GPU; use --device cuda to spread workers over GPUs, or drop --gpus")
    seen = ", ".join(visible) if visible else "none"
    if not visible:
        raise ValueError(f"--gpus {_show(choice)}: no GPU is visible here (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get(VISIBLE_ENV, 'unset')}); use --gpus none or a "
                         "machine with GPUs")
    if choice == "all":
        return tuple(visible)
    if isinstance(choice, int):
        if choice > len(visible):
            raise ValueError(f"--gpus {choice}: only {len(visible)} GPU(s) visible ({seen})")
        return tuple(visible[:choice])
    assert isinstance(choice, tuple)
    missing = [g for g in choice if g not in visible]
    if missing:
        raise ValueError(f"--gpus {_show(choice)}: GPU {', '.join(missing)} is not visible; "
                         f"visible: {seen}")
    return choice


def _show(choice: GpuChoice) -> str:
    if isinstance(choice, tuple):
        return ",".join(choice) + ("," if len(choice) == 1 else "")
    return str(choice)


def worker_env(gpus: Sequence[str], index: int) -> dict[str, str]:
    """The environment of worker ``index``: its one GPU (round-robin when workers outnumber
    GPUs, so several workers share a GPU)."""
    return {VISIBLE_ENV: gpus[index % len(gpus)]}


def workers_per_device(n_workers: int, gpus: Sequence[str]) -> int:
    """How many of ``n_workers`` share one device: round-robin over ``gpus`` (`worker_env`), or
    all of them on the one device there is without GPUs. Packed workers (``--pack``) each fill
    only this share of the device's memory."""
    return -(-n_workers // len(gpus)) if gpus else n_workers


def worker_label() -> str:
    """The ``worker`` column: `worker_tag` (``host:pid:start``), plus ``@gpu<names>`` when the
    process is pinned to GPUs (``CUDA_VISIBLE_DEVICES``, set by `worker_env` or by Ray)."""
    pinned = os.environ.get(VISIBLE_ENV, "").strip()
    return f"{worker_tag()}@gpu{pinned}" if pinned else worker_tag()


def physical_device(device: str | None, cuda_visible: str | None = None,
                    name: str | None = None) -> str | None:
    """The ``device`` column: ``cuda:0`` inside a process pinned to GPU 2 is ``cuda:2``, with
    the GPU's name when CUDA is up (``cuda:2 (NVIDIA H200)``); other devices as they are.

    Args:
        device: the torch device a trial ran on (``cpu``, ``cuda``, ``cuda:0``).
        cuda_visible: this process's ``CUDA_VISIBLE_DEVICES`` (default: read it).
        name: the GPU's name (default: torch's, when torch has initialised CUDA).
    """
    if not device or not device.startswith("cuda") or " " in device:
        return device
    index = int(device.partition(":")[2] or 0)
    if cuda_visible is None:
        cuda_visible = os.environ.get(VISIBLE_ENV)
    names = parse_visible(cuda_visible, index + 1) if cuda_visible is not None else ()
    physical = names[index] if index < len(names) else str(index)
    name = name if name is not None else _gpu_name(index)
    return f"cuda:{physical}" + (f" ({name})" if name else "")


def _gpu_name(index: int) -> str | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    try:
        return str(torch.cuda.get_device_name(index))
    except Exception:  # noqa: BLE001 - a name is a nicety
        return None


def cpu_warning(device: str | None, gpus: int) -> str | None:
    """The record's ``warning`` when a trial trained on the CPU although ``gpus`` GPUs were
    there for the search (this machine's, or a Ray cluster's), else None."""
    if device == "cpu" and gpus > 0:
        return f"ran on cpu while {gpus} GPU(s) were visible"
    return None
