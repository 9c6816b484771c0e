"""Optuna backend: samplers and pruners around the shared trial function `cvt_nas.search.trial.evaluate`.

One study lives in one storage (default ``results/<study>/study.db``, SQLite). Any number of
processes, here (``--n-workers``) or on other machines (the same command with a shared
``--storage`` URL), run trials of the same study until it holds ``--trials`` trials in all.

Budget gate: every trial gets the constraint ``budget`` (0 when feasible, else how far over
budget it is, via ``Trial.set_constraint``) before any training; NSGA-II and TPE steer away from
trials with a positive value. Infeasible trials are recorded and complete at once with their
true costs and 0 % accuracy, so they are never trained.

Pruning: single-objective studies on ``val_top1`` can use Optuna's median, successive-halving
or Hyperband pruners on the per-epoch reports. Multi-objective studies cannot (Optuna refuses
``trial.report`` there); ``pareto-sha`` stops them by Pareto rank at rungs instead
(`cvt_nas.search.rungs`).

Reproducible parallel runs (``--deterministic``): `run_worker` takes each trial's step and the
wait before it from `cvt_nas.search.deterministic`.

Several trials per device (``--pack K``): each worker process runs K `run_worker` loops in
threads, trials admitted by one `cvt_nas.training.packing.DeviceGate` (`run_threads`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from cvt_nas.common.gpus import worker_env
from cvt_nas.common.pool import STOP, run_loops, run_workers
from cvt_nas.common.proc import is_local, trial_tag
from cvt_nas.common.storage import abandon_trials, is_journal, optimize_one
from cvt_nas.search import deterministic
from cvt_nas.search import study as store
from cvt_nas.search.progress import Progress
from cvt_nas.search.rungs import promotable, rung_epochs, to_point
from cvt_nas.search.trial import (
    Gate,
    LocalRunner,
    PackedRunner,
    Report,
    Runner,
    TrialSettings,
    evaluate,
    worker_tag,
)
from cvt_nas.space import SearchSpace, SpaceError

OPTUNA_PRUNERS = ("none", "median", "sha", "hyperband", "pareto-sha")


class TrialFailed(Exception):
    """A trial that ended failed / diverged / oom (recorded; the study goes on)."""


class SurplusTrial(Exception):
    """A trial started after the study reached its total (raced by another worker)."""


@dataclass(frozen=True)
class SearchRun:
    """Everything a worker needs to run its share of a study (picklable for worker processes)."""

    space: SearchSpace
    settings: TrialSettings
    storage_url: str = field(repr=False)  # may hold a password: never printed
    trials: int
    sampler: str = "nsga2"
    pruner: str = "none"
    seed: int | None = None
    population_size: int | None = None
    heartbeat: int | None = 10
    eta: int = 3
    reuse_duplicates: bool = True
    runner: Runner | None = field(default=None, repr=False)  # None: train here (LocalRunner)
    deterministic: bool = False  # the same trials for any number of workers (`deterministic`)
    pack: int = 1  # most trials at once per worker process, memory permitting (`run_threads`)
    device_share: int = 1  # worker processes on one device: each packs into its share of it

    @property
    def epochs(self) -> int:
        """Training epochs of a trial (the space fixes them, or they default to the recipe)."""
        train = self.space.random(0).train
        return train.epochs if train is not None else 1

    @property
    def device(self) -> str:
        """The device trials ask for (``--device``, else the space's ``train.device``)."""
        train = self.space.random(0).train
        return self.settings.device or (train.device if train is not None else "auto")


def make_sampler(run: SearchRun, seed: int | None) -> optuna.samplers.BaseSampler:
    """The sampler named by ``run.sampler`` (NSGA-II, TPE, random or grid)."""
    if run.sampler == "nsga2":
        size = run.population_size or min(50, max(4, run.trials // 3))
        return optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    if run.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                          n_startup_trials=min(10, max(2, run.trials // 3)))
    if run.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if run.sampler == "grid":
        return optuna.samplers.GridSampler(run.space.grid(), seed=seed)
    raise ValueError(f"--sampler {run.sampler!r}: choose one of nsga2, tpe, random, grid")


def stream_seed(seed: int, key: str) -> int:
    """A sampler seed of its own for one stream of draws: ``seed`` hashed with ``key``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big")


def keyed_sampler(run: SearchRun, key: str) -> optuna.samplers.BaseSampler:
    """A sampler of ``run``'s kind on a stream of its own: ``run.seed`` (0 if unset) with ``key``."""
    return make_sampler(run, stream_seed(0 if run.seed is None else run.seed, key))


def sampler_seed(study: optuna.Study, seed: int | None, index: int, tag: str
                 ) -> tuple[int | None, bool]:
    """The seed of a worker's sampler, and whether the stream is its own (its worker tag's).

    Two workers seeded alike draw the same trials (here or on another machine sharing the
    storage), so only the first worker of a single seeded run keeps ``seed`` (reproducible, as
    before); workers with ``index`` > 0 and any process that joins a study another live worker
    is on get ``stream_seed(seed, tag)``. A resumed study (trials, but no live worker) gets a
    stream keyed by its trial count: reproducible, and not a replay of the draws it already
    has.
    """
    if seed is None:
        return None, True
    if index > 0 or store.other_live_worker(study, tag):
        return stream_seed(seed, tag), True
    return resume_seed(study, seed), False


def resume_seed(study: optuna.Study, seed: int | None) -> int | None:
    """The seed of a study's only sampler: ``seed`` for a new study; for a resumed one a stream
    keyed by its trial count (reproducible, and not a replay of the draws it already has)."""
    done = len(study.get_trials(deepcopy=False))
    return stream_seed(seed, f"resume:{done}") if seed is not None and done else seed


def make_pruner(run: SearchRun) -> optuna.pruners.BasePruner:
    """Optuna's pruner for single-objective studies (``NopPruner`` otherwise)."""
    multi = len(run.settings.objectives) > 1
    if run.pruner not in OPTUNA_PRUNERS:
        hint = " (asha is the Ray backend's)" if run.pruner == "asha" else ""
        raise ValueError(f"--pruner {run.pruner!r}: the optuna backend offers "
                         f"{list(OPTUNA_PRUNERS)}{hint}")
    if run.pruner in ("median", "sha", "hyperband"):
        if multi:
            raise ValueError(f"--pruner {run.pruner}: Optuna cannot prune multi-objective "
                             "studies; use --pruner pareto-sha (or --backend ray --pruner asha)")
        if "val_top1" not in run.settings.objectives:
            raise ValueError(f"--pruner {run.pruner}: pruning needs the val_top1 objective "
                             "(it is the only value reported during training)")
    if run.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if run.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=run.eta)
    if run.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=run.epochs,
                                              reduction_factor=run.eta)
    return optuna.pruners.NopPruner()


def _reporter(run: SearchRun, study: optuna.Study, trial: optuna.Trial) -> Report | None:
    from cvt_nas.training.trainer import TrialPruned

    objectives = run.settings.objectives
    if run.pruner == "pareto-sha":
        rungs = set(rung_epochs(run.epochs, 1, run.eta))
        curve: list[float] = []
        trial.set_user_attr("curve", curve)

        def pareto_report(epoch: int, metrics: dict[str, Any]) -> None:
            value = metrics.get("val_top1")
            if value is None:
                return
            del curve[epoch - 1:]  # a trial run again (`--pack`'s retry alone) starts over
            curve.append(float(value))
            trial.set_user_attr("curve", curve)
            if epoch not in rungs:
                return
            costs = trial.user_attrs.get("costs", {})
            peers = []
            for t in study.get_trials(deepcopy=False):
                c, tc = t.user_attrs.get("curve") or [], t.user_attrs.get("costs") or {}
                if t.number != trial.number and len(c) >= epoch and all(
                        n in tc for n in objectives if n != "val_top1"):
                    peers.append(to_point(c[epoch - 1], tc, objectives))
            if not promotable(to_point(value, costs, objectives), peers, run.eta):
                raise TrialPruned(f"epoch {epoch}: Pareto rank outside the best 1/{run.eta} of "
                                  f"{len(peers) + 1} trials at this rung")
        return pareto_report
    if len(objectives) == 1 and "val_top1" in objectives:
        prune = run.pruner != "none"

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            if metrics.get("val_top1") is None:
                return
            trial.report(float(metrics["val_top1"]), epoch)
            if prune and trial.should_prune():
                raise TrialPruned(f"epoch {epoch}: pruned by the {run.pruner} pruner")
        return report
    return None


def _replay_curve(run: SearchRun, trial: optuna.Trial, history: list[dict[str, Any]]) -> None:
    """Give a reused trial its source's learning curve, so pruners see it as a peer."""
    points = [(int(h["epoch"]), float(h["val_top1"])) for h in history
              if h.get("val_top1") is not None and h.get("epoch") is not None]
    if run.pruner == "pareto-sha":
        trial.set_user_attr("curve", [v for _, v in points])
    elif list(run.settings.objectives) == ["val_top1"]:  # Optuna's pruners read trial.report
        for epoch, value in points:
            trial.report(value, epoch)


class Objective:
    """The Optuna objective: one trial of `cvt_nas.search.trial.evaluate`, its record stored with it.

    ``surplus`` turns true when a trial found the study already full (another worker raced it);
    ``current`` is the trial this worker runs (or ran last); ``own_stream`` tells whether its
    sampler's seed is its own (`sampler_seed`); ``reusable``, when set, picks the trials whose
    result a duplicate may copy.
    """

    def __init__(self, run: SearchRun, study: optuna.Study, own_stream: bool = True,
                 tag: str | None = None) -> None:
        self.run, self.study, self.surplus = run, study, False
        self.tag = tag or worker_tag()
        self.current: optuna.Trial | None = None
        self.own_stream = own_stream
        self.reusable: Callable[[optuna.trial.FrozenTrial], bool] | None = None

    def _check_stream(self, trial: optuna.Trial) -> None:
        """Before the first draw: a worker that started at the same moment as another one with
        the same seed (neither saw the other's trials yet) moves to a stream of its own. Of two
        such workers the later-numbered trial sees the earlier one."""
        if self.own_stream or self.run.seed is None:
            return
        self.own_stream = True
        if store.other_live_worker(self.study, self.tag, before=trial.number):
            self.study.sampler = make_sampler(self.run, stream_seed(self.run.seed, self.tag))

    def abandon(self) -> None:
        """Leave the study resumable after an interrupt: the trial this worker was running (its
        current one, or one stopped while Optuna prepared it: RUNNING with this worker's tag) is
        failed and its parameters are queued again, once (`cvt_nas.search.study.retry_trial`)."""
        abandon_trials(self.study, self.tag, [self.current] if self.current else [],
                       on_failed=store.retry_trial)

    def previous(self, params_sampled: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The record and history of the first complete trial drawn with these parameters."""
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            rec = t.user_attrs.get("record") or {}
            if self.reusable is not None and not self.reusable(t):
                continue
            if rec.get("status") == "complete" and rec.get("params_sampled") == params_sampled:
                return rec, t.user_attrs.get("history") or []
        return None

    def __call__(self, trial: optuna.Trial) -> Any:
        run, study = self.run, self.study
        self.current = trial
        trial.set_user_attr("worker", self.tag)  # first: a trial of a dead worker is told by it
        self._check_stream(trial)
        before = sum(1 for t in study.get_trials(deepcopy=False)
                     if t.number < trial.number and store.counts(t))
        if before >= run.trials:
            trial.set_user_attr("surplus", True)
            self.surplus = True
            raise SurplusTrial(f"the study already has {run.trials} trials")
        sample = run.space.sample(trial)

        def on_gate(g: Gate, known: dict[str, float]) -> None:
            trial.set_constraint("budget", g.violation)
            trial.set_user_attr("costs", known)

        outcome = evaluate(run.space, sample, trial.number, run.settings,
                           _reporter(run, study, trial), on_gate,
                           self.previous if run.reuse_duplicates else None, run.runner)
        trial.set_user_attr("record", outcome.record)
        trial.set_user_attr("history", outcome.history)
        if outcome.reused:
            _replay_curve(run, trial, outcome.history)
        if outcome.values is not None:
            return outcome.values[0] if len(outcome.values) == 1 else outcome.values
        if outcome.status == "pruned":
            raise optuna.TrialPruned(outcome.record.get("reason") or "pruned")
        raise TrialFailed(f"{outcome.status}: {outcome.record.get('reason')}")


def run_worker(run: SearchRun, index: int = 0, storage: BaseStorage | None = None,
               thread: int | None = None,
               started: Callable[[Objective], None] | None = None,
               stop: threading.Event | None = None) -> int:
    """Run trials of the study until it holds ``run.trials``; returns how many this one ran.

    ``storage``: an open storage to use instead of ``run.storage_url`` (e.g. Optuna's
    in-memory one, for simulated studies). A trained model's memory is collected after each
    trial; a runner that trains nothing (``run.runner``, e.g. a table) skips that.
    ``thread``: this loop's thread in a packed worker (`run_threads`), part of its worker tag;
    ``started`` gets the loop's `Objective` (to abandon its trial on a stop); ``stop``, when
    set, ends the loop after its trial (as `STOP` does, which only signals set).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage is None:
        storage = store.make_storage(run.storage_url, run.heartbeat)
    study = store.open_study(storage, run.settings.study, run.settings.objectives,
                             pruner=make_pruner(run))
    store.fail_dead_trials(study)  # a dead worker is not another live one
    objective = Objective(run, study, tag=worker_tag(thread=thread))
    if started is not None:
        started(objective)
    if run.deterministic:  # a plan decides what each trial draws, and when it may start
        step, more = deterministic.worker(run, study, objective, keyed_sampler)
    else:
        seed, objective.own_stream = sampler_seed(study, run.seed, index, objective.tag)
        study.sampler = make_sampler(run, seed)
        step, more = objective, (lambda: _unfinished(study, run))
    trains = run.runner is None or isinstance(run.runner, LocalRunner)
    ran, waited = 0, list[int]()
    with trial_tag(objective.tag):  # its trials carry it from their first commit
        try:
            while not STOP.is_set() and not (stop is not None and stop.is_set()):
                # dead trials (this machine: by pid; others: by heartbeat) are failed and their
                # parameters queued before each count, since a dead RUNNING trial still counts
                if not more():
                    if not (remote := _remote_running(study, run)):
                        break
                    if remote != waited:  # say so once per set of trials waited for
                        waited = remote
                        print(f"cvt-nas search: the study is full but trial(s) {remote} of other "
                              "machines still run; waiting, to retry any whose machine died",
                              file=sys.stderr, flush=True)
                    time.sleep(run.heartbeat or 1)
                    continue
                optimize_one(study, step, lambda: objective.current, say, stop,
                             gc_after_trial=trains,
                             catch=(TrialFailed, SurplusTrial, deterministic.SlotTaken))
                objective.current = None  # ended: a stop from now on has nothing to abandon
                ran += 1
                if objective.surplus:
                    break
        except KeyboardInterrupt:  # SIGINT/SIGTERM (`cvt_nas.common.pool`)
            objective.abandon()
            raise
    return ran


def say(text: str) -> None:
    """A line of the search on stderr."""
    print(f"cvt-nas search: {text}", file=sys.stderr, flush=True)


def _remote_running(study: optuna.Study, run: SearchRun) -> list[int]:
    """Numbers of the RUNNING trials of other machines' workers that heartbeats can tell dead
    (RDB storages with ``--heartbeat``, trials that have beaten): such a trial turns FAIL and is
    queued again, and a worker that ended at "the study is full" would leave it to nobody."""
    if not run.heartbeat or is_journal(run.storage_url):  # a journal has no heartbeats
        return []
    remote = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.RUNNING,))
              if (tag := t.user_attrs.get("worker")) and not is_local(tag)]
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna's cache wraps it
    if not remote or not hasattr(backend, "beating"):
        return []
    # only a trial that has beaten can turn stale (one whose worker died before its first
    # beat, or runs with --heartbeat 0, never would: waiting for it could last for ever)
    beating = backend.beating([t._trial_id for t in remote])
    return [t.number for t in remote if t._trial_id in beating]


def _unfinished(study: optuna.Study, run: SearchRun) -> bool:
    """Does the study still need trials? (Fails dead workers' trials first: they still count.)"""
    if run.deterministic:
        return deterministic.unfinished(study, run.trials)
    store.fail_dead_trials(study)
    if store.tally(study).counted >= run.trials:
        return False
    return not (run.sampler == "grid" and _grid_done(study, run))


def _grid_done(study: optuna.Study, run: SearchRun) -> bool:
    size = run.space.size() or 0
    seen = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)
            if store.counts(t)}
    return len(seen) >= size


