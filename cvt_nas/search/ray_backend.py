"""Ray Tune backend: a `Tuner` whose search algorithm is `OptunaSearch` over the same space.

The driver (this process) samples with an Optuna sampler through OptunaSearch's define-by-run
interface, gates each sample on the budget there (``Trial.set_constraint``, so NSGA-II / TPE
steer away) and keeps the study in the same Optuna storage as the Optuna backend: the records,
resume and the results tables are the same. Ray runs the trials, each calling
`cvt_nas.search.trial.evaluate`, on a local Ray started on 127.0.0.1 or on a cluster (``--address``).

Secrets: Ray pickles the trainable's parameters, the searcher and the tuner into its object
store and experiment folder (``tuner.pkl``, ``searcher-state-*.pkl``). Trials do not need the
storage (the driver records their results), so what Ray gets is the run without its storage URL,
and the searcher's storage pickles without its password (`cvt_nas.common.storage`).

Early stopping: ``--pruner asha`` runs Ray's ASHA on ``val_top1`` (for multi-objective studies
too: the costs are known before training, so only accuracy is learned; see
`cvt_nas.search.rungs` for the trade-off). Every per-epoch report carries the record the trial
would leave if stopped there (status ``pruned``), so a stopped trial's last report is its record.

GPUs: without ``--gpus-per-trial``, a cluster with GPUs gives each trial one when the device is
``auto`` or ``cuda`` (`gpus_per_trial`). Ray pins a trial to its GPUs (``CUDA_VISIBLE_DEVICES``
= ``ray.get_gpu_ids()``, which the record's ``worker`` column names); a trial that reserved none
sees none, so it trains on the CPU, and its record says so (``warning``) when the cluster had GPUs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cvt_nas.search import study as store
from cvt_nas.search.optuna_backend import SearchRun, make_sampler, resume_seed
from cvt_nas.search.progress import Progress
from cvt_nas.search.trial import Gate, evaluate, gate, record_extra

RAY_PRUNERS = ("none", "asha")
# Times Tune runs a trial again, from its start, after the trial's process or node was lost
# (a trial never raises: `evaluate` turns its own errors into a record, so an error Tune sees
# is the machine's). The rerun is the same Tune trial and the same Optuna trial, recorded once.
TRIAL_RETRIES = 2


@dataclass(frozen=True)
class RayOptions:
    """Resources per trial and where the cluster is."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: `gpus_per_trial` decides
    address: str | None = None  # None: start a local Ray on 127.0.0.1


def _ray_env(local: bool) -> None:
    """Environment for a local (loopback) Ray; a remote cluster keeps the user's settings."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        # Ray 2.60 on Linux binds the machine's address unless this is 0 (ENVIRONMENT.md).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def gpus_per_trial(asked: float | None, cluster_gpus: float, device: str) -> float:
    """GPUs each trial requests: ``asked`` when given, else 1 on a cluster with GPUs when the
    device is ``auto`` or ``cuda``, else 0.

    Raises:
        ValueError: ``--gpus-per-trial 0`` with device ``cuda`` (such trials see no GPU).
    """
    if asked is None:
        return 1.0 if cluster_gpus > 0 and device in ("auto", "cuda") else 0.0
    if asked == 0 and device.startswith("cuda"):
        raise ValueError(f"--gpus-per-trial 0 with --device / train.device {device}: a trial "
                         "that reserves no GPU sees none; drop --gpus-per-trial or use "
                         "--device auto")
    return asked


def _metrics(values: list[float] | None, objectives: dict[str, str], status: str
             ) -> dict[str, Any]:
    """Finite objective metrics for Tune's bookkeeping (the searcher reads the record)."""
    out: dict[str, Any] = {"status": status}
    for i, name in enumerate(objectives):
        v = values[i] if values is not None else None
        out[name] = float(v) if v is not None and abs(v) != float("inf") else 0.0
    out.setdefault("val_top1", 0.0)
    return out


