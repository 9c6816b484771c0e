"""Run an ablation experiment's rows x seeds as an Optuna grid study (resumable, parallel).

Each (row, seed) pair is one Optuna trial of a `GridSampler` study whose storage lives on disk,
so an interrupted run resumes where it stopped: pairs with a COMPLETE trial are never trained
again, and pairs whose trial failed or was killed (a stale heartbeat) are retried. Every trial
calls `cvt_nas.training.trainer.run_trial` and stores its `cvt_nas.results.make_record` row and history as
the user attrs ``record`` and ``history``, the same as the search backends.

Rows of different tables that train the same architecture with the same training config and
seed (e.g. the CvT-13-like baseline shared by Tables 5-8) are trained once: a trial first looks
in every study of the storage for a COMPLETE trial with the same ``run_key`` and copies its
record (marking ``reused_from``). Seeded CPU runs are reproducible, so this changes no number.
Runs trained packed (``--pack``: several at once in threads, `cvt_nas.training.packing`) are
not, so only packed runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from cvt_nas.ablation.experiment import Experiment, load_experiment
from cvt_nas.common import fmt
from cvt_nas.common.gpus import worker_env, workers_per_device
from cvt_nas.common.pool import STOP, run_loops, run_workers
from cvt_nas.common.proc import cpu_name, trial_tag, worker_tag
from cvt_nas.common.storage import (
    abandon_trials,
    fail_dead_trials,
    open_storage,
    optimize_one,
)
from cvt_nas.results.records import TRAIN_PREFIX

if TYPE_CHECKING:
    from cvt_nas.training.memory import Calibration
    from cvt_nas.training.packing import DeviceGate

__all__ = ["default_storage", "open_study", "run_experiment", "run_key", "study_name"]

Log = Callable[[str], None]

# A pair whose training failed (diverged, error) this many times is not tried again.
MAX_FAILURES = 2
HEARTBEAT = 10  # seconds between heartbeats of a running trial (stale after three missed)
WAIT_S = 2.0  # how often a worker with nothing to do checks the pairs others are training
# Fields of TrainConfig that change where or how fast a run goes, not its numbers.
_EXECUTION_FIELDS = ("threads", "num_workers", "device", "data_root", "download")


def study_name(exp: Experiment, scale: str) -> str:
    """The Optuna study of one experiment at one scale."""
    return f"{exp.name}-{scale}"


def default_storage(out_dir: str | Path) -> str:
    """SQLite file shared by the tables next to ``out_dir`` (``<out_dir>/../studies.db``)."""
    return f"sqlite:///{Path(out_dir).resolve().parent / 'studies.db'}"


def run_key(model_cfg: Any, train_cfg: Any) -> str:
    """Identity of a training run: the adapted architecture and the training config with its
    seed. Execution settings (threads, device, ...) and unset (None) fields are left out, so
    adding an optional TrainConfig field later does not change the key of old runs."""
    from cvt_nas.results.records import arch_json, flatten_train

    return _key(arch_json(model_cfg), flatten_train(train_cfg.to_dict()))


def _key(arch: str, train: dict[str, Any]) -> str:
    kept = {k: v for k, v in train.items()
            if v is not None and k.removeprefix(TRAIN_PREFIX) not in _EXECUTION_FIELDS}
    text = json.dumps({"arch": arch, "train": kept}, sort_keys=True, default=str)
    return "run-" + hashlib.sha1(text.encode()).hexdigest()[:16]


def record_key(record: dict[str, Any]) -> str | None:
    """`run_key` of a stored trial record (from its ``arch`` and ``train.*`` columns)."""
    if not record.get("arch"):
        return None
    return _key(record["arch"], {k: v for k, v in record.items() if k.startswith(TRAIN_PREFIX)})


def _grid(exp: Experiment, scale: str, seeds: int) -> dict[str, list[Any]]:
    return {"row": [r.row for r in exp.runnable(scale)], "seed": list(range(seeds))}


class _PairGrid(optuna.samplers.GridSampler):
    """The grid of (row, seed) pairs, also when a pair was asked for explicitly (a retry, which
    has no ``grid_id``): Optuna's GridSampler then fails in ``after_trial`` with a KeyError when
    one cell is left. Its ``after_trial`` only stops ``optimize`` on a full grid; ours runs one
    trial at a time."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Any) -> None:
        if "grid_id" in trial.system_attrs:
            super().after_trial(study, trial, state, values)


