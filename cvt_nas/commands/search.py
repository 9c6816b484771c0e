"""`cvt-nas search SPACE.yaml`: run (or resume) an architecture search, Optuna or Ray Tune."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from cvt_nas.commands._common import (
    GPUS_HELP,
    device_arg,
    float_above,
    gpus_arg,
    int_at_least,
    name_arg,
    non_negative_float,
    non_negative_int,
    objectives_arg,
    parse_set,
    positive_int,
    set_arg,
)
from cvt_nas.common.proc import threads_per_trial


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search a space of CvTs (YAML) with Optuna or Ray Tune",
        description="Run a search over a space file (search_spaces/*.yaml). Re-running the same "
                    "command continues the study; --trials is the study's total.")
    p.add_argument("space", help="search-space YAML, e.g. search_spaces/cvt_micro.yaml")
    p.add_argument("--backend", type=_backend, default="optuna",
                   help="optuna (default), ray, or table:DIR: answer each trial from a CvT-Bench "
                        "table (simulated time; docs/bench.md)")
    p.add_argument("--trials", type=positive_int, help="the study's total number of trials "
                   "(default: the space's search.trials, else 10)")
    p.add_argument("--study", type=name_arg, help="study name (default: the space's name)")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql+psycopg2://"
                   "user@host/db) or a *.journal/.log/.jsonl file (default: $CVT_NAS_STORAGE, "
                   "else sqlite in the results directory); keep passwords in ~/.pgpass or "
                   "$CVT_NAS_STORAGE, not on the command line")
    p.add_argument("--out", help="results directory (default: results/<study>)")
    p.add_argument("--objectives", type=objectives_arg,
                   help="comma list, e.g. val_top1:max,macs:min,latency:min")
    p.add_argument("--sampler", choices=("nsga2", "tpe", "random", "grid"))
    p.add_argument("--pruner", choices=("none", "median", "sha", "hyperband", "pareto-sha",
                                        "asha"),
                   help="early stopping: median/sha/hyperband (optuna, single objective), "
                        "pareto-sha (optuna, any), asha (ray, on val_top1)")
    p.add_argument("--seed", type=non_negative_int, help="sampler seed: a single run draws the "
                   "same trials each time; other workers, and runs joining a study that another "
                   "live worker is on, draw from streams of their own")
    p.add_argument("--population-size", type=int_at_least(2), help="NSGA-II population (with "
                   "--deterministic also the generation size of tpe and grid, default 4)")
    p.add_argument("--n-workers", type=positive_int, default=1,
                   help="local worker processes on the study (optuna backend); with "
                        "--backend table, simulated asynchronous workers")
    p.add_argument("--gpus", type=gpus_arg, help=f"optuna: {GPUS_HELP}")
    p.add_argument("--pack", type=positive_int, default=1, metavar="K",
                   help="optuna: up to K trials at once in each worker, on its one device, as "
                        "many as its free memory fits by the memory model; a trial that runs out "
                        "of memory beside others is run again alone (docs/distributed.md)")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads per trial (default: CPU cores // workers)")
    p.add_argument("--device", type=device_arg, help="override train.device (cpu, cuda, cuda:1, auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", type=set_arg,
                   help="override part of the space, e.g. train.epochs=3, "
                        "constraints.max_macs=30M, search.trials=20 (repeatable)")
    p.add_argument("--heartbeat", type=non_negative_int, default=10,
                   help="seconds between RDB heartbeats (0: off); a dead worker's trial is "
                        "failed and retried after three missed beats")
    p.add_argument("--deterministic", action="store_true",
                   help="optuna: the same trials, and on CPU the same results, for any "
                        "--n-workers and any timing (generations with a barrier; seed 0 and "
                        "--threads 1 unless given; no pruner, no latency; docs/search.md)")
    p.add_argument("--retrain-duplicates", action="store_true",
                   help="optuna: train a sample again even when a complete trial of the study had "
                        "the same parameters (default: copy its result, marked in `reason`)")
    p.add_argument("--cpus-per-trial", type=float_above(0), default=1.0, help="ray: CPUs per trial")
    p.add_argument("--gpus-per-trial", type=non_negative_float,
                   help="ray: GPUs per trial (fractions share a GPU); default: 1 when the "
                        "cluster has GPUs and the device is auto or cuda, else 0")
    p.add_argument("--address", help="ray: join this cluster (host:port from `ray start "
                   "--head`); default: start a local Ray on 127.0.0.1")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--dry-run", action="store_true",
                   help="only load the space and print what it holds (no training)")
    p.set_defaults(func=run)


def _backend(value: str) -> str:
    if value in ("optuna", "ray") or (value.startswith("table:") and value != "table:"):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: choose optuna, ray or table:DIR (a CvT-Bench "
                                     "table directory, e.g. table:benchmarks/cvtbench/cvt_micro)")


def run(args: argparse.Namespace) -> int:
    from cvt_nas.results.io import check_out_dir
    from cvt_nas.results.objectives import parse_objectives
    from cvt_nas.search.trial import TrialSettings
    from cvt_nas.space import analyze, load_space

    space = load_space(args.space, overrides=parse_set(args.set))
    defaults = space.search
    study = args.study or space.name
    out = check_out_dir(args.out or Path("results") / study)
    objectives = (parse_objectives(args.objectives) if args.objectives is not None
                  else defaults.get("objectives") or {"val_top1": "max", "macs": "min"})
    trials = args.trials or defaults.get("trials", 10)
    sampler = args.sampler or defaults.get("sampler", "nsga2")
    pruner = args.pruner or defaults.get("pruner", "none")
    seed = args.seed if args.seed is not None else defaults.get("seed")
    exact = args.deterministic or defaults.get("deterministic", False)
    if exact and seed is None:
        seed = 0  # reproducible needs a seed
    if exact and args.backend == "ray":
        raise ValueError("--deterministic is for the optuna backend (Ray's scheduler decides "
                         "what a trial sees); drop --backend ray")
    if args.n_workers < 1 or trials < 1 or args.pack < 1:
        raise ValueError("--n-workers, --trials and --pack must be >= 1")
    if args.pack > 1 and args.backend != "optuna":
        raise ValueError(f"--pack is for the optuna backend; {args.backend.split(':')[0]} "
                         "places trials itself (ray: --gpus-per-trial 0.25 shares a GPU; "
                         "table: nothing is trained)")
    if args.pack > 1 and "latency" in objectives:
        raise ValueError("--pack: the latency objective is measured while other trials run on "
                         "the device, so it would time them too; drop --pack or latency")
    if args.pack > 1 and exact:
        raise ValueError("--pack runs trials side by side in threads, so their timing decides "
                         "what they see; drop --pack or --deterministic")
    if args.dry_run:
        _describe(space, analyze(space), trials, objectives)
        return 0
    table = args.backend.removeprefix("table:") if args.backend.startswith("table:") else None
    runner = None
    if table is not None:
        from cvt_nas.search.table_backend import prepare

        if exact:
            raise ValueError("--deterministic: a --backend table search is reproducible from "
                             "its --seed already, with any --n-workers; drop --deterministic")
        space, runner = prepare(space, table, objectives, seed)
    # float results depend on the thread count: a deterministic search must not take it from
    # --n-workers
    threads = args.threads or (1 if exact else threads_per_trial(args.n_workers, args.pack))
    if args.backend == "ray":
        threads = args.threads or max(1, int(args.cpus_per_trial))
    from cvt_nas.common.gpus import select_gpus, visible_gpus, workers_per_device

    if args.backend != "optuna" and args.gpus is not None:
        raise ValueError(f"--gpus is for the optuna backend; {args.backend.split(':')[0]} "
                         "places trials itself (ray: --gpus-per-trial; table: nothing to place)")
    visible = visible_gpus() if args.backend == "optuna" else ()
    settings = TrialSettings(study=study, backend="table" if table else args.backend,
                             objectives=dict(objectives), device=args.device, threads=threads,
                             gpus_seen=len(visible))
    from cvt_nas.common.storage import (
        check_url,
        default_storage_url,
        redact,
        resolve_url,
        shown_url,
    )
    from cvt_nas.search.optuna_backend import SearchRun
    from cvt_nas.search.trial import preflight

    if table is None:  # a table needs neither the data nor the device here
        preflight(space, settings)

    # a simulated study's default is a journal file: SQLite's per-commit syncs would take most
    # of its time
    default = (default_storage_url(out) if table is None
               else str((out / "study.journal").resolve()))
    url, flag = resolve_url(args.storage, default)
    check_url(url, flag)
    search = SearchRun(space=space, settings=settings, storage_url=url, trials=trials,
                       sampler=sampler, pruner=pruner, seed=seed,
                       population_size=args.population_size or defaults.get("population_size"),
                       heartbeat=args.heartbeat or None,
                       reuse_duplicates=not args.retrain_duplicates, runner=runner,
                       deterministic=exact, pack=args.pack)
    gpus = select_gpus(args.gpus, visible, search.device) if args.backend == "optuna" else ()
    if args.pack > 1:  # workers on one device pack into their share of its memory
        search = replace(search, device_share=workers_per_device(args.n_workers, gpus))
    if exact:
        from cvt_nas.search.deterministic import check_run

        check_run(search)
    meta: dict[str, Any] = {
        "command": args.command_line, "space_file": str(args.space), "space": space.raw,
        "settings": {"backend": args.backend, "trials": trials, "sampler": sampler,
                     "pruner": pruner, "seed": seed, "storage": shown_url(url),
                     "n_workers": args.n_workers, "threads": threads, "device": args.device,
                     "gpus": list(gpus),
                     "reuse_duplicates": args.backend != "ray" and not args.retrain_duplicates,
                     "overrides": parse_set(args.set)},
    }
    if exact:  # only then: the settings of other searches stay as they were
        meta["settings"]["deterministic"] = True
    if args.pack > 1:
        meta["settings"]["pack"] = args.pack
    print(f"cvt-nas search: study {study!r} ({args.backend}, {sampler}, pruner {pruner}), "
          f"{trials} trials, objectives {objectives}, storage {redact(url)}",
          file=sys.stderr)
    if args.backend == "ray":
        from cvt_nas.common.pool import stop_on_signals
        from cvt_nas.search.ray_backend import RayOptions, run_ray

        if args.n_workers > 1:
            raise ValueError("--n-workers is for the optuna backend; Ray runs as many trials at "
                             "once as --cpus-per-trial / --gpus-per-trial and the cluster allow")
        with stop_on_signals():  # SIGTERM ends the driver like Ctrl-C
            run_ray(search, RayOptions(cpus_per_trial=args.cpus_per_trial,
                                       gpus_per_trial=args.gpus_per_trial, address=args.address),
                    out, meta, progress=not args.quiet)
    else:
        if args.address:
            raise ValueError("--address is for --backend ray; the optuna backend shares a "
                             "study through --storage")
        from cvt_nas.search.optuna_backend import run_search

        if table is not None:
            from cvt_nas.search.table_backend import run_table_search

            run_table_search(search, out, meta, progress=not args.quiet,
                             workers=args.n_workers)
        else:
            if gpus:
                print(f"cvt-nas search: {args.n_workers} worker(s) on GPU(s) {', '.join(gpus)} "
                      "(one each, round-robin)", file=sys.stderr)
            run_search(search, args.n_workers, out, meta, progress=not args.quiet, gpus=gpus)
    _summary(out, study)
    return 0


def _describe(space: Any, report: Any, trials: int, objectives: dict[str, str]) -> None:
    sampled = sorted(space.random(0).params)
    size = space.size()
    print(f"space {space.name} ({space.source}): {len(sampled)} sampled parameters, "
          f"{'a continuous space' if size is None else f'{size:,} combinations'}, "
          f"img_size {space.img_size}")
    print(f"  params {report.params_range[0]:,} - {report.params_range[1]:,}, "
          f"MACs {report.macs_range[0]:,} - {report.macs_range[1]:,}")
    rules = {k: v for k, v in vars(space.budget).items() if v not in (None, ())}
    print("  constraints " + (", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                        for k, v in rules.items()) or "none"))
    print(f"  of {report.n_random} random draws: {report.n_invalid} invalid, "
          f"{report.n_infeasible} over budget or breaking a rule")
    print(f"  would run {trials} trials for {objectives}")


def _summary(out: Path, study: str) -> None:
    pareto = out / "pareto.md"
    if pareto.exists():
        print(pareto.read_text().rstrip())
    print(f"results: {out}/ (trials.csv, pareto.csv, pareto.md, pareto.png, study.yaml)")