def _trainable(config: dict[str, Any], run: SearchRun) -> None:
    """One Tune trial: rebuild the sample from its parameters and evaluate it."""
    import ray
    import torch
    from ray import tune

    from cvt_nas.results import make_record

    if not ray.get_gpu_ids():  # reserved none: use none (Ray leaves CUDA_VISIBLE_DEVICES unset)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    config = dict(config)
    number = int(config.pop("trial_number"))
    sample = run.space.build(config)
    settings = run.settings
    if settings.threads:
        torch.set_num_threads(settings.threads)
    epochs = run.epochs
    seen: dict[str, Any] = {}

    def on_gate(g: Gate, known: dict[str, float]) -> None:
        seen["gate"] = g

    def report(epoch: int, metrics: dict[str, Any]) -> None:
        seen.setdefault("history", []).append(dict(metrics))
        if epoch >= epochs:
            return  # the final report follows run_trial's return
        g = seen["gate"]
        partial = {"status": "pruned", "val_top1": metrics.get("val_top1"),
                   "val_top5": metrics.get("val_top5"), "train_loss": metrics.get("train_loss"),
                   "epochs": epoch, "wall_time_s": sum(h["time_s"] for h in seen["history"]),
                   "images_per_s": metrics.get("images_per_s"), "seed": g.train.seed}
        record = make_record(study=settings.study, trial=number, backend=settings.backend,
                             model_cfg=g.model, train_cfg=g.train, result=partial,
                             reason=f"stopped by ASHA after epoch {epoch}",
                             extra=record_extra(sample, g, settings))
        tune.report({**_metrics(None, settings.objectives, "running"),
                     "val_top1": float(metrics.get("val_top1") or 0.0), "epoch": epoch,
                     "record_json": json.dumps(record),
                     "history_json": json.dumps(seen["history"])})

    outcome = evaluate(run.space, sample, number, settings, report, on_gate)
    tune.report({**_metrics(outcome.values, settings.objectives, outcome.status),
                 "objective_values": json.dumps(outcome.values), "epoch": epochs,
                 "record_json": json.dumps(outcome.record),
                 "history_json": json.dumps(outcome.history)})


def trial_dirname(trial: Any) -> str:
    """``trial_00012_<tune id>``: the study's trial number first (what importers look for)."""
    return f"trial_{int(trial.config.get('trial_number', 0)):05d}_{trial.trial_id}"


class DefineByRun:
    """OptunaSearch's define-by-run space: sample, gate on the budget, pass the trial number.

    A class, not a closure: Tune pickles the searcher (and so this) with its experiment state.
    """

    def __init__(self, run: SearchRun) -> None:
        self.run = run

    def __call__(self, trial: Any) -> dict[str, Any]:
        sample = self.run.space.sample(trial)
        g = gate(self.run.space, sample, self.run.settings)
        trial.set_constraint("budget", g.violation)  # steers NSGA-II / TPE before training
        return {"trial_number": trial.number}


def _searcher(run: SearchRun, storage: Any, seed: int | None) -> Any:
    """Ray's OptunaSearch on the study, its sampler seeded ``seed`` (`resume_seed`)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        """OptunaSearch that stores each trial's record and tells Optuna its real state."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if len(run.settings.objectives) == 1 and result.get("status") == "running":
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            record = json.loads(result["record_json"]) if result and "record_json" in result \
                else None
            state, values = optuna.trial.TrialState.FAIL, None
            if result is not None and record is not None:  # a record implies a result
                ot_trial.set_user_attr("record", record)
                ot_trial.set_user_attr("history", json.loads(result.get("history_json", "[]")))
                status = record.get("status")
                if status in ("complete", "infeasible") and result.get("objective_values"):
                    values = json.loads(result["objective_values"])
                    state = optuna.trial.TrialState.COMPLETE
                elif status == "pruned":
                    state = optuna.trial.TrialState.PRUNED
            # ray's OptunaSearch.__init__ sets _ot_study = None, so mypy types it as None; it is
            # an optuna.Study once the searcher is set up (it created _ot_trials[trial_id])
            self._ot_study.tell(ot_trial, values, state=state)  # type: ignore[attr-defined]
            self._completed_trials.add(trial_id)

    objectives = run.settings.objectives
    multi = len(objectives) > 1
    return RecordingOptunaSearch(
        space=DefineByRun(run),
        metric=list(objectives) if multi else next(iter(objectives)),
        mode=list(objectives.values()) if multi else next(iter(objectives.values())),
        sampler=make_sampler(run, seed), study_name=run.settings.study, storage=storage)