def _worker_entry(run: SearchRun, index: int) -> None:
    if run.settings.threads:
        os.environ["OMP_NUM_THREADS"] = str(run.settings.threads)
    if run.pack > 1:
        run_threads(run, index)
    else:
        run_worker(run, index)


def packed_runner(run: SearchRun) -> PackedRunner:
    """The `PackedRunner` of a worker process: `cvt_nas.training.packing.device_gate` over its
    trials' device, shared with ``run.device_share`` workers, at most ``run.pack`` trials."""
    from cvt_nas.training.packing import device_gate

    train = run.space.random(0).train
    gate, calibration = device_gate(run.device, train.precision if train is not None else "auto",
                                    run.pack, run.device_share)
    return PackedRunner(gate, calibration)


def run_threads(run: SearchRun, index: int) -> int:
    """Worker ``index`` with ``run.pack`` trial loops in threads of this process, sharing one
    `packed_runner`; returns the trials they ran. A stop (``KeyboardInterrupt`` in this, the
    main thread) fails and requeues every loop's running trial, then propagates; a loop that
    raises stops the others after their trials (its own event: `STOP` stays for signals) and is
    raised here."""
    packed = replace(run, runner=packed_runner(run))
    loops: list[Objective] = []
    ran = [0] * run.pack

    def loop(j: int, stop: threading.Event) -> None:
        ran[j] = run_worker(packed, index * run.pack + j, thread=j, started=loops.append,
                            stop=stop)

    def abandon() -> None:
        for objective in loops:
            objective.abandon()

    run_loops(run.pack, loop, abandon)
    return sum(ran)


