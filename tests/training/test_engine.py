"""The step engine on the CPU: seeded trials equal the plain training loop bit for bit, the
divergence check (direct and the asynchronous, previous-copy reading used on CUDA), the undo of
capture warm-up steps, the fused optimizer's groups, and engine/precision resolution.

The CUDA graph and stream paths need a GPU: scripts/gpu_check.sh runs them.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cvt_nas.model.network import CvT
from cvt_nas.model.presets import get_config
from cvt_nas.training import engine
from cvt_nas.training.augment import seed_all
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.data import TrialData
from cvt_nas.training.datasets import adapt_config
from cvt_nas.training.trainer import lr_at, make_loss, make_optimizer, run_trial

TINY = get_config("cvt_micro", depth=(1, 1, 1))
CPU = torch.device("cpu")


def small(**overrides: object) -> TrainConfig:
    base = dict(train_subset=256, val_fraction=0.02, epochs=2, batch_size=64, device="cpu",
                threads=1, seed=5, warmup_epochs=0.5)
    return TrainConfig(**{**base, **overrides})


def plain_loop(model_cfg: object, tcfg: TrainConfig) -> list[tuple[float, float, float]]:
    """(train loss, val top-1, val top-5) per epoch from the textbook PyTorch loop: the numbers a
    CPU trial must reproduce exactly (what the trainer computed before the engine existed)."""
    torch.set_num_threads(tcfg.threads or 1)
    cfg = adapt_config(model_cfg, tcfg)  # type: ignore[arg-type]
    data = TrialData(tcfg, CPU)
    seed_all(tcfg.seed)
    model = CvT(cfg)
    opt = make_optimizer(model, tcfg.lr, tcfg.weight_decay)
    criterion, mixup = make_loss(tcfg, cfg.num_classes)
    steps, out = data.steps_per_epoch, []
    for epoch in range(1, tcfg.epochs + 1):
        seed_all(tcfg.seed * 1_000_003 + epoch)
        model.train()
        total, images = torch.zeros(()), 0
        for i, (x, y) in enumerate(data.train_batches(epoch, tcfg.seed)):
            for group in opt.param_groups:
                group["lr"] = lr_at((epoch - 1) * steps + i, steps, tcfg)
            if mixup is not None:
                x, y = mixup(x, y)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_grad)
            opt.step()
            total += loss.detach().float() * len(x)
            images += len(x)
        model.eval()
        hit1 = hit5 = n = 0
        with torch.inference_mode():
            for x, y in data.eval_batches("val"):
                top = model(x).topk(5, dim=1).indices
                hit1 += int((top[:, 0] == y).sum())
                hit5 += int((top == y[:, None]).any(dim=1).sum())
                n += len(y)
        out.append((total.item() / images, 100.0 * hit1 / n, 100.0 * hit5 / n))
    return out


@pytest.mark.parametrize("overrides", [{}, {"clip_grad": 0.5, "shift": 1}])
def test_cpu_trial_equals_the_plain_loop_bit_for_bit(overrides: dict) -> None:
    tcfg = small(**overrides)
    result = run_trial(TINY, tcfg)
    assert result.status == "complete", result.error
    got = [(h["train_loss"], h["val_top1"], h["val_top5"]) for h in result.history]
    assert got == plain_loop(TINY, tcfg)  # exact equality: same ops, same order
    assert (result.precision, result.engine) == ("fp32", "eager")


def test_precision_auto_is_fp32_on_cpu_and_changes_nothing() -> None:
    auto = run_trial(TINY, small(precision="auto", epochs=1))
    fp32 = run_trial(TINY, small(precision="fp32", epochs=1))
    assert auto.status == fp32.status == "complete"
    assert auto.precision == "fp32" and auto.engine == "eager"
    assert auto.history[0]["train_loss"] == fp32.history[0]["train_loss"]


# -- divergence check ------------------------------------------------------------------------


def feed(loss_sum: engine.LossSum, losses: list[float]) -> int | None:
    """Add one loss per step and check; the step at which `Diverged` was raised, else None."""
    for step, value in enumerate(losses, start=1):
        loss_sum.add(torch.tensor(value), 1)
        try:
            loss_sum.check(step)
        except engine.Diverged as exc:
            assert exc.step is not None and not math.isfinite(exc.value)
            return step
    return None


def test_direct_check_raises_at_the_first_check_after_the_loss_goes_bad() -> None:
    every_step = engine.LossSum(CPU, check_every=1)
    assert feed(every_step, [1.0, 1.0, math.nan, 1.0]) == 3
    every_third = engine.LossSum(CPU, check_every=3)
    assert feed(every_third, [1.0, math.inf, 1.0, 1.0, 1.0, 1.0]) == 3


def test_async_check_reads_the_previous_copy_so_it_never_waits() -> None:
    # NaN enters at step 3. Copies are made at steps 2, 4, 6; each check reads the one before:
    # step 4 reads step 2's copy (finite), step 6 reads step 4's copy (NaN) and names step 4.
    sums = engine.LossSum(CPU, check_every=2, async_copy=True)
    losses = [1.0, 1.0, math.nan, 1.0, 1.0, 1.0]
    for step, value in enumerate(losses, start=1):
        sums.add(torch.tensor(value), 1)
        if step < 6:
            sums.check(step)
            if step == 4:
                assert sums.last_read == 2.0  # the step-2 copy: 1 + 1
    with pytest.raises(engine.Diverged) as caught:
        sums.check(6)
    assert caught.value.step == 4 and math.isnan(caught.value.value)


def test_async_check_misses_nothing_the_epoch_end_sees() -> None:
    sums = engine.LossSum(CPU, check_every=50, async_copy=True)
    assert feed(sums, [1.0, math.inf, 1.0]) is None  # no check in 3 steps
    with pytest.raises(engine.Diverged) as caught:
        sums.mean(3)
    assert caught.value.step is None
    sums.reset()
    sums.add(torch.tensor(2.0), 4)
    assert sums.mean(4) == 2.0


def test_a_diverging_trial_reports_epoch_and_step() -> None:
    result = run_trial(TINY, small(lr=1e6, warmup_epochs=0.0, epochs=1))
    assert result.status == "diverged"
    assert result.error is not None and result.error.startswith("loss became ")
    assert "at epoch 1" in result.error


# -- capture support that runs on the CPU ----------------------------------------------------


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def test_snapshot_undoes_warm_up_steps_exactly() -> None:
    torch.manual_seed(0)
    model = CvT(TINY.replace(in_chans=1, num_classes=10))  # BatchNorm buffers move in training
    twin = copy.deepcopy(model)
    opt, twin_opt = (make_optimizer(m, 1e-2, 0.05) for m in (model, twin))
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    one_step(model, opt, x, y)
    one_step(twin, twin_opt, x, y)  # both have optimizer state now
    total = torch.tensor(3.0)
    undo = engine._Snapshot(model, opt, [total])
    for _ in range(3):  # what a capture's warm-up does
        one_step(model, opt, torch.randn(8, 1, 32, 32), y)
        total += 1.0
    undo.restore()
    assert total.item() == 3.0
    one_step(model, opt, x, y)
    one_step(twin, twin_opt, x, y)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_snapshot_resets_optimizer_state_made_after_it_to_fresh() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    twin = copy.deepcopy(model)
    opt, twin_opt = (make_optimizer(m, 1e-2, 0.05) for m in (model, twin))
    undo = engine._Snapshot(model, opt, [])  # no state yet: AdamW makes it on the first step
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    one_step(model, opt, x, y)
    undo.restore()
    one_step(model, opt, x, y)
    one_step(twin, twin_opt, x, y)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fused_adamw_keeps_the_groups_and_shares_one_rate_tensor() -> None:
    torch.manual_seed(0)
    model = CvT(TINY.replace(in_chans=1, num_classes=10))
    twin = copy.deepcopy(model)
    plain = make_optimizer(model, 2e-3, 0.05)
    fused = engine.fused_adamw(make_optimizer(twin, 2e-3, 0.05), CPU)
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0.0]
    assert [len(g["params"]) for g in fused.param_groups] == [
        len(g["params"]) for g in plain.param_groups]
    lr = fused.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and all(g["lr"] is lr for g in fused.param_groups)
    assert fused.defaults["fused"] and fused.defaults["capturable"]
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    for rate in (2e-3, 1e-3):
        for group in plain.param_groups:
            group["lr"] = rate
        lr.fill_(rate)
        one_step(model, plain, x, y)
        one_step(twin, fused, x, y)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        # fused and for-loop AdamW round differently; updates are ~1e-3, errors ~1e-7
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert engine.device_optimizer(plain, CPU) is plain  # the CPU loop keeps its optimizer


# -- resolution and configuration ------------------------------------------------------------


def test_engine_and_precision_resolution() -> None:
    cuda = torch.device("cuda")
    assert engine.resolve_precision("auto", CPU) == "fp32"
    assert engine.resolve_precision("auto", cuda) == "bf16"
    assert engine.resolve_precision("fp16", cuda) == "fp16"
    assert engine.resolve_engine(None, CPU, "fp32") == "eager"
    assert engine.resolve_engine(None, cuda, "bf16") == "graph"
    assert engine.resolve_engine(None, cuda, "fp16") == "eager"
    assert engine.resolve_engine("eager", cuda, "bf16") == "eager"
    with pytest.raises(ValueError, match="field 'engine': 'graph' needs CUDA"):
        engine.resolve_engine("graph", CPU, "fp32")
    with pytest.raises(ValueError, match="field 'engine'.*fp16"):
        engine.resolve_engine("graph", cuda, "fp16")
    assert engine.trial_stream(CPU) is None


def test_engine_field_is_validated_and_unset_by_default() -> None:
    assert TrainConfig().engine is None and TrainConfig(engine="eager").engine == "eager"
    with pytest.raises(ValueError, match="field 'engine'"):
        TrainConfig(engine="fast")
    result = run_trial(TINY, small(engine="graph", epochs=1))
    assert result.status == "failed" and "needs CUDA" in (result.error or "")