def run_ray(run: SearchRun, opts: RayOptions, out_dir: str | Path, meta: dict[str, Any],
            progress: bool = True) -> Any:
    """Run (or resume) a study on Ray Tune and write its results; returns the Optuna study.

    The Ray driver is the study's only sampler: trials it left RUNNING when it was killed are
    failed and their parameters retried once. A trial whose worker or node is lost runs again
    elsewhere (`TRIAL_RETRIES`), as the same study trial.
    """
    if run.pruner not in RAY_PRUNERS:
        raise ValueError(f"--pruner {run.pruner!r}: the ray backend offers {list(RAY_PRUNERS)} "
                         "(ASHA on val_top1); median/sha/hyperband/pareto-sha are the optuna "
                         "backend's")
    if run.sampler == "grid":
        raise ValueError("--sampler grid: use the optuna backend for grid search")
    local = opts.address is None or opts.address.startswith(("127.", "localhost"))
    _ray_env(local)
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = store.make_storage(run.storage_url, heartbeat=None)
    study = store.open_study(storage, run.settings.study, run.settings.objectives,
                             space=run.space)
    store.fail_dead_trials(study, only_local=False)
    seed = resume_seed(study, run.seed)  # a resumed study does not replay its first draws
    remaining = run.trials - store.tally(study).counted
    objectives = run.settings.objectives
    started = False
    if remaining > 0:
        if not ray.is_initialized():
            if opts.address:
                ray.init(address=opts.address, _node_ip_address="127.0.0.1" if local else None,
                         log_to_driver=False)
            else:
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=False)
            started = True
        try:
            scheduler: Any = FIFOScheduler()
            if run.pruner == "asha":
                scheduler = ASHAScheduler(metric="val_top1", mode="max", max_t=run.epochs,
                                          grace_period=1, reduction_factor=run.eta)
            cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
            gpus = gpus_per_trial(opts.gpus_per_trial, cluster_gpus, run.device)
            if opts.gpus_per_trial is None and gpus:
                print(f"cvt-nas search: the Ray cluster has {cluster_gpus:g} GPU(s): each trial "
                      f"gets {gpus:g} (--gpus-per-trial 0 keeps trials on the CPU)",
                      file=sys.stderr, flush=True)
            meta = {**meta, "settings": {**meta.get("settings", {}), "gpus_per_trial": gpus}}
            resources = {"cpu": opts.cpus_per_trial, "gpu": gpus}
            # what Ray pickles: no storage URL in it
            shipped = replace(run, storage_url="", settings=replace(
                run.settings, gpus_seen=int(cluster_gpus)))
            trainable = tune.with_resources(tune.with_parameters(_trainable, run=shipped),
                                            resources)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=_searcher(shipped, storage, seed),
                                            scheduler=scheduler, num_samples=remaining,
                                            trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=str((Path(out_dir) / "ray").resolve()), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES)),
            )
            with Progress(run.storage_url, run.settings.study, run.trials, objectives,
                                out_dir, meta, show=progress):
                tuner.fit()
        finally:
            if started:
                ray.shutdown()
            store.write_results(study, out_dir, objectives, meta)
    else:
        store.write_results(study, out_dir, objectives, meta)
    return study


__all__ = ["RAY_PRUNERS", "TRIAL_RETRIES", "DefineByRun", "RayOptions", "gpus_per_trial",
           "run_ray", "trial_dirname"]