def open_study(exp: Experiment, scale: str, seeds: int, storage: str,
               heartbeat: int | None = HEARTBEAT) -> optuna.Study:
    """Create or load the grid study of an experiment at a scale (`open_storage`: journal
    files, SQLite, PostgreSQL; many workers may open a new one at the same moment)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=study_name(exp, scale), storage=open_storage(storage, heartbeat),
        direction="maximize",
        sampler=_PairGrid(_grid(exp, scale, seeds), seed=0),
        load_if_exists=True,
    )


def _pair(t: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    """A trial's (row, seed): its parameters, or before it has drawn them the ones it was
    enqueued with (so that a pair picked by two loops at once is told apart at once)."""
    params = t.params if "row" in t.params else t.system_attrs.get("fixed_params") or {}
    if "row" not in params or "seed" not in params:
        return None
    return str(params["row"]), int(params["seed"])


def pairs_in_state(study: optuna.Study, state: optuna.trial.TrialState) -> set[tuple[str, int]]:
    """(row, seed) pairs that have a trial in ``state`` (COMPLETE: done; RUNNING: in progress,
    stale ones having been failed first by heartbeat)."""
    trials = study.get_trials(deepcopy=False, states=(state,))
    return {pair for t in trials if (pair := _pair(t)) is not None}


def _reusable(storage: optuna.storages.BaseStorage, key: str,
              packed: bool = False) -> optuna.trial.FrozenTrial | None:
    """A COMPLETE trained trial of any study in ``storage`` with this run key; runs trained
    packed (their records have ``co_tenants``) only for a ``packed`` caller."""
    for summary in storage.get_all_studies():
        for t in storage.get_all_trials(summary._study_id, deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,)):
            record = t.user_attrs.get("record")
            if (record and "reused_from" not in t.user_attrs and record_key(record) == key
                    and (packed or "co_tenants" not in record)):
                return t
    return None


class _Objective:
    def __init__(self, exp: Experiment, scale: str, seeds: int, threads: int | None,
                 train_overrides: dict[str, Any], log: Log, gate: DeviceGate | None = None,
                 calibration: Calibration | None = None) -> None:
        self.exp, self.scale, self.threads = exp, scale, threads
        self.gate, self.calibration = gate, calibration  # --pack: trials admitted by memory
        self.loops = gate.budget.max_k if gate is not None else 1  # runs at once here
        self.lock = threading.Lock()
        self.claimed: set[tuple[str, int]] = set()  # pairs this process's loops have picked
        self.grid = _grid(exp, scale, seeds)
        self.overrides, self.log = train_overrides, log
        self.metric = exp.scales[scale].metric
        self.spent: list[float] = []  # wall seconds of the runs this worker trained

    def progress(self, study: optuna.Study, finished: tuple[str, int] | None) -> str:
        """``; 35/90 done, about 1 h 12 min left at this worker's pace``: the grid's complete
        pairs (with ``finished``, not yet told) of those not given up on (`MAX_FAILURES`), and
        the median of this worker's runs times the pairs left (an upper bound when other
        workers share the grid)."""
        grid = {(r, s) for r in self.grid["row"] for s in self.grid["seed"]}
        done = grid & (pairs_in_state(study, optuna.trial.TrialState.COMPLETE)
                       | ({finished} if finished else set()))
        failures = failed_pairs(study)
        total = len(grid) - sum(1 for p in grid - done if failures[p] >= MAX_FAILURES)
        left = total - len(done)
        per_run = statistics.median(self.spent) / self.loops if self.spent else 0.0
        eta = (f", about {fmt.duration(per_run * left)} left at this worker's pace"
               if self.spent and left else "")
        return f"; {len(done)}/{total} done{eta}"

    def __call__(self, trial: optuna.Trial) -> float:
        from cvt_nas.results import make_record, reused_record
        from cvt_nas.training.datasets import adapt_config
        from cvt_nas.training.trainer import run_trial

        row = str(trial.suggest_categorical("row", self.grid["row"]))
        seed = trial.suggest_int("seed", 0, max(self.grid["seed"]))
        study = trial.study
        tag = f"[{study.study_name}] trial {trial.number} row {row} seed {seed}"
        for t in study.get_trials(deepcopy=False):
            # Of two trials racing for one pair, the earlier-numbered one trains.
            if t.number != trial.number and _pair(t) == (row, seed) and (
                t.state == optuna.trial.TrialState.COMPLETE
                or (t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number)
            ):
                trial.set_user_attr("duplicate_of", t.number)
                self.log(f"{tag}: already {t.state.name.lower()} as trial {t.number}; skipped")
                raise optuna.TrialPruned(f"duplicate of trial {t.number}")
        r = self.exp.row(row)
        model_cfg = self.exp.model_config(r, self.scale)
        overrides = dict(self.overrides)
        if self.threads:
            overrides["threads"] = self.threads
        train_cfg = self.exp.train_config(r, self.scale, seed, **overrides)
        cfg = adapt_config(model_cfg, train_cfg)
        key = run_key(cfg, train_cfg)
        extra = {"experiment": self.exp.name, "scale": self.scale, "row": row,
                 "label": r.label, "run_key": key}
        trial.set_user_attr("run_key", key)
        prior = _reusable(study._storage, key, packed=self.gate is not None)
        if prior is not None:
            record = reused_record(prior.user_attrs["record"], study=study.study_name,
                                   trial=trial.number, **extra)
            source = record["reused_from"]
            trial.set_user_attr("reused_from", source)
            trial.set_user_attr("record", record)
            trial.set_user_attr("history", prior.user_attrs.get("history", []))
            self.log(f"{tag}: same run as {source}; reused {self.metric} "
                     f"{record.get(self.metric)}" + self.progress(study, (row, seed)))
            return _value(record.get(self.metric))
        self.log(f"{tag}: training {r.label!r} ({cfg.arch_id()})")

        reported: set[int] = set()

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            # once per epoch: a run retried alone after an out-of-memory error reports again
            # (its record and history are the retry's)
            if metrics.get("val_top1") is not None and epoch not in reported:
                reported.add(epoch)
                trial.report(float(metrics["val_top1"]), epoch)

        if self.gate is None:
            result = run_trial(model_cfg, train_cfg, report=report)
        else:
            from cvt_nas.training.packing import packed_columns, run_gated

            packed = run_gated(self.gate, model_cfg, train_cfg, self.calibration,
                               lambda: run_trial(model_cfg, train_cfg, report=report))
            assert packed.result is not None
            result = packed.result
            extra.update(packed_columns(packed))
        record = make_record(study=study.study_name, trial=trial.number, backend="ablate",
                             model_cfg=cfg, train_cfg=train_cfg, result=result, extra=extra)
        trial.set_user_attr("record", record)
        trial.set_user_attr("history", result.history)
        twin = next((t.number for t in study.get_trials(deepcopy=False, states=(
            optuna.trial.TrialState.COMPLETE,)) if _pair(t) == (row, seed)), None)
        if twin is not None:  # another worker finished this pair meanwhile: its result stands
            trial.set_user_attr("duplicate_of", twin)
        # a shared CPU shows here (not for packed runs: the share is their process's, all of
        # its threads together)
        share = result.cpu_share if result.device == "cpu" and self.gate is None else None
        busy = f", CPU {share:.0%} of {result.threads} threads" if share is not None else ""
        if result.status == "complete":
            self.spent.append(result.wall_time_s)
        self.log(f"{tag}: {result.status} val_top1 {result.val_top1} test_top1 "
                 f"{result.test_top1} in {result.wall_time_s:.0f}s "
                 f"({result.images_per_s or 0:.0f} img/s{busy})" +
                 (f" error: {result.error}" if result.error else "") +
                 self.progress(study, (row, seed) if result.status == "complete" else None))
        if result.status != "complete":
            return float("nan")  # Optuna marks the trial FAIL; the next run retries the pair
        return _value(record.get(self.metric))


def _value(v: Any) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _print(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def failed_pairs(study: optuna.Study) -> Counter[tuple[str, int]]:
    """How often each pair's training ended badly (FAIL trials that hold a record of a run that
    did not complete; a killed worker's trial holds none)."""
    out: Counter[tuple[str, int]] = Counter()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        pair = _pair(t)
        record = t.user_attrs.get("record")
        # a complete record on a FAIL trial: failed under its live worker, not a failed run
        if pair is not None and record is not None and record.get("status") != "complete":
            out[pair] += 1
    return out


