"""Reproducible parallel search (``--deterministic``): the same trials for any number of workers.

A parallel Optuna search is not reproducible: what a sampler draws depends on which trials had
finished when it drew (Optuna issue 3056). Here a study is a list of *slots* 0 .. trials-1 cut
into *generations* of G slots (`generation_size`: NSGA-II's population, one slot for the random
sampler, else ``--population-size`` or `BATCH`), whatever the number of workers:

* Slot k belongs to generation g = k // G. Its parameters come from a fresh sampler seeded with
  (seed, g) that sees only the finished slots of generations < g, in slot order, and is asked
  the G slots of generation g one after the other (`Planner`). Any worker computes the same
  plan, so no worker has to hand parameters to another.
* A generation starts when every earlier one has finished (a barrier; the random sampler needs
  none). This wait is the wall-time cost (docs/search.md).
* The training seed is the space's ``train.seed`` (fixed, or a sampled parameter), so a slot's
  training depends on its parameters only: on CPU with the same ``--threads`` its accuracy is the
  same in every run.
* Claiming: a trial's Optuna number is its ticket. A new trial takes the next slot (the count of
  new trials numbered below it); a retry of a dead trial (`cvt_nas.search.study.retry_trial`)
  or a re-queued slot (`REQUEUED`) keeps its slot, so it gets the same parameters and the same
  result. A trial whose slot is beyond ``--trials`` or already held ends at once (`SlotTaken`).
* Recovery: a slot that was claimed and is neither finished, running nor queued (its trial died
  twice, or gave way) is queued again; a worker waiting at the barrier while an earlier slot is
  queued gives its own trial up, so the queued slot runs even when every worker is waiting.

Pruning, and the latency objective, depend on timing, so they are refused here (`check_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from cvt_nas.common.pool import STOP, raise_pending_stop
from cvt_nas.search import study as store

# `cvt_nas.search.optuna_backend`'s SearchRun and Objective; that module hands over to this one,
# so this one cannot import it (no import cycles, tests/test_layout.py)
SearchRun = Any
Objective = Any
BATCH = 4  # generation size of TPE and grid searches without --population-size
POLL_S = 0.25  # seconds between looks at the storage while waiting for a generation
REQUEUED = "deterministic:slot"  # system attr of a trial that re-queues a slot
STAMP = "deterministic"  # study user attr: how the study's slots were planned
# system attrs of a trial that are not its sampler's (not copied into a plan's history)
OWN_ATTRS = ("fixed_params", "failed_trial", "retry_history", REQUEUED)

# a sampler of the run's kind seeded from (the run's seed, a key): `optuna_backend.keyed_sampler`
SamplerFactory = Callable[[SearchRun, str], BaseSampler]

__all__ = ["BATCH", "Planner", "PlannedSampler", "SlotTaken", "Slots", "check_run",
           "check_study", "generation_size", "unfinished", "worker"]


class SlotTaken(Exception):
    """A trial that found its slot beyond the study's total, held by another trial, or gave it
    up (at the barrier) to a queued earlier slot; it ends at once without a record."""


def _seed(run: SearchRun) -> int:
    return 0 if run.seed is None else run.seed


def generation_size(run: SearchRun, make_sampler: SamplerFactory) -> int:
    """Slots per generation: NSGA-II's population, 1 for random (it reads no history), else
    ``--population-size`` or `BATCH`. Never the number of workers."""
    if run.sampler == "nsga2":
        return int(make_sampler(run, "size").population_size)  # type: ignore[attr-defined]
    if run.sampler == "random":
        return 1
    return run.population_size or BATCH


def uses_history(run: SearchRun) -> bool:
    """Does a generation's plan depend on earlier results (and so wait for them)?"""
    return run.sampler != "random"


def check_run(run: SearchRun) -> None:
    """Refuse what would make a deterministic search depend on timing.

    Raises:
        ValueError: a pruner (it compares a trial with whichever peers finished first) or the
            latency objective (measured, so different in every run).
    """
    if run.pruner != "none":
        raise ValueError(f"--deterministic with --pruner {run.pruner}: a pruner compares a trial "
                         "with whichever trials finished first; use --pruner none")
    if "latency" in run.settings.objectives:
        raise ValueError("--deterministic with the latency objective: latency is measured and "
                         "differs from run to run; drop latency from --objectives")


