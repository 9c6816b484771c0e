"""The one trial function of a search, shared by the Optuna and Ray Tune backends.

    sample (space.sample) -> configs adapted to the data -> analytic cost -> budget gate
    -> [latency] -> run_trial -> record (cvt_nas.results.make_record) -> objective values

A backend only draws the sample with its own sampler, passes a per-epoch ``report`` callback
(pruning lives there) and stores what `evaluate` returns. Where a feasible sample runs is a
`Runner`: trained here (`LocalRunner`, the default), or answered from a CvT-Bench table
(`cvt_nas.search.table_backend.TableRunner`). Configs over budget are never built or
trained: they come back ``infeasible`` with the reason and a constraint violation > 0 that the
backend hands to its sampler, so it is steered away from them.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cvt_nas.common.gpus import cpu_warning, worker_label
from cvt_nas.common.proc import worker_tag
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost
from cvt_nas.space import INVALID, Sample, SearchSpace, Violation, parse_objectives
from cvt_nas.training.config import TrainConfig
from cvt_nas.training.datasets import adapt_config

if TYPE_CHECKING:
    from cvt_nas.training.memory import Calibration
    from cvt_nas.training.packing import DeviceGate

Report = Callable[[int, dict[str, Any]], None]
# What an infeasible trial "scores" for a sampler (never shown as a result): worst accuracy,
# its true costs, and an unknown (infinite) latency.
LATENCY_UNKNOWN = math.inf

__all__ = [
    "Gate", "LATENCY_UNKNOWN", "LocalRunner", "Outcome", "PackedRunner", "Runner", "TrialSettings",
    "evaluate", "gate", "preflight",
    "measure_latency", "objective_values", "parse_objectives", "record_extra", "worker_tag",
]


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares: names, objectives and run-time overrides.

    Attributes:
        study: the study name (records carry it).
        backend: ``optuna`` or ``ray`` (records carry it).
        objectives: e.g. ``{"val_top1": "max", "macs": "min"}``.
        device: overrides the space's ``train.device`` (None keeps it).
        threads: torch threads of one trial (None leaves torch's setting).
        latency_batch: batch size of the latency measurement.
        gpus_seen: GPUs there were for the search (this machine's, or the Ray cluster's): a
            trial that trains on the CPU anyway says so in its record's ``warning``.
    """

    study: str
    backend: str
    objectives: dict[str, str]
    device: str | None = None
    threads: int | None = None
    latency_batch: int = 1
    gpus_seen: int = 0


@dataclass(frozen=True)
class Gate:
    """The budget gate's verdict on one sample, computed before anything is built.

    ``cost`` is the trial's one analytic cost: the trainer and the record reuse it.
    """

    model: CvTConfig | None  # adapted to the dataset (what would be trained)
    train: TrainConfig | None
    cost: Cost | None  # of ``model`` at the search image size; None without a valid model
    violations: tuple[Violation, ...]

    @property
    def params(self) -> int | None:
        return self.cost.params if self.cost is not None else None

    @property
    def macs(self) -> int | None:
        return self.cost.macs if self.cost is not None else None

    @property
    def feasible(self) -> bool:
        return not self.violations

    @property
    def violation(self) -> float:
        """Total constraint violation (0 when feasible), the sampler's constraint value."""
        return float(sum(v.amount for v in self.violations))

    @property
    def reason(self) -> str | None:
        return "; ".join(v.message for v in self.violations) or None


@dataclass
class Outcome:
    """What a backend stores for a trial and tells its sampler."""

    status: str
    record: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    values: list[float] | None = None  # None: the sampler gets no values (pruned, failed)
    gate: Gate | None = None
    reused: bool = False  # the result of an earlier trial with the same parameters


class Runner(Protocol):
    """Where a feasible sample runs: its latency, its training, and columns of its own."""

    def latency(self, g: Gate, settings: TrialSettings) -> float:
        """Inference latency (ms) of the gate's model, before training (an objective)."""
        ...

    def run(self, sample: Sample, g: Gate, report: Report | None) -> Any:
        """Train (or look up) the sample; a `TrialResult`. ``report`` may raise `TrialPruned`."""
        ...

    def finish(self, record: dict[str, Any], result: Any | None) -> None:
        """Complete a trial's record in place (every status; ``result`` None when not run)."""
        ...


class LocalRunner:
    """The default runner: latency measured and the sample trained in this process."""

    def latency(self, g: Gate, settings: TrialSettings) -> float:
        import torch

        assert g.model is not None and g.train is not None
        if g.train.threads:
            torch.set_num_threads(g.train.threads)
        return measure_latency(g.model, g.train.device, settings.latency_batch)

    def run(self, sample: Sample, g: Gate, report: Report | None) -> Any:
        from cvt_nas.training.trainer import run_trial

        assert sample.model is not None and g.train is not None
        return run_trial(sample.model, g.train, report=report, cost=g.cost)

    def finish(self, record: dict[str, Any], result: Any | None) -> None:
        """Nothing to add: `make_record` wrote every column of a trained trial."""