def _missing(study: optuna.Study, pairs: list[tuple[str, int]]
             ) -> tuple[list[tuple[str, int]], dict[tuple[str, int], optuna.trial.FrozenTrial]]:
    """The pairs still to train, and the pairs some worker is training now (with its trial).

    Trials of dead workers are failed first (this machine: by pid; others: by a stale
    heartbeat), so their pairs are trained again; a pair that failed `MAX_FAILURES` times is not.
    """
    fail_dead_trials(study)
    done = pairs_in_state(study, optuna.trial.TrialState.COMPLETE)
    busy = {pair: t for t in study.get_trials(deepcopy=False,
                                              states=(optuna.trial.TrialState.RUNNING,))
            if (pair := _pair(t)) is not None and pair not in done}
    failed = failed_pairs(study)
    todo = [p for p in pairs if p not in done and p not in busy and failed[p] < MAX_FAILURES]
    return todo, busy


def _worker(path: str, scale: str, seeds: int, storage: str, threads: int | None,
            train_overrides: dict[str, Any], heartbeat: int | None = HEARTBEAT,
            pack: int = 1, device_share: int = 1, worker: int = 0) -> None:
    exp = load_experiment(path)
    study = open_study(exp, scale, seeds, storage, heartbeat)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our log says how each trial ended
    gate, calibration = None, None
    if pack > 1:
        from cvt_nas.training.packing import device_gate

        first = exp.train_config(exp.runnable(scale)[0], scale, 0, **train_overrides)
        gate, calibration = device_gate(first.device, first.precision, pack, device_share)
    objective = _Objective(exp, scale, seeds, threads, train_overrides, _print, gate, calibration)
    pairs = [(r, s) for r in objective.grid["row"] for s in objective.grid["seed"]]
    if pack <= 1:
        running: list[optuna.Trial] = []
        try:
            _loop(study, objective, pairs, random.Random(worker), worker_tag(), running)
        except KeyboardInterrupt:  # SIGINT/SIGTERM (`cvt_nas.common.pool`): leave it resumable
            abandon_trials(study, worker_tag(), running)  # the pair runs again
            raise
        return
    currents: list[list[optuna.Trial]] = [[] for _ in range(pack)]

    def loop(j: int, stop: threading.Event) -> None:
        _loop(study, objective, pairs, random.Random(worker * pack + j), worker_tag(thread=j),
              currents[j], stop)

    def abandon() -> None:
        for j, current in enumerate(currents):
            abandon_trials(study, worker_tag(thread=j), current)

    run_loops(pack, loop, abandon)