def check_study(study: optuna.Study, run: SearchRun, make_sampler: SamplerFactory) -> None:
    """Stamp a new deterministic study with its plan's settings; refuse to mix modes or plans.

    Raises:
        ValueError: resuming a deterministic study without ``--deterministic`` (or the other way
            round), or with another seed, sampler or generation size.
    """
    stamp = study.user_attrs.get(STAMP)
    name = run.settings.study
    if not run.deterministic:
        if stamp is not None:
            raise ValueError(f"study {name!r} was run with --deterministic; add --deterministic "
                             "(or search.deterministic: true) to resume it, or pick a new --study")
        return
    check_run(run)
    size = stamp["generation_size"] if stamp else generation_size(run, make_sampler)
    now = {"seed": _seed(run), "sampler": run.sampler, "generation_size": size}
    if stamp is None:
        if any(store.counts(t) for t in study.get_trials(deepcopy=False)):
            raise ValueError(f"study {name!r} holds trials of a search without --deterministic; "
                             "pick a new --study (or --out directory) for a deterministic one")
        study.set_user_attr(STAMP, now)
        return
    asked = {**now, "generation_size": (generation_size(run, make_sampler)
                                        if run.population_size else size)}
    flags = {"seed": "--seed", "sampler": "--sampler",
             "generation_size": "generations of (--population-size)"}
    changed = [f"{flags[k]} {stamp[k]} (now {asked[k]})" for k in stamp if stamp[k] != asked[k]]
    if changed:
        raise ValueError(f"study {name!r} was planned with {', '.join(changed)}; resume it with "
                         "the same settings, or pick a new --study")


def plan_size(study: optuna.Study) -> int:
    """The generation size the study was stamped with (`check_study`)."""
    return int(study.user_attrs[STAMP]["generation_size"])


@dataclass
class Slots:
    """Which trial holds which slot, read from the study in one pass."""

    trials: dict[int, FrozenTrial]  # by number
    slot: dict[int, int]  # trial number -> slot
    claimed: int  # slots handed out to new trials so far (the next new trial takes this one)
    by_slot: dict[int, list[FrozenTrial]] = field(default_factory=dict)

    @classmethod
    def read(cls, study: optuna.Study) -> Slots:
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        slot: dict[int, int] = {}
        claimed = 0
        by_slot: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            if "failed_trial" in t.system_attrs:  # a retry keeps the dead trial's slot
                k = slot.get(int(t.system_attrs["failed_trial"]), -1)
            elif REQUEUED in t.system_attrs:
                k = int(t.system_attrs[REQUEUED])
            else:
                k, claimed = claimed, claimed + 1
            slot[t.number] = k
            by_slot.setdefault(k, []).append(t)
        return cls({t.number: t for t in trials}, slot, claimed, by_slot)

    def result(self, k: int) -> FrozenTrial | None:
        """The trial that holds slot k's result (the first one finished with a record)."""
        return next((t for t in self.by_slot.get(k, ()) if t.state in store.FINISHED
                     and "record" in t.user_attrs), None)

    def covered(self, k: int) -> bool:
        """Finished, running or queued."""
        return self.result(k) is not None or any(
            t.state in (TrialState.RUNNING, TrialState.WAITING) and not t.user_attrs.get(
                "surplus") for t in self.by_slot.get(k, ()))

    def finished(self, upto: int) -> bool:
        """Have slots 0 .. upto-1 all finished?"""
        return all(self.result(k) is not None for k in range(upto))

    def held_elsewhere(self, k: int, number: int) -> bool:
        """Does another trial hold slot k: one with its result, or an earlier-numbered one that
        runs? (Of two trials that run one slot, the later-numbered gives way.)"""
        return self.result(k) is not None or any(
            t.number < number and t.state == TrialState.RUNNING
            and not t.user_attrs.get("surplus") for t in self.by_slot.get(k, ()))

    def queued_before(self, k: int) -> bool:
        """Is a slot below k waiting to run?"""
        return any(t.state == TrialState.WAITING and self.slot[t.number] < k
                   for t in self.trials.values())

    def missing(self, total: int) -> list[int]:
        """Claimed slots below ``total`` that nothing finishes (their trials died)."""
        return [k for k in range(min(self.claimed, total)) if not self.covered(k)]


def requeue(study: optuna.Study, slots: Slots, total: int) -> int:
    """Queue every missing slot again (`Slots.missing`); returns how many."""
    missing = slots.missing(total)
    for k in missing:
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING,
                                                  system_attrs={REQUEUED: k}))
    return len(missing)


def unfinished(study: optuna.Study, total: int) -> bool:
    """Does the study still need a slot run? (Fails dead workers' trials first.)"""
    store.fail_dead_trials(study)
    return not Slots.read(study).finished(total)


class PlannedSampler(BaseSampler):
    """The study's sampler in a worker: it returns the parameters `Planner` chose for the trial
    at hand (``params``), so what a trial draws never depends on the study's state."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name not in self.params:
            raise RuntimeError(f"trial {trial.number}: parameter {param_name!r} is not in its "
                               "plan (the space changed while the study ran?)")
        return self.params[param_name]


def _copy(t: FrozenTrial) -> FrozenTrial:
    """A finished trial as a plan's sampler sees it: parameters, values, constraints and the
    attributes its own sampler set, without the worker's bookkeeping."""
    return optuna.trial.create_trial(
        state=t.state, params=t.params, distributions=t.distributions,
        values=t.values if t.state == TrialState.COMPLETE else None,
        intermediate_values=t.intermediate_values,
        system_attrs={k: v for k, v in t.system_attrs.items() if k not in OWN_ATTRS})