class PackedRunner(LocalRunner):
    """Trains samples as `LocalRunner` does, several at once from threads of one process
    (``cvt-nas search --pack K``): every trial passes one `cvt_nas.training.packing.DeviceGate`,
    which starts it when its estimated peak memory (`cvt_nas.training.packing.trial_memory`)
    fits beside the running ones and runs it again alone if it ran out of memory beside them.
    Records get `cvt_nas.training.packing.packed_columns`.
    """

    def __init__(self, gate: DeviceGate, calibration: Calibration | None = None) -> None:
        self.gate, self.calibration = gate, calibration
        self._local = threading.local()  # the packed run of this thread's current trial

    def run(self, sample: Sample, g: Gate, report: Report | None) -> Any:
        from cvt_nas.training.packing import run_gated
        from cvt_nas.training.trainer import run_trial

        assert sample.model is not None and g.train is not None
        model, train = sample.model, g.train
        packed = run_gated(self.gate, model, train, self.calibration,
                           lambda: run_trial(model, train, report=report, cost=g.cost))
        self._local.packed = packed
        return packed.result

    def finish(self, record: dict[str, Any], result: Any | None) -> None:
        from cvt_nas.training.packing import packed_columns

        packed, self._local.packed = getattr(self._local, "packed", None), None
        if packed is None or result is None:
            return
        columns = packed_columns(packed)
        if "warning" in columns:
            columns["warning"] = "; ".join(filter(None, (record.get("warning"),
                                                         columns["warning"])))
        record.update(columns)


def gate(space: SearchSpace, sample: Sample, settings: TrialSettings) -> Gate:
    """Adapt the sample to its dataset, cost it once and check every constraint.

    Torch-free: no model is built and torch is not imported.

    Raises:
        FileNotFoundError: an image-folder dataset is missing (its classes cannot be counted).
    """
    if sample.model is None or sample.train is None:
        return Gate(None, sample.train, None,
                    (Violation("valid", sample.error or "invalid sample", INVALID),))
    train = sample.train
    over: dict[str, Any] = {}
    if settings.device is not None:
        over["device"] = settings.device
    if settings.threads is not None:
        over["threads"] = settings.threads
    if over:
        train = train.replace(**over)
    try:
        model = adapt_config(sample.model, train)
    except ValueError as exc:
        return Gate(None, train, None, (Violation("valid", str(exc), INVALID),))
    try:
        cost = space.cost(model)
    except ValueError as exc:
        return Gate(model, train, None,
                    (Violation("valid", f"invalid architecture: {exc}", INVALID),))
    return Gate(model, train, cost, tuple(space.violations(model, cost=cost)))


def preflight(space: SearchSpace, settings: TrialSettings) -> Gate:
    """Gate one sample before a search starts, so missing data or a missing device fails at
    once, not in every trial.

    Raises:
        FileNotFoundError: the space's dataset is not where it says.
        ValueError: the device (``--device`` or the space's ``train.device``) is not on this
            machine, e.g. ``cuda`` without CUDA.
    """
    g = gate(space, space.random(0), settings)
    device = settings.device or (g.train.device if g.train is not None else None)
    if device not in (None, "cpu", "auto"):
        from cvt_nas.training.trainer import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            raise ValueError(f"{space.source}: --device / train.device: {exc}") from None
    return g


def measure_latency(cfg: CvTConfig, device: str = "cpu", batch_size: int = 1,
                    warmup: int = 3, repeats: int = 10) -> float:
    """Median inference latency in milliseconds of one forward pass of ``CvT(cfg)``."""
    import torch

    from cvt_nas.model.network import CvT
    from cvt_nas.training.trainer import resolve_device

    dev = resolve_device(device)
    model = CvT(cfg).to(dev).eval()
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=dev)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            model(x)  # (B, num_classes)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def objective_values(record: Mapping[str, Any], objectives: Mapping[str, str]) -> list[float]:
    """The record's objective values, in the order of ``objectives``."""
    out = []
    for name in objectives:
        value = record.get(name)
        out.append(float(value) if value is not None else math.nan)
    return out


def record_extra(sample: Sample, g: Gate, settings: TrialSettings) -> dict[str, Any]:
    """Columns a search adds to `make_record`'s: sampled parameters, violation, worker (with
    its GPU, `cvt_nas.common.gpus.worker_label`)."""
    extra: dict[str, Any] = {"params_sampled": json.dumps(sample.params, sort_keys=True),
                             "constraint_violation": g.violation, "worker": worker_label()}
    if "latency" in settings.objectives:
        extra["latency"] = None
    return extra


def _infeasible_values(g: Gate, objectives: Mapping[str, str]) -> list[float]:
    known = {"val_top1": 0.0, "macs": g.macs, "params": g.params, "latency": LATENCY_UNKNOWN}
    return [float(v) if (v := known[n]) is not None else LATENCY_UNKNOWN for n in objectives]


