"""Mid-trial checkpoints: written atomically at epoch ends, read with ``weights_only=True``.

A checkpoint holds the model, optimizer and GradScaler states, the epoch reached, the per-epoch
history and a fingerprint of the configs that produced it. Every random stream of a trial is
re-seeded from (seed, epoch) at each epoch start, so no RNG state needs saving: resuming at an
epoch boundary reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
# TrainConfig fields that do not change what is computed (so a resume may change them).
_NEUTRAL_FIELDS = ("device", "threads", "num_workers", "eval_test", "download", "data_root",
                   "eval_batch_size", "engine")


def fingerprint(model_cfg: dict[str, Any], train_cfg: dict[str, Any]) -> str:
    """A short hash of the two configs, ignoring fields that don't change the computation."""
    train = {k: v for k, v in train_cfg.items() if k not in _NEUTRAL_FIELDS}
    text = json.dumps({"model": model_cfg, "train": train}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/last.pt`` via a temporary file (never a half-written file)."""
    path = checkpoint_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None when there is none.

    Raises:
        ValueError: the checkpoint was written by a different model or training config.
    """
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    if state.get("fingerprint") != expected_fingerprint:
        raise ValueError(
            f"{path}: written by a different model/training config (fingerprint "
            f"{state.get('fingerprint')} != {expected_fingerprint}); use another checkpoint "
            "directory or delete this one to start over"
        )
    return state