class Planner:
    """The parameters of every slot of a generation, from the finished earlier generations.

    ``plan(slots, g)`` builds an in-memory study holding the results of slots 0 .. g*G-1 (in
    slot order), seeds a new sampler with (seed, g) and asks it G trials in turn. Each entry is
    (parameters, the system attributes the sampler set, e.g. NSGA-II's generation): the worker
    stores the latter on the real trial, so later plans see what this sampler saw.
    """

    def __init__(self, run: SearchRun, make_sampler: SamplerFactory, size: int) -> None:
        self.run, self.size, self.make_sampler = replace(run, population_size=size), size, \
            make_sampler
        self._plans: dict[int, list[tuple[dict[str, Any], dict[str, Any]]]] = {}

    def plan(self, slots: Slots, g: int, directions: Sequence[optuna.study.StudyDirection]
             ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        if g in self._plans:
            return self._plans[g]
        memory = optuna.create_study(directions=list(directions),
                                     sampler=self.make_sampler(self.run, f"generation:{g}"))
        if uses_history(self.run):
            for k in range(min(g * self.size, self.run.trials)):
                done = slots.result(k)
                assert done is not None, f"slot {k} has not finished"  # the barrier waits
                memory.add_trial(_copy(done))
        out = []
        for _ in range(self.size):
            trial = memory.ask()
            self.run.space.sample(trial)
            attrs = memory._storage.get_trial(trial._trial_id).system_attrs
            out.append((dict(trial.params), dict(attrs)))
        self._plans[g] = out
        return out


class _Step:
    """One trial of a deterministic worker: find its slot, wait for its generation, give it the
    planned parameters, and run the usual objective (`cvt_nas.search.optuna_backend.Objective`)."""

    def __init__(self, run: SearchRun, study: optuna.Study, objective: Objective,
                 make_sampler: SamplerFactory) -> None:
        self.run, self.study, self.objective = run, study, objective
        self.size = plan_size(study)
        self.planner = Planner(run, make_sampler, self.size)
        self.sampler = PlannedSampler()
        study.sampler = self.sampler
        objective.own_stream = True  # no seed streams: the plan decides

    def __call__(self, trial: optuna.Trial) -> Any:
        run, study, objective = self.run, self.study, self.objective
        objective.current = trial
        trial.set_user_attr("worker", objective.tag)
        slots = Slots.read(study)
        k = slots.slot[trial.number]
        trial.set_user_attr("slot", k)
        if k >= run.trials or slots.held_elsewhere(k, trial.number):
            trial.set_user_attr("surplus", True)
            objective.surplus = k >= run.trials
            raise SlotTaken(f"slot {k} is beyond --trials {run.trials} or held by another trial")
        g = k // self.size
        start = g * self.size if uses_history(run) else 0
        while not slots.finished(min(start, run.trials)):
            if slots.queued_before(k):
                raise SlotTaken(f"slot {k} gave way to an earlier slot waiting in the queue")
            time.sleep(POLL_S)
            raise_pending_stop()  # a stop a finalizer swallowed ends the wait as a signal would
            store.fail_dead_trials(study)
            slots = Slots.read(study)
            requeue(study, slots, min(start, run.trials))
        params, attrs = self.planner.plan(slots, g, study.directions)[k % self.size]
        for key, value in attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
        self.sampler.params = params
        # a duplicate is copied only from an earlier generation: finished, whatever the timing
        objective.reusable = lambda t: slots.slot.get(t.number, k) < start
        return objective(trial)


def _await_work(study: optuna.Study, run: SearchRun, size: int) -> bool:
    """Wait until this worker has something to run: a queued slot, or a new slot whose
    generation may start. False when every slot has finished or is held by a live trial."""
    while not STOP.is_set():
        store.fail_dead_trials(study)
        slots = Slots.read(study)
        if slots.finished(run.trials):
            return False
        if requeue(study, slots, run.trials) or any(
                t.state == TrialState.WAITING for t in slots.trials.values()):
            return True
        if slots.claimed >= run.trials:
            return False
        start = slots.claimed // size * size if uses_history(run) else 0
        if slots.finished(start):
            return True
        time.sleep(POLL_S)
    return False


def worker(run: SearchRun, study: optuna.Study, objective: Objective,
           make_sampler: SamplerFactory) -> tuple[Callable[[optuna.Trial], Any],
                                                  Callable[[], bool]]:
    """What the optuna backend's `run_worker` loop runs in deterministic mode: the objective of
    one trial (slot, barrier, plan, then ``objective``) and the wait for work before each one
    (False when the worker is done)."""
    step = _Step(run, study, objective, make_sampler)
    return step, lambda: _await_work(study, run, step.size)
