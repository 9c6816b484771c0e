"""Simulated search: ``cvt-nas search SPACE.yaml --backend table:DIR`` answers trials from a table.

The Optuna backend runs as it always does (samplers, pruners, study identity, records, results
directory); only two parts change:

* the space, a `TableSpace`: the sampler still draws the space's own parameters (so NSGA-II and
  TPE see its real structure), and a valid, feasible draw is mapped to the nearest architecture
  of the table with a complete run (`cvt_nas.bench.Bench.nearest`: Hamming distance over the
  parameters, ties to the smallest ``arch_id``). ``params_sampled`` keeps the draw, the
  architecture columns and ``arch_id`` are the table's, ``table_distance`` says how far apart.
  Invalid or over-budget draws are refused by the gate at no cost, as in a real search. The
  space's training parameters (e.g. ``train.lr``) are not drawn: the table pinned them.
* the runner, a `TableRunner`: the per-epoch rows of one recorded run are replayed through the
  trial's ``report`` callback, so every pruner (median, sha, hyperband, pareto-sha) sees them
  as it would see training; a pruned trial stops at its epoch.

Which run answers: an architecture with complete runs for seeds ``s_0 < ... < s_{n-1}`` is
answered, in a search seeded ``S`` (``--seed``, else 0), by ``s_i`` with
``i = stream_seed(S, arch_id) mod n``: within one search an architecture always gives the same
numbers, and searches with other seeds see other runs.

Simulated time. A trial costs the recorded train + eval seconds of the epochs it ran (a pruned
trial only those; a refused or reused one nothing); its record holds ``wall_time_s`` (that
cost), ``sim_time_s`` (the clock when it ended) and ``finished_at`` = 1970-01-01 UTC +
``sim_time_s``, so the hypervolume-against-time plots of `cvt-nas report` / `compare` read
simulated time. A resumed study continues its clock.

With one worker (the default) trials run back to back. With ``workers`` > 1 (``--n-workers``)
the search runs as that many asynchronous workers would, in simulated time, as a discrete-event
simulation (`SimClock`): every worker is a thread with its own clock, and only the worker whose
clock is earliest runs (ties: the lower index); a trial's epoch ends, its report to the pruner,
its tell and the next ask all happen in simulated-time order. So the sampler of a worker that
asks at time t sees exactly the trials finished by t, and pruners see the epochs reported by
then. Runs are reproducible: worker ``i`` > 0 samples from ``stream_seed(seed, "sim:i")``,
worker 0 from ``seed``, as a one-worker search does; a resumed study's workers take streams keyed
by its trial count (`sim_seed`), so they do not replay the study's first draws. A trial's
``worker`` column names its simulated worker, ``sim:i``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage

from cvt_nas.bench import Bench, load
from cvt_nas.common.storage import optimize_one
from cvt_nas.search import study as store
from cvt_nas.search.optuna_backend import (
    Objective,
    SearchRun,
    SurplusTrial,
    TrialFailed,
    make_pruner,
    make_sampler,
    run_search,
    run_worker,
    say,
    stream_seed,
)
from cvt_nas.search.trial import Gate, Report, TrialSettings
from cvt_nas.space import Sample, SearchSpace, Suggest

SIM_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # finished_at of a simulated trial: this + clock


@dataclass(frozen=True)
class TableSpace(SearchSpace):
    """A search space restricted to the architectures of a table (see the module docstring)."""

    bench: Bench | None = field(default=None, compare=False, repr=False)

    def sample(self, suggest: Suggest) -> Sample:
        assert self.bench is not None
        drawn = super().sample(suggest)
        train = self.bench.train_config()
        if drawn.model is None or self.violations(drawn):  # the gate refuses it, at no cost
            return Sample(drawn.params, drawn.model, train, drawn.error)
        arch_id, _ = self.bench.nearest(drawn.params, among=self._feasible.__contains__)
        return Sample(drawn.params, self.bench.config(arch_id), train)

    @cached_property
    def _feasible(self) -> frozenset[str]:
        """The table's architectures that meet this search's constraints (a search with tighter
        ones than the table's build maps its draws onto these only)."""
        assert self.bench is not None
        return frozenset(a for a in self.bench.archs["arch_id"]
                         if not self.violations(self.bench.config(a)))


def table_space(space: SearchSpace, bench: Bench) -> TableSpace:
    """``space`` restricted to ``bench``'s architectures, its training pinned to the table's.

    Raises:
        ValueError: the space's ``base`` or ``model`` differs from the one the table was built
            from, or a stored config does not give its ``arch_id``.
    """
    built = bench.space()
    if space.base != built.base or space.model != built.model:
        what = "base" if space.base != built.base else "model"
        raise ValueError(f"{space.source}: its {what} section differs from the space the table "
                         f"{bench.path} was built from ({bench.manifest.get('space_file')}); "
                         "search a table with the space file it was built from")
    ids = bench.archs["arch_id"].tolist()
    for arch_id in ids:
        if bench.config(arch_id).arch_id() != arch_id:
            raise ValueError(f"{bench.path / 'archs.parquet'}: arch_id {arch_id!r} does not "
                             "match its 'arch' column; rebuild the table")
    values = {f.name: getattr(space, f.name) for f in fields(SearchSpace)}
    values["train"] = ()  # pinned by the table: nothing to draw
    return TableSpace(**values, bench=bench)


class SimClock:
    """Simulated time of ``workers`` workers run as threads, one at a time, earliest first.

    A worker takes its turn (`turn`), works, and gives the turn back whenever its clock moves
    (`advance`): the turn then goes to the worker with the earliest clock (ties: the lower
    index), so everything that happens, happens in simulated-time order. A worker that ends
    `retire`s; the others go on.
    """

    def __init__(self, workers: int, start: float = 0.0) -> None:
        self.now = [float(start)] * workers
        self.holder: int | None = None  # the worker whose turn it is
        self._active = set(range(workers))
        self._cond = threading.Condition()

    def _next(self) -> int | None:
        return min(self._active, key=lambda i: (self.now[i], i)) if self._active else None

    def _wait(self, i: int) -> None:
        self._cond.wait_for(lambda: self.holder is None and self._next() == i)
        self.holder = i

    def turn(self, i: int) -> None:
        """Block until it is worker ``i``'s turn."""
        with self._cond:
            self._wait(i)

    def advance(self, seconds: float) -> None:
        """Move the current worker's clock on by ``seconds`` and wait for its next turn."""
        with self._cond:
            i = self.holder
            assert i is not None, "advance() outside a worker's turn"
            self.now[i] += max(0.0, float(seconds))
            self.holder = None
            self._cond.notify_all()
            self._wait(i)

    def retire(self, i: int) -> None:
        """Worker ``i`` is done: it takes no more turns."""
        with self._cond:
            self._active.discard(i)
            if self.holder == i:
                self.holder = None
            self._cond.notify_all()


@dataclass
class TableRunner:
    """Answers feasible samples from a table's recorded runs; keeps the simulated clock."""

    bench: Bench
    seed: int = 0  # the search's seed: which recorded run answers an architecture
    clock: float = 0.0  # simulated seconds when the last trial ended
    sim: SimClock | None = None  # several simulated workers: their clocks (`run_simulated`)

    def answering_seed(self, arch_id: str) -> int:
        """The recorded run (seed) that answers ``arch_id`` in this search."""
        seeds = self.bench.seeds(arch_id)
        if not seeds:
            raise ValueError(f"{self.bench.path}: arch_id {arch_id!r} has no complete run")
        return seeds[stream_seed(self.seed, arch_id) % len(seeds)]

    def latency(self, g: Gate, settings: TrialSettings) -> float:
        assert g.model is not None
        value = self.bench.query(g.model.arch_id()).latency_ms
        if value is None:
            raise ValueError(f"{self.bench.path / 'archs.parquet'}: no latency_ms for "
                             f"{g.model.arch_id()}; drop the latency objective")
        return value

    def run(self, sample: Sample, g: Gate, report: Report | None) -> Any:
        from cvt_nas.training.trainer import TrialPruned, TrialResult

        assert g.model is not None
        arch_id = g.model.arch_id()
        seed = self.answering_seed(arch_id)
        rows = self.bench.curve(arch_id, seed)
        costs = self.bench.query(arch_id, seed=seed)
        first = rows.iloc[0]
        result = TrialResult(
            status="complete", params=costs.params, macs=costs.macs, val_top1=None,
            val_top5=None, test_top1=None, test_top5=None, train_loss=None, epochs=0,
            wall_time_s=0.0, images_per_s=None, seed=seed, device=str(first["device"]),
            threads=int(first["threads"]))
        spent = 0.0  # simulated seconds of this trial so far
        try:
            for r in rows.itertuples(index=False):
                if self.sim is not None:  # the epoch ends later than other workers' events
                    self.sim.advance(float(r.time_s) - spent)
                    spent = float(r.time_s)
                metrics = {"epoch": int(r.epoch), "train_loss": _f(r.train_loss),
                           "val_top1": _f(r.val_top1), "val_top5": _f(r.val_top5),
                           "time_s": _f(r.train_time_s), "eval_s": _f(r.eval_time_s)}
                result.history.append(metrics)
                result.epochs, result.wall_time_s = int(r.epoch), float(r.time_s)
                result.train_loss, result.val_top1, result.val_top5 = (
                    metrics["train_loss"], metrics["val_top1"], metrics["val_top5"])
                if report is not None:
                    report(int(r.epoch), dict(metrics))
        except TrialPruned:
            result.status = "pruned"
            return result
        result.test_top1, result.test_top5 = costs.test_top1, costs.test_top5
        return result

    def finish(self, record: dict[str, Any], result: Any | None) -> None:
        """Advance the clock by the trial's cost; stamp ``sim_time_s`` and ``finished_at`` (and,
        with several simulated workers, ``worker``: ``sim:i``)."""
        if self.sim is not None:  # its worker's clock moved epoch by epoch in `run`
            assert self.sim.holder is not None
            now = self.sim.now[self.sim.holder]
            self.clock = max(self.clock, now)
            record["worker"] = f"sim:{self.sim.holder}"
        else:
            now = self.clock = self.clock + float(record.get("wall_time_s") or 0.0)
        record["sim_time_s"] = now
        record["finished_at"] = (SIM_EPOCH + timedelta(seconds=now)).isoformat(
            timespec="milliseconds")
        if result is not None:
            drawn = json.loads(record.get("params_sampled") or "{}")
            record["table_distance"] = self.bench.distance(drawn, record["arch_id"])


def _f(v: Any) -> float | None:
    return None if v is None or v != v else float(v)  # NaN -> None


def prepare(space: SearchSpace, table: str | Path, objectives: Mapping[str, str],
            seed: int | None) -> tuple[TableSpace, TableRunner]:
    """Load the table and check it can answer this search: its restricted space and runner.

    Raises:
        FileNotFoundError, ValueError: no table there, a broken one, another space, or an
            objective the table cannot answer (one line each).
    """
    bench = load(table)
    restricted = table_space(space, bench)
    if "latency" in objectives and bench.archs["latency_ms"].isna().any():
        n = int(bench.archs["latency_ms"].isna().sum())
        raise ValueError(f"--objectives latency: {bench.path / 'archs.parquet'} has no "
                         f"latency_ms for {n} architectures yet; drop latency or measure it")
    unknown = [o for o in objectives if o not in ("val_top1", "macs", "params", "latency")]
    if unknown:
        raise ValueError(f"--objectives {unknown}: a table answers val_top1, macs, params and "
                         "latency")
    if not restricted._feasible & set(bench.answerable()):
        raise ValueError(f"{space.source}: its constraints exclude every sampled architecture of "
                         f"{bench.path} with a complete run; loosen them (or search the table with "
                         "the space it was built from)")
    return restricted, TableRunner(bench, seed or 0)


def sim_seed(seed: int | None, index: int, done: int = 0) -> int | None:
    """The sampler seed of simulated worker ``index`` on a study that held ``done`` trials when
    the run started: worker 0 of a new study takes ``seed`` (as a one-worker search), the others
    and any resumed run a stream of their own (a resumed run does not replay its first draws)."""
    if seed is None or (index == 0 and not done):
        return seed
    return stream_seed(seed, f"sim:{index}:resume:{done}" if done else f"sim:{index}")


def run_simulated(run: SearchRun, workers: int, storage: BaseStorage,
                  stop: Callable[[], bool] = lambda: False) -> int:
    """Run ``workers`` simulated workers on ``storage`` until the study holds ``run.trials``.

    One worker is `run_worker`, unchanged. More are threads of this process that take turns in
    simulated-time order (`SimClock`, see the module docstring); ``run.runner`` (a
    `TableRunner`) gets the clock for the run and loses it after. Returns the trials run.

    Raises:
        Whatever a worker raised (the others stop at their next turn).
    """
    runner = run.runner
    assert isinstance(runner, TableRunner)
    if workers <= 1:
        return run_worker(run, 0, storage)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    done = len(optuna.load_study(study_name=run.settings.study, storage=storage).trials) \
        if run.settings.study in {st.study_name for st in storage.get_all_studies()} else 0
    sim = runner.sim = SimClock(workers, runner.clock)
    errors: list[BaseException] = []
    ran = [0] * workers

    def worker(i: int) -> None:
        try:
            sim.turn(i)
            study = store.open_study(storage, run.settings.study, run.settings.objectives,
                                     pruner=make_pruner(run))
            study.sampler = make_sampler(run, sim_seed(run.seed, i, done))
            objective = Objective(run, study)
            while not errors and not stop() and store.tally(study).counted < run.trials:
                optimize_one(study, objective, lambda: objective.current, say,
                             gc_after_trial=False, catch=(TrialFailed, SurplusTrial))
                objective.current = None
                ran[i] += 1
                if objective.surplus:
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            sim.retire(i)

    threads = [threading.Thread(target=worker, args=(i,), name=f"sim-worker-{i}", daemon=True)
               for i in range(workers)]
    started = 0
    try:
        for t in threads:
            t.start()
            started += 1
        for t in threads:
            t.join()
    finally:  # also after an interrupt: the others end their trial (milliseconds) and stop
        for i in range(started, workers):
            sim.retire(i)
        for t in threads[:started]:
            t.join()
        runner.sim = None
        runner.clock = max(sim.now)
    if errors:
        raise errors[0]
    return sum(ran)


def run_table_search(run: SearchRun, out_dir: str | Path, meta: dict[str, Any],
                     progress: bool = True, workers: int = 1) -> None:
    """Run (or resume) a simulated study in this process and write its results directory.

    ``run.runner`` is the `TableRunner` of `prepare`; its clock resumes from the study's
    records. ``workers``: simulated asynchronous workers (`run_simulated`). The study's total
    simulated time goes into study.yaml (``simulated``).
    """
    runner = run.runner
    assert isinstance(runner, TableRunner)
    storage = store.make_storage(run.storage_url, run.heartbeat)
    study = store.open_study(storage, run.settings.study, run.settings.objectives,
                             space=run.space)
    records, _ = store.collect(study)
    runner.clock = max((float(r.get("sim_time_s") or 0.0) for r in records), default=0.0)
    if workers <= 1:
        study = run_search(run, 1, out_dir, meta, progress=progress)
    else:
        from cvt_nas.common.pool import STOP, stop_on_signals
        from cvt_nas.search.progress import Progress

        make_sampler(run, run.seed)  # validate before starting anything
        store.fail_dead_trials(study, only_local=False)  # an interrupted run's trials
        with Progress(run.storage_url, run.settings.study, run.trials, run.settings.objectives,
                      out_dir, meta, show=progress), \
                store.results_on_exit(study, out_dir, run.settings.objectives, meta):
            try:
                with stop_on_signals():
                    run_simulated(run, workers, storage, stop=STOP.is_set)
            finally:  # interrupted: fail what ran, so that re-running resumes
                store.fail_dead_trials(study, only_local=False)
    simulated = {"time_s": runner.clock, "workers": workers, "table": str(runner.bench.path),
                 "table_archs": len(runner.bench.archs),
                 "table_runs": len(runner.bench.final())}
    store.write_results(study, out_dir, run.settings.objectives, {**meta, "simulated": simulated})


def simulate(run: SearchRun, workers: int = 1) -> list[dict[str, Any]]:
    """Run one simulated study in memory (no files) and return its records by trial number.

    For studies of search algorithms: ``run.runner`` is a fresh `TableRunner` (clock 0);
    ``workers``: simulated asynchronous workers (`run_simulated`).
    """
    import optuna

    storage = optuna.storages.InMemoryStorage()
    run_simulated(run, workers, storage)
    study = store.open_study(storage, run.settings.study, run.settings.objectives)
    records, _ = store.collect(study)
    return sorted(records, key=lambda r: int(r["trial"]))


__all__ = ["SIM_EPOCH", "SimClock", "TableRunner", "TableSpace", "prepare", "run_simulated",
           "run_table_search", "sim_seed", "simulate", "table_space"]