def _loop(study: optuna.Study, objective: _Objective, pairs: list[tuple[str, int]],
          rng: random.Random, tag: str, current: list[optuna.Trial],
          stop: threading.Event | None = None) -> None:
    """Train missing pairs until none is left (``current`` holds the running trial); the trials
    carry ``tag`` from their first commit (`cvt_nas.common.proc.trial_tag`)."""
    with trial_tag(tag):
        _train_missing(study, objective, pairs, rng, tag, current, stop)


def _train_missing(study: optuna.Study, objective: _Objective, pairs: list[tuple[str, int]],
                   rng: random.Random, tag: str, current: list[optuna.Trial],
                   stop: threading.Event | None) -> None:
    cpu = cpu_name()

    def tagged(trial: optuna.Trial) -> float:
        current[:] = [trial]
        trial.set_user_attr("worker", tag)  # a trial of a dead worker is told by it
        trial.set_user_attr("cpu", cpu)  # what its times were measured on (a table's manifest)
        return objective(trial)

    waiting: set[int] = set()
    while not STOP.is_set() and not (stop is not None and stop.is_set()):
        todo, busy = _missing(study, pairs)
        if not todo:
            if not busy:
                return
            # Another worker (maybe on another machine, maybe dead: then its heartbeat goes
            # stale) trains the last pairs; wait, so that no table is written without them.
            if {t.number for t in busy.values()} != waiting:
                waiting = {t.number for t in busy.values()}
                _print(f"[{study.study_name}] waiting for " + ", ".join(
                    f"trial {t.number} (row {r} seed {s}, worker "
                    f"{t.user_attrs.get('worker', '?')})" for (r, s), t in busy.items()))
            time.sleep(WAIT_S)
            continue
        picked = None
        if len(study.get_trials(deepcopy=False)) >= len(pairs):
            # Past the grid's first sweep (a failed or killed trial, a grid that grew with
            # --seeds, a worker that lost a race): ask for a missing pair explicitly, one that
            # no other loop of this process has picked.
            with objective.lock:
                free = [p for p in todo if p not in objective.claimed]
                if free:
                    picked = rng.choice(free)
                    objective.claimed.add(picked)
            if picked is None:  # the siblings have the rest
                time.sleep(WAIT_S)
                continue
            study.enqueue_trial({"row": picked[0], "seed": picked[1]})
        # Otherwise the GridSampler hands out the next unvisited (row, seed) cell.
        try:
            optimize_one(study, tagged, lambda: current[0] if current else None,
                         lambda text: _print(f"[{study.study_name}] {text}"), stop,
                         gc_after_trial=objective.gate is not None)
        finally:
            if picked is not None:
                with objective.lock:
                    objective.claimed.discard(picked)