def run_search(run: SearchRun, n_workers: int, out_dir: str | Path, meta: dict[str, Any],
               progress: bool = True, gpus: Sequence[str] = ()) -> optuna.Study:
    """Run (or resume) a study with ``n_workers`` local processes and write its results.

    With ``gpus`` (`cvt_nas.common.gpus.select_gpus`) every worker is a process pinned to one of
    them, round-robin (`cvt_nas.common.gpus.worker_env`): ``cuda`` in worker ``i`` is GPU
    ``gpus[i % len(gpus)]``.

    Trials that a killed process left RUNNING on this machine are failed and their parameters
    retried once; on other machines the RDB heartbeat does the same after three missed beats.
    Workers, signals and dying workers: `cvt_nas.common.pool.run_workers`.
    """
    if run.sampler == "grid":
        size = run.space.size()
        if size is not None and run.trials > size:
            raise SpaceError(f"--trials {run.trials}: the grid has only {size} points")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_pruner(run)  # validate before starting anything
    make_sampler(run, run.seed)
    storage = store.make_storage(run.storage_url, run.heartbeat)
    study = store.open_study(storage, run.settings.study, run.settings.objectives,
                             space=run.space)
    deterministic.check_study(study, run, keyed_sampler)
    store.fail_dead_trials(study)
    objectives = run.settings.objectives
    with Progress(run.storage_url, run.settings.study, run.trials, objectives, out_dir, meta,
                  show=progress), store.results_on_exit(study, out_dir, objectives, meta):
        try:
            run_workers(_worker_entry, (run,), n_workers, label="cvt-nas search",
                        unfinished=lambda: _unfinished(study, run),
                        env=(lambda i: worker_env(gpus, i)) if gpus else None)
        finally:
            store.fail_dead_trials(study)  # workers killed after the stop grace
    return study


__all__ = ["OPTUNA_PRUNERS", "SearchRun", "SurplusTrial", "TrialFailed", "Objective",
           "keyed_sampler", "make_pruner", "make_sampler", "packed_runner", "resume_seed",
           "run_search", "run_threads", "run_worker", "sampler_seed", "stream_seed"]
