"""Analytic cost model vs build + fvcore, side by side in one run: the speed ratio.

    python benchmarks/bench_cost.py [--models cvt_13 cvt_micro] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import cvt_nas
from cvt_nas.common.proc import cpu_name
from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.fvcore_count import fvcore_cost
from cvt_nas.model.presets import get_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cvt_13", "cvt_21", "cvt_micro"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}; {args.threads} threads; best of {args.repeats}")
    print(f"{'model':<12} {'analytic (ms)':>14} {'build+fvcore (ms)':>18} {'ratio':>9}  agree")
    for name in args.models:
        cfg = get_config(name)
        n_ana = 200
        best_ana = best_fv = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(n_ana):
                ana = analytic_cost(cfg)
            best_ana = min(best_ana, (time.perf_counter() - t) / n_ana)
            t = time.perf_counter()
            fv = fvcore_cost(cvt_nas.CvT(cfg), cfg.img_size)
            best_fv = min(best_fv, time.perf_counter() - t)
        agree = ana.macs == fv.macs and ana.params == fv.params
        print(f"{name:<12} {best_ana * 1e3:>14.3f} {best_fv * 1e3:>18.1f} "
              f"{best_fv / best_ana:>8.0f}x  {agree}")


if __name__ == "__main__":
    main()