def run_experiment(
    exp: Experiment,
    scale: str,
    seeds: int,
    storage: str,
    *,
    n_workers: int = 1,
    threads: int | None = None,
    train_overrides: dict[str, Any] | None = None,
    heartbeat: int | None = HEARTBEAT,
    gpus: Sequence[str] = (),
    pack: int = 1,
) -> optuna.Study:
    """Train every missing (row, seed) pair of ``exp`` at ``scale``; return the study.

    Workers, signals and dying workers: `cvt_nas.common.pool.run_workers`. A pair whose worker
    died is trained again; a pair that another (live, or not yet stale) worker trains is waited
    for. Pairs whose training failed `MAX_FAILURES` times are named on stderr.

    Args:
        exp: the experiment (its ``path`` is re-read by worker processes).
        scale: ``reduced`` or ``paper``.
        seeds: seeds 0 .. seeds-1 per row.
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql+psycopg2://...``) or a
            journal file path (``.journal``, ``.log``, ``.jsonl``).
        n_workers: processes that share the study (each trains one pair at a time, or up
            to ``pack``).
        threads: torch threads per worker (None keeps the training config's).
        train_overrides: TrainConfig overrides for every run (e.g. a smaller ``train_subset``).
        heartbeat: seconds between RDB heartbeats of a running trial (None: off); another
            machine's dead trial is failed after three missed beats.
        gpus: GPUs the workers spread over (`cvt_nas.common.gpus.select_gpus`), worker ``i``
            pinned to ``gpus[i % len(gpus)]``; empty: workers see what this process sees.
        pack: trials at once per worker, in threads, as many as fit in the worker's share of
            its device's memory (`cvt_nas.training.packing.device_gate`); a trial that ran out
            of memory beside others runs again alone. Packed runs time each other: not for
            tables whose times matter (`cvt-nas bench build`).
    """
    overrides = dict(train_overrides or {})
    study = open_study(exp, scale, seeds, storage, heartbeat)  # create once, before workers race
    grid = _grid(exp, scale, seeds)
    pairs = [(r, s) for r in grid["row"] for s in grid["seed"]]

    def unfinished() -> bool:
        todo, busy = _missing(study, pairs)
        return bool(todo or busy)

    run_workers(_worker, (exp.path, scale, seeds, storage, threads, overrides, heartbeat, pack,
                          workers_per_device(n_workers, gpus)),
                n_workers, unfinished=unfinished, label="cvt-nas ablate",
                env=(lambda i: worker_env(gpus, i)) if gpus else None)
    done = pairs_in_state(study, optuna.trial.TrialState.COMPLETE)
    given_up = [p for p in pairs if p not in done]
    if given_up:
        print(f"warning: {len(given_up)} (row, seed) pair(s) have no result after "
              f"{MAX_FAILURES} failed runs each: "
              + ", ".join(f"{r}/{s}" for r, s in given_up), file=sys.stderr)
    return study
