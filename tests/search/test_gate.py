"""The budget gate computes a trial's analytic cost once; the trainer and the record reuse it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from cvt_nas.model import cost as cost_module
from cvt_nas.search.trial import TrialSettings, evaluate, gate, preflight
from cvt_nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
SETTINGS = TrialSettings("gate", "optuna", {"val_top1": "max", "macs": "min"}, threads=2)


def _feasible(space: Any) -> Any:
    return next(s for i in range(50)
                if gate(space, s := space.random(i), SETTINGS).feasible)


def _count_cost_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The image sizes of every `analytic_cost` call from now on.

    A counting wrapper replaces `analytic_cost` in every loaded module that imported it (the
    real cost model runs; only the calls are counted).
    """
    calls: list[int] = []
    real = cost_module.analytic_cost

    def counting(cfg: Any, img_size: int | None = None) -> Any:
        calls.append(img_size or cfg.img_size)
        return real(cfg, img_size)

    for module in list(sys.modules.values()):
        if getattr(module, "analytic_cost", None) is real:
            monkeypatch.setattr(module, "analytic_cost", counting)
    return calls


def test_evaluating_one_trial_calls_the_cost_model_once(monkeypatch) -> None:
    """Gate, constraints, trainer and record all see one `analytic_cost` call."""
    real = cost_module.analytic_cost
    space = load_space(TINY, overrides={"train.train_subset": 200, "train.val_fraction": 0.005})
    sample = _feasible(space)
    calls = _count_cost_calls(monkeypatch)
    outcome = evaluate(space, sample, 0, SETTINGS)
    assert outcome.status == "complete", outcome.record.get("error")
    assert calls == [32]
    assert outcome.gate is not None and outcome.gate.cost is not None
    cost = real(outcome.gate.model)
    assert (outcome.record["params"], outcome.record["macs"]) == (cost.params, cost.macs)
    assert outcome.values == [outcome.record["val_top1"], cost.macs]


def test_a_refused_trial_records_the_gates_cost_without_computing_it_again(monkeypatch) -> None:
    space = load_space(TINY)
    sample = next(s for i in range(50)
                  if not gate(space, s := space.random(i), SETTINGS).feasible)
    calls = _count_cost_calls(monkeypatch)
    outcome = evaluate(space, sample, 0, SETTINGS)
    assert outcome.status == "infeasible" and outcome.gate is not None
    assert calls == [32]  # the gate's one call; the record reuses it
    assert outcome.gate.cost is not None and outcome.gate.params is not None
    assert outcome.gate.params > 60_000  # the space's only constraint is what refused it
    assert (outcome.record["params"], outcome.record["macs"]) == (outcome.gate.params,
                                                                  outcome.gate.macs)


def test_the_gate_carries_the_cost_and_the_violations_use_it() -> None:
    space = load_space(TINY)
    for i in range(20):
        g = gate(space, space.random(i), SETTINGS)
        assert g.cost is not None and g.model is not None
        assert (g.params, g.macs) == (g.cost.params, g.cost.macs)
        assert g.cost == cost_module.analytic_cost(g.model)
        assert g.feasible == (g.cost.params <= 60_000)  # the space's only constraint


def test_preflight_refuses_a_device_this_machine_lacks() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    space = load_space(TINY)
    with pytest.raises(ValueError, match=r"tiny_space.yaml: --device / train.device: device "
                                         r"'cuda': CUDA is not available"):
        preflight(space, TrialSettings("gate", "optuna", {"val_top1": "max"}, device="cuda"))
    assert preflight(space, TrialSettings("gate", "optuna", {"val_top1": "max"},
                                          device="cpu")).cost is not None