def evaluate(
    space: SearchSpace,
    sample: Sample,
    trial: int,
    settings: TrialSettings,
    report: Report | None = None,
    on_gate: Callable[[Gate, dict[str, float]], None] | None = None,
    reuse: Callable[[str], tuple[dict[str, Any], list[dict[str, Any]]] | None] | None = None,
    runner: Runner | None = None,
) -> Outcome:
    """Run one trial of a search from its sample: gate, (latency,) train, record.

    Args:
        space: the search space (budget and image size).
        sample: the drawn parameters and configs.
        trial: the trial number within the study (records carry it).
        settings: study-wide settings.
        report: per-epoch callback handed to `run_trial` (may raise `TrialPruned`).
        on_gate: called once the gate has decided, before any training, with the gate and the
            costs known up front (``macs``, ``params``, ``latency`` when measured); backends
            use it to give their sampler the constraint value.
        reuse: looks up a finished ``complete`` trial of the study by its sampled parameters
            (``params_sampled``, JSON) and returns its record and history; a feasible sample
            found there is not trained again: its result is copied under this trial's number with
            ``wall_time_s`` 0 and ``reason`` naming the source trial. Seeded CPU training on the
            same thread count is deterministic, so retraining would give the same numbers; on
            another thread count or device they differ by floating-point rounding (or GPU
            nondeterminism), far less than seed-to-seed noise.
        runner: where a feasible sample runs (default `LocalRunner`: trained here); its
            ``finish`` completes every record, trained or not.

    Returns:
        The outcome; ``values`` are set for ``complete`` trials (the objectives) and for
        ``infeasible`` ones (worst accuracy and their true costs, to steer a sampler away).
    """
    from cvt_nas.results import make_record

    runner = runner if runner is not None else LocalRunner()
    g = gate(space, sample, settings)
    extra = record_extra(sample, g, settings)
    known: dict[str, float] = {}
    if g.macs is not None and g.params is not None:
        known = {"macs": float(g.macs), "params": float(g.params)}
    if not g.feasible:
        if on_gate is not None:
            on_gate(g, known)
        record = _infeasible_record(space, sample, g, trial, settings, extra)
        runner.finish(record, None)
        return Outcome("infeasible", record, [], _infeasible_values(g, settings.objectives), g)
    assert g.model is not None and g.train is not None
    assert sample.model is not None  # gate() gives no model for a sample without one
    previous = reuse(extra["params_sampled"]) if reuse is not None else None
    if previous is not None:
        if previous[0].get("latency") is not None:
            known["latency"] = float(previous[0]["latency"])
        if on_gate is not None:
            on_gate(g, known)
        outcome = _reused(previous, trial, extra, settings, g)
        runner.finish(outcome.record, None)
        return outcome
    if "latency" in settings.objectives:
        extra["latency"] = known["latency"] = runner.latency(g, settings)
    if on_gate is not None:
        on_gate(g, known)
    from cvt_nas.training.trainer import TrialPruned

    why: list[str] = []

    def reporting(epoch: int, metrics: dict[str, Any]) -> None:
        assert report is not None
        try:
            report(epoch, metrics)
        except TrialPruned as exc:
            why.append(str(exc) or f"pruned after epoch {epoch}")
            raise

    result = runner.run(sample, g, reporting if report else None)
    if warning := cpu_warning(result.device, settings.gpus_seen):
        extra["warning"] = warning
    record = make_record(study=settings.study, trial=trial, backend=settings.backend,
                         model_cfg=g.model, train_cfg=g.train, result=result,
                         reason=result.error or (why[0] if why else None), extra=extra,
                         cost=g.cost)
    runner.finish(record, result)
    values = None
    if result.status == "complete":
        values = objective_values(record, settings.objectives)
        if any(math.isnan(v) for v in values):  # e.g. no validation split: nothing to rank
            record["status"], values = "failed", None
            record["reason"] = "an objective is missing (val_fraction 0 gives no val_top1)"
    return Outcome(record["status"], record, list(result.history), values, g)


def _reused(previous: tuple[dict[str, Any], list[dict[str, Any]]], trial: int,
            extra: dict[str, Any], settings: TrialSettings, g: Gate) -> Outcome:
    from cvt_nas.results import reused_record

    source, history = previous
    record = reused_record(
        source, study=settings.study, trial=trial, worker=extra["worker"],
        reason=f"same parameters as trial {source['trial']}: its result, not retrained")
    return Outcome("complete", record, list(history),
                   objective_values(record, settings.objectives), g, reused=True)


def _infeasible_record(space: SearchSpace, sample: Sample, g: Gate, trial: int,
                       settings: TrialSettings, extra: dict[str, Any]) -> dict[str, Any]:
    """The record of a sample the gate refused; an invalid one has no config to describe."""
    from cvt_nas.results import make_record

    return make_record(study=settings.study, trial=trial, backend=settings.backend,
                       model_cfg=g.model, train_cfg=g.train, result=None, status="infeasible",
                       reason=g.reason, extra=extra, cost=g.cost)
