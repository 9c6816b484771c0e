"""Seeds of a trial's epochs, and the largest seed a training config may hold. No torch."""

from __future__ import annotations

__all__ = ["MAX_SEED", "epoch_seed"]


# Per-epoch seeds come from two streams: ``batches`` (shuffling and augmentation, in
# `cvt_nas.training.data`) and ``weights`` (`seed_all` before each epoch: dropout, drop path,
# mixup). Their strides are part of every committed result: changing one changes the numbers.
_EPOCH_STRIDE = {"batches": 7919, "weights": 1}
MAX_SEED = 2**32 - 1  # numpy's seed range; TrainConfig refuses larger seeds


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """The seed of one epoch of one stream (``batches`` or ``weights``) of a seeded trial.

    ``(seed * 1_000_003 + epoch * stride) mod (2**63 - 1)``. The modulus keeps the value a valid
    torch seed; for seeds up to `MAX_SEED` and any realistic epoch the sum is far below it
    (``MAX_SEED * 1_000_003 < 2**52``), so the ``weights`` stream equals the unreduced
    ``seed * 1_000_003 + epoch`` it was defined as.
    """
    return (seed * 1_000_003 + epoch * _EPOCH_STRIDE[stream]) % (2**63 - 1)
