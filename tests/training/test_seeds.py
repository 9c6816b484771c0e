"""Per-epoch seeds: one function for both streams, equal to the two formulas it replaced.

Before, `training.data._epoch_seed` (batches) and `training.trainer._seed` (weights) were two
formulas. The committed results depend on both, so `epoch_seed` must give the same numbers.
"""

from __future__ import annotations

import pytest

from cvt_nas.model.presets import get_config
from cvt_nas.training import trainer
from cvt_nas.training.config import get_recipe
from cvt_nas.training.seeds import MAX_SEED, epoch_seed


def _old_batches(seed: int, epoch: int) -> int:  # training/data.py before the change
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _old_weights(seed: int, epoch: int) -> int:  # training/trainer.py before the change
    return seed * 1_000_003 + epoch


SEEDS = [0, 1, 2, 3, 17, 12345, 2**31 - 1, MAX_SEED - 1, MAX_SEED]
EPOCHS = [1, 2, 3, 10, 300, 10_000, 10**6]


@pytest.mark.parametrize("seed", SEEDS)
def test_both_streams_equal_the_formulas_they_replaced(seed: int) -> None:
    for epoch in EPOCHS:
        assert epoch_seed(seed, epoch, "batches") == _old_batches(seed, epoch)
        assert epoch_seed(seed, epoch, "weights") == _old_weights(seed, epoch)


def test_the_modulus_never_binds_for_an_allowed_seed() -> None:
    # The largest seed and a million epochs stay far below 2**63 - 1: the reduction is a no-op.
    assert MAX_SEED * 1_000_003 + 10**6 * 7919 < 2**53
    with pytest.raises(ValueError, match="field 'seed': must be an integer from 0 to 4294967295"):
        get_recipe("reduced", seed=MAX_SEED + 1)
    with pytest.raises(ValueError, match="field 'split_seed'"):
        get_recipe("reduced", split_seed=-1)
    with pytest.raises(KeyError):
        epoch_seed(0, 1, "dropout")  # only the two streams exist


def test_the_trainer_seeds_each_epoch_from_the_weights_stream(monkeypatch) -> None:
    seen: list[int] = []
    real = trainer.seed_all
    monkeypatch.setattr(trainer, "seed_all", lambda s: (seen.append(s), real(s)))
    cfg = get_config("cvt_micro", depth=(1, 1, 1))
    result = trainer.run_trial(cfg, get_recipe("reduced", epochs=2, train_subset=128, seed=5,
                                               val_fraction=0.002, batch_size=64, threads=2))
    assert result.status == "complete", result.error
    assert seen == [5, _old_weights(5, 1), _old_weights(5, 2)]  # init, then each epoch
