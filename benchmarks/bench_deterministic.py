"""The wall-time cost of ``--deterministic``: the same search in both modes, side by side.

Each repeat runs ``cvt-nas search`` twice on fresh studies, once as usual and once with
``--deterministic`` (the order alternates between repeats, so machine load affects both alike),
with the same space, seed, workers and threads. Reported per mode: wall time, the trials' own
training time (sum of ``wall_time_s``) and the workers' utilization (training time / (wall x
workers)); the result is the ratio of wall times, deterministic / default. The two modes draw
different architectures, so the ratio also holds some of their cost difference; utilization is
the cleaner view of the barrier's idle time, so the last line is the ratio for the same work
(utilization default / deterministic).

    python benchmarks/bench_deterministic.py --workers 2 --trials 16 --population-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``) and the cores this process may use."""
    from cvt_nas.common.proc import cpu_name as model

    return f"{model()}, {len(os.sched_getaffinity(0))} cores"


def search(out: Path, args: argparse.Namespace, exact: bool) -> dict[str, float]:
    """One search in a fresh process: wall time, training time, utilization."""
    cmd = [sys.executable, "-m", "cvt_nas.cli", "search", args.space, "--out", str(out),
           "--trials", str(args.trials), "--sampler", args.sampler, "--seed", str(args.seed),
           "--population-size", str(args.population_size), "--n-workers", str(args.workers),
           "--threads", str(args.threads), "--quiet",
           *[f"--set={s}" for s in args.set], *(["--deterministic"] if exact else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    table = pd.read_csv(out / "trials.csv")
    busy = float(table["wall_time_s"].fillna(0).sum())
    return {"wall_s": wall, "train_s": busy, "trained": int((table["wall_time_s"] > 0).sum()),
            "utilization": busy / (wall * args.workers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(ROOT / "tests" / "data" / "tiny_space.yaml"))
    ap.add_argument("--sampler", default="nsga2", choices=("nsga2", "tpe", "random"))
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--population-size", type=int, default=4,
                    help="NSGA-II population = generation size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", action="append", default=["constraints.max_params=1M"],
                    help="space overrides, added to constraints.max_params=1M (every draw "
                         "trains)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {"default": [], "deterministic": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ["default", "deterministic"] if r % 2 == 0 else ["deterministic", "default"]
            for mode in order:
                out = Path(tmp) / f"{mode}{r}"
                runs[mode].append(search(out, args, exact=mode == "deterministic"))
    mean = {m: {k: sum(x[k] for x in v) / len(v) for k in v[0]} for m, v in runs.items()}
    ratio = mean["deterministic"]["wall_s"] / mean["default"]["wall_s"]
    report = {"cpu": cpu_name(), "load": [load, os.getloadavg()[0]], "args": vars(args),
              "mean": mean, "ratio": ratio,
              "same_work": mean["default"]["utilization"] / mean["deterministic"]["utilization"]}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['cpu']}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{args.trials} trials, {args.sampler} (generations of {args.population_size}), "
          f"{args.workers} workers x {args.threads} threads, {args.repeats} repeat(s)")
    for mode, m in mean.items():
        print(f"{mode:13s}: wall {m['wall_s']:6.1f} s, training {m['train_s']:6.1f} s "
              f"({m['trained']:.0f} trained), utilization {m['utilization']:.0%}")
    print(f"deterministic / default wall time: {ratio:.2f}x")
    print("for the same training work (utilization default / deterministic): "
          f"{report['same_work']:.2f}x")


if __name__ == "__main__":
    main()
