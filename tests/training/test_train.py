"""run_trial on real Fashion-MNIST subsets with a tiny CvT (cvt_micro with one block a stage).

Each training run is one epoch over 500-2000 images (seconds on 2 cores). Accuracy thresholds
are far from the values seen (chance is 10%; one epoch on 2000 images gives about 50-65%).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from cvt_nas.cli import main
from cvt_nas.commands.train import _split_set
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.network import CvT
from cvt_nas.model.presets import get_config
from cvt_nas.training.checkpoint import checkpoint_path
from cvt_nas.training.config import TrainConfig, get_recipe
from cvt_nas.training.datasets import adapt_config
from cvt_nas.training.trainer import (
    TrialPruned,
    TrialResult,
    lr_at,
    make_optimizer,
    run_trial,
)

TINY = get_config("cvt_micro", depth=(1, 1, 1))


def tiny_recipe(**overrides: object) -> TrainConfig:
    base = dict(epochs=1, train_subset=2000, val_fraction=0.02, batch_size=64,
                warmup_epochs=0.2, threads=2)
    return get_recipe("reduced", **{**base, **overrides})


@pytest.fixture(scope="module")
def one_epoch() -> tuple[TrialResult, list[tuple[int, dict]]]:
    reports: list[tuple[int, dict]] = []
    result = run_trial(TINY, tiny_recipe(eval_test=True, test_subset=1000),
                       report=lambda epoch, m: reports.append((epoch, m)))
    return result, reports


def test_one_epoch_learns_well_above_chance(one_epoch) -> None:
    result, _ = one_epoch
    assert result.status == "complete", result.error
    assert result.epochs == 1 and result.seed == 0 and result.device == "cpu"
    # Chance is 10%; a 30% floor is far below what one epoch reaches and far above chance.
    assert result.val_top1 is not None and result.val_top1 > 30.0
    assert result.val_top5 is not None and result.val_top5 > result.val_top1
    assert result.test_top1 is not None and result.test_top1 > 30.0  # eval_test: reported apart
    assert result.train_loss is not None and result.train_loss < math.log(10)
    assert result.images_per_s and result.images_per_s > 0 and result.wall_time_s > 0


def test_costs_are_those_of_the_adapted_config(one_epoch) -> None:
    result, _ = one_epoch
    cfg = adapt_config(TINY, tiny_recipe())
    assert (cfg.in_chans, cfg.num_classes, cfg.img_size) == (1, 10, 32)
    assert result.params == analytic_cost(cfg).params == sum(
        p.numel() for p in CvT(cfg).parameters())
    assert result.macs == analytic_cost(cfg).macs


def test_report_is_called_after_every_epoch_and_history_matches(one_epoch) -> None:
    result, reports = one_epoch
    assert [e for e, _ in reports] == [1]
    metrics = reports[0][1]
    assert {"val_top1", "val_top5", "train_loss", "lr", "time_s", "eval_s", "cpu_s"} <= set(metrics)
    assert metrics["cpu_s"] > 0 and result.cpu_share is not None and result.cpu_share > 0
    assert result.history == [metrics]
    record = json.loads(json.dumps(result.to_dict()))  # JSON-able
    assert record["status"] == "complete" and record["history"][0]["epoch"] == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_cpu_share_shows_a_cpu_shared_with_another_process() -> None:
    """A 1-thread trial pinned to one core beside a busy process pinned there too gets about
    half the core: its ``cpu_s`` per epoch says so (``cpu_share`` well below 1)."""
    keep = os.sched_getaffinity(0)
    core = min(keep)
    busy = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, "
                             f"{{{core}}})\nprint('ready', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {core})  # this thread, where a 1-thread trial runs its ops
        shared = run_trial(TINY, tiny_recipe(threads=1, train_subset=500))
    finally:
        os.sched_setaffinity(0, keep)
        busy.kill()
        busy.wait()
    assert shared.status == "complete", shared.error
    assert all(h["cpu_s"] > 0 for h in shared.history)
    assert shared.cpu_share is not None and shared.cpu_share < 0.75  # about 0.5


def test_resume_gives_the_same_weights_and_seeded_runs_repeat(tmp_path) -> None:
    cfg = tiny_recipe(epochs=2, train_subset=640, val_fraction=0.005)
    full = run_trial(TINY, cfg, checkpoint_dir=tmp_path / "full")
    assert full.status == "complete" and full.epochs == 2

    def stop_after_first(epoch: int, metrics: dict) -> None:
        if epoch == 1:
            raise TrialPruned

    part = run_trial(TINY, cfg, report=stop_after_first, checkpoint_dir=tmp_path / "part")
    assert part.status == "pruned" and part.epochs == 1
    # Same seed, same data, same machine: the first epoch repeats exactly.
    assert part.history[0]["train_loss"] == full.history[0]["train_loss"]
    assert part.val_top1 == full.history[0]["val_top1"]

    resumed = run_trial(TINY, cfg, checkpoint_dir=tmp_path / "part")
    assert resumed.status == "complete" and resumed.epochs == 2
    a = torch.load(checkpoint_path(tmp_path / "full"), weights_only=True)["model"]
    b = torch.load(checkpoint_path(tmp_path / "part"), weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val_top1 == full.val_top1 and resumed.train_loss == full.train_loss

    other = run_trial(TINY.replace(embed_dim=(16, 32, 64)), cfg, checkpoint_dir=tmp_path / "part")
    assert other.status == "failed" and "different model/training config" in other.error


def test_absurd_learning_rate_diverges_instead_of_raising() -> None:
    result = run_trial(TINY, tiny_recipe(lr=1e3, warmup_epochs=0.0, train_subset=512))
    assert result.status == "diverged"
    assert "loss became nan" in result.error or "loss became inf" in result.error


def test_errors_inside_a_trial_are_reported_not_raised() -> None:
    before = torch.get_num_threads()
    try:
        result = run_trial(TINY, tiny_recipe(precision="fp16", threads=1))
        assert torch.get_num_threads() == 1  # run_trial sets threads from the config
    finally:
        torch.set_num_threads(before)
    assert result.status == "failed" and "fp16 autocast needs CUDA" in result.error
    assert result.params == analytic_cost(adapt_config(TINY, tiny_recipe())).params


def test_bf16_autocast_and_channels_last_run_on_cpu() -> None:
    result = run_trial(TINY, tiny_recipe(train_subset=256, precision="bf16",
                                         channels_last=True, val_fraction=0.005))
    assert result.status == "complete", result.error
    assert math.isfinite(result.train_loss)


def test_lr_schedule_warms_up_then_decays_to_min_lr() -> None:
    cfg = TrainConfig(epochs=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=1)
    steps = 100
    assert lr_at(0, steps, cfg) == pytest.approx(1e-6)
    assert lr_at(100, steps, cfg) == pytest.approx(1e-3)
    assert lr_at(550, steps, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(999, steps, cfg) == pytest.approx(1e-5, abs=1e-7)
    lrs = [lr_at(s, steps, cfg) for s in range(1000)]
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101], strict=True))
    assert all(a >= b for a, b in zip(lrs[100:-1], lrs[101:], strict=True))


def test_no_weight_decay_on_norms_biases_cls_token_and_pos_embed() -> None:
    model = CvT(TINY.replace(pos_embed=(True, False, True)))
    opt = make_optimizer(model, 1e-3, 0.05)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    names = {name for name, p in model.named_parameters() if id(p) not in decay}
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert {"stage2.cls_token", "stage0.pos_embed", "stage2.pos_embed", "norm.weight",
            "head.bias", "stage0.blocks.0.attn.conv_proj_q.bn.weight"} <= names
    assert "head.weight" not in names and "stage0.patch_embed.proj.weight" not in names


# -- the command ------------------------------------------------------------------------------


def test_train_command_writes_a_json_record(tmp_path, capsys) -> None:
    code = main(["train", "--model", "cvt_micro", "--set", "depth=[1,1,1]",
                 "--set", "train_subset=512", "--set", "val_fraction=0.005", "--epochs", "1",
                 "--set", "test_subset=300",
                 "--batch-size", "64", "--threads", "2", "--eval-test", "--name", "smoke",
                 "--out", str(tmp_path), "--checkpoint", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "epoch 1/1" in out and "smoke on fashion-mnist: complete" in out
    run = json.loads((tmp_path / "smoke.json").read_text())  # the standard record + history
    record = run["record"]
    assert record["status"] == "complete" and record["backend"] == "train"
    assert record["test_top1"] is not None and len(run["history"]) == 1
    assert record["depth_s1"] == 1 and record["train.train_subset"] == 512
    assert record["arch_id"] == CvTConfig.from_dict(json.loads(record["arch"])).arch_id()
    assert (tmp_path / "smoke.ckpt" / "last.pt").is_file()


def test_train_command_config_file_and_errors(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: cvt_micro, depth: [1, 1, 1]}\nrecipe: reduced\n"
                    "train: {epochs: 1, train_subset: 512, val_fraction: 0.005, lr: 1e3,\n"
                    "        warmup_epochs: 0, batch_size: 64}\n")
    code = main(["train", "--config", str(path), "--out", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "run on fashion-mnist: diverged" in captured.out
    assert json.loads((tmp_path / "run.json").read_text())["record"]["status"] == "diverged"
    assert main(["train", "--model", "cvt_micro", "--set", "epoch=3"]) == 2
    assert "--set epoch: not a TrainConfig or CvTConfig field" in capsys.readouterr().err
    assert main(["train", "--model", "cvt_micro", "--dataset", "cifar10",
                 "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "dataset 'cifar10' not found" in err and str(tmp_path / "none") in err


def test_set_routes_fields_to_the_right_config() -> None:
    model, train = _split_set({"depth": [1, 1, 1], "img_size": 28, "model.act": "gelu",
                               "train.seed": 3, "lr": 1e-3})
    assert model == {"depth": [1, 1, 1], "act": "gelu"}
    assert train == {"img_size": 28, "seed": 3, "lr": 1e-3}


def test_train_dry_run_checks_everything_and_trains_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["train", "--model", "cvt_micro", "--set", "depth=[1,1,2]", "--dry-run",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    cost = analytic_cost(get_config("cvt_micro", depth=(1, 1, 2)))
    assert f"{cost.params:,} params, {cost.macs:,} MACs" in line and "nothing trained" in line
    assert not out.exists()
    assert main(["train", "--model", "cvt_micro", "--dry-run", "--set", "embed_padding=0",
                 "--set", "img_size=2"]) == 2
    assert "no tokens" in capsys.readouterr().err  # the adapted config is checked too
