"""`cvt-nas bench build SPACE.yaml --archs N --seeds S --out DIR`: train a CvT-Bench table;
`cvt-nas bench show DIR`: what a table holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cvt_nas.commands._common import (
    GPUS_HELP,
    gpus_arg,
    non_negative_int,
    parse_set,
    positive_int,
    train_set_arg,
)
from cvt_nas.results.io import check_out_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="CvT-Bench: tabular benchmarks of trained CvTs",
        description="Build a table of trained architectures of a search space, or show what "
                    "one holds (docs/bench.md).",
    )
    bench = p.add_subparsers(dest="bench_command", required=True)
    b = bench.add_parser(
        "build", help="train a seeded sample of a space's architectures into a table",
        description="Train the first N feasible architectures of a seeded sample of SPACE (plus "
                    "the reduced-scale rows of --named experiments) for --epochs epochs with "
                    "--seeds seeds each, and write table.parquet, archs.parquet and "
                    "manifest.json. Resumable and shardable: runs already in the storage are "
                    "never trained again; workers on many machines may share one storage.",
    )
    b.add_argument("space", help="search-space YAML, e.g. search_spaces/cvt_micro.yaml")
    b.add_argument("--archs", type=positive_int, required=True,
                   help="architectures of the seeded sample (the first N of a longer build "
                        "are the same N)")
    b.add_argument("--seeds", type=positive_int, default=1, help="training seeds per "
                   "architecture (default 1)")
    b.add_argument("--epochs", type=positive_int, default=4, help="epochs per run (default 4)")
    b.add_argument("--named", action="append", default=[], metavar="EXPERIMENT.yaml",
                   help="also train this experiment's reduced-scale rows (repeatable)")
    b.add_argument("--sample-seed", type=non_negative_int, default=0,
                   help="seed of the architecture sample (default 0)")
    b.add_argument("--out", required=True, help="the table's folder")
    b.add_argument("--storage", help="Optuna storage URL or *.journal file shared by the "
                   "workers (default: $CVT_NAS_STORAGE, else DIR/bench.db)")
    b.add_argument("--n-workers", type=positive_int, default=1, help="parallel worker processes")
    b.add_argument("--threads", type=positive_int, help="torch threads per worker")
    b.add_argument("--gpus", type=gpus_arg, help=GPUS_HELP)
    b.add_argument("--no-train", action="store_true",
                   help="train nothing: export the runs the storage holds (while other "
                        "machines build, or after an interrupted build)")
    b.add_argument("--set", action="append", metavar="FIELD=VALUE", type=train_set_arg,
                   help="TrainConfig field for every run that changes where it runs, e.g. "
                        "--set device=cuda or --set data_root=/data")
    b.set_defaults(func=run_build)
    s = bench.add_parser(
        "show", help="what a table holds: architectures, runs, seeds, ranges, shared-CPU runs",
        description="Print what a CvT-Bench table holds: how many of the asked-for architectures "
                    "have a complete run, runs and seeds, accuracy and run-time ranges, runs "
                    "timed on a shared CPU, and its Pareto front's size.",
    )
    s.add_argument("dir", help="the table's folder, e.g. benchmarks/cvtbench/cvt_micro")
    s.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    s.set_defaults(func=run_show)


def run_build(args: argparse.Namespace) -> int:
    from cvt_nas.bench.build import build, default_storage
    from cvt_nas.bench.table import EXECUTION_FIELDS
    from cvt_nas.common.gpus import select_gpus, visible_gpus
    from cvt_nas.common.storage import check_url, resolve_url
    from cvt_nas.training.trainer import resolve_device

    out = check_out_dir(Path(args.out))
    overrides = parse_set(args.set)
    allowed = [f for f in EXECUTION_FIELDS if f != "seed"]
    numbers = sorted(k for k in overrides if k not in allowed)
    if numbers:
        raise ValueError(f"--set {numbers[0]}: a table's runs share one recipe; only "
                         f"{', '.join(allowed[:-1])} and {allowed[-1]} may be set")
    device = str(overrides.get("device", "auto"))
    resolve_device(device)  # a device this machine lacks: one line, before any study
    gpus = select_gpus(args.gpus, visible_gpus(), device)
    out.mkdir(parents=True, exist_ok=True)
    storage, flag = resolve_url(args.storage, default_storage(out))
    check_url(storage, flag)
    build(args.space, out, archs=args.archs, seeds=args.seeds, named=args.named,
          epochs=args.epochs, sample_seed=args.sample_seed, storage=storage,
          n_workers=args.n_workers, threads=args.threads, train_overrides=overrides, gpus=gpus,
          train_runs=not args.no_train)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cvt_nas.bench import load, summary

    info = summary(load(args.dir))
    print(json.dumps(info, indent=1) if args.json else "\n".join(describe(info)))
    return 0


def describe(info: dict[str, Any]) -> list[str]:
    """`summary`'s numbers as the lines `cvt-nas bench show` prints."""
    from cvt_nas.bench.analysis import SHARED_CPU
    from cvt_nas.common.fmt import duration
    from cvt_nas.results import DEFAULT_OBJECTIVES

    seeds = ", ".join(f"{n} with {k} seed{'s' if k > 1 else ''}"
                      for k, n in sorted(info["seeds"].items()))
    lines = [f"{info['path']}: space {info['space']}, {info['dataset']}, "
             f"{info['epochs']} epochs",
             f"  architectures: {info['archs']} of {info['archs_asked']} asked for have a "
             "complete run",
             f"  runs: {info['runs']} complete, {info['failed']} failed"
             + (f"; {seeds}" if seeds else "")]
    ranges = []
    for name, key in (("val top-1", "val_top1"), ("test top-1", "test_top1")):
        if info[key]:
            lo, hi = info[key]
            ranges.append(f"{name} {lo:.2f}-{hi:.2f} %")
    if ranges:
        lines.append(f"  {', '.join(ranges)} (each run's last epoch)")
    if info["run_s"]:
        lo, mid, hi = info["run_s"]
        lines.append(f"  run time {duration(lo)} to {duration(hi)}, median {duration(mid)} "
                     "(train + eval)")
    shared = info["shared_cpu"]
    lines.append(f"  CPU share recorded for {info['cpu_runs']} runs; {len(shared)} below "
                 f"{SHARED_CPU:.0%} (timed on a shared CPU)"
                 + "".join(f"\n    {r['arch_id']} seed {r['seed']}: {r['share']:.0%}"
                           for r in shared))
    objectives = ", ".join(f"{k} {v}" for k, v in DEFAULT_OBJECTIVES.items())
    lines.append(f"  Pareto front ({objectives}): {info['front']} runs")
    lines.append(f"  devices: {'; '.join(info['devices']) or 'none recorded'}")
    return lines
