"""`cvt-nas ablate EXPERIMENT.yaml`: run a paper table's rows x seeds and write its table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cvt_nas.ablation.experiment import SCALES, Experiment, load_experiment
from cvt_nas.ablation.table import build_table, table_markdown, write_table
from cvt_nas.commands._common import GPUS_HELP, gpus_arg, parse_set, positive_int, train_set_arg
from cvt_nas.common.atomic import atomic_write_text
from cvt_nas.common.proc import threads_per_trial
from cvt_nas.results.io import check_out_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="reproduce a CvT paper ablation table (experiments/*.yaml)",
        description="Run the rows of an experiment YAML over seeds as a resumable Optuna grid "
                    "study and write table.csv and table.md.",
    )
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/table7_kv_stride.yaml")
    p.add_argument("--scale", choices=SCALES, default="reduced",
                   help="reduced (CPU, Fashion-MNIST; default) or paper (ImageNet recipe)")
    p.add_argument("--seeds", type=positive_int, help="seeds per row (default: the scale's)")
    p.add_argument("--costs-only", action="store_true",
                   help="print our exact params/MACs next to the paper's (no training); writes "
                        "table.csv/.md only with --out, so trained tables are never overwritten")
    p.add_argument("--out", help="output folder (default: results/ablations/<name>)")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql+psycopg2://"
                   "user@host/db) or a *.journal/.log/.jsonl file (default: $CVT_NAS_STORAGE, "
                   "else SQLite studies.db next to the output folder, shared by the tables); "
                   "keep passwords in ~/.pgpass or $CVT_NAS_STORAGE, not on the command line")
    p.add_argument("--n-workers", type=positive_int, default=1, help="parallel worker processes")
    p.add_argument("--threads", type=positive_int, help="torch threads per worker")
    p.add_argument("--gpus", type=gpus_arg, help=GPUS_HELP)
    p.add_argument("--pack", type=positive_int, default=1, metavar="K",
                   help="up to K runs at once in each worker, on its one device, as many as its "
                        "free memory fits by the memory model (docs/distributed.md)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", type=train_set_arg,
                   help="TrainConfig override for every run, e.g. --set epochs=1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment)
    out = check_out_dir(args.out or Path("results/ablations") / exp.name)
    if args.costs_only:
        table = build_table(exp, args.scale)
        if args.out:
            write_table(exp, args.scale, table, out)
        print(table_markdown(exp, args.scale, table), end="")
        return 0
    if args.scale not in exp.scales:
        raise ValueError(f"{exp.path}: no scale {args.scale!r}; it has {sorted(exp.scales)}")
    seeds = args.seeds or exp.scales[args.scale].seeds
    if seeds < 1 or args.n_workers < 1:
        raise ValueError("--seeds and --n-workers must be >= 1")
    overrides = parse_set(args.set)
    exp.check(args.scale, overrides)  # a --set that breaks a row: one line, before any study
    devices = _check_devices(exp, args.scale, overrides)
    if args.pack > 1 and len(devices) > 1:
        raise ValueError(f"{exp.path}: --pack packs one device's runs, but the rows train on "
                         f"{', '.join(devices)}; give them one with --set device=...")
    from cvt_nas.common.gpus import select_gpus, visible_gpus

    gpus = select_gpus(args.gpus, visible_gpus(), devices[0] if len(devices) == 1 else "cpu")
    from cvt_nas.ablation.runner import default_storage, run_experiment
    from cvt_nas.ablation.table import table_records
    from cvt_nas.common.storage import check_url, resolve_url, shown_url
    from cvt_nas.results import DEFAULT_OBJECTIVES, read_study, write_outputs

    out.mkdir(parents=True, exist_ok=True)
    storage, flag = resolve_url(args.storage, default_storage(out))
    check_url(storage, flag)
    threads = args.threads
    if args.pack > 1 and threads is None:  # K runs at once share the worker's cores
        threads = threads_per_trial(args.n_workers, args.pack)
    study = run_experiment(exp, args.scale, seeds, storage, n_workers=args.n_workers,
                           threads=threads, train_overrides=overrides, gpus=gpus,
                           pack=args.pack)
    tables = read_study(study)
    records, epochs = table_records(tables, seeds)
    table = build_table(exp, args.scale, records)
    write_table(exp, args.scale, table, out, records, epochs)
    # the study as a standard results directory too, for `cvt-nas report` and `compare`
    write_outputs(out, tables.trials, tables.epochs, DEFAULT_OBJECTIVES, {
        "command": args.command_line, "experiment": str(args.experiment), "scale": args.scale,
        "settings": {"backend": "ablate", "seeds": seeds, "storage": shown_url(storage),
                     "n_workers": args.n_workers, "threads": threads,
                     "gpus": list(gpus), "overrides": overrides,
                     **({"pack": args.pack} if args.pack > 1 else {})}})
    atomic_write_text(out / "command.txt", args.command_line + "\n")
    print(table_markdown(exp, args.scale, table), end="")
    return 0


def _check_devices(exp: Experiment, scale: str, overrides: dict[str, Any]) -> list[str]:
    """The rows' devices; a device this machine lacks (``--set device=cuda`` or the file's
    ``train.device``) is refused before the study opens, as `cvt-nas search --device` does, so
    it is one line here instead of a failure in every trial.

    Raises:
        ValueError: the file, the device and the fix.
    """
    from cvt_nas.training.trainer import resolve_device

    devices = sorted({exp.train_config(r, scale, 0, **overrides).device
                      for r in exp.runnable(scale)})
    for device in devices:
        try:
            resolve_device(device)
        except ValueError as exc:
            raise ValueError(f"{exp.path}: --set device / train.device: {exc}") from None
    return devices
