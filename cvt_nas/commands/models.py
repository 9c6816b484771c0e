"""`cvt-nas models`: the presets with params and MACs (analytic, at each preset's size)."""

from __future__ import annotations

import argparse
import json

from cvt_nas.model.cost import analytic_cost
from cvt_nas.model.presets import PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the presets with params and MACs")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.json:
        print(f"{'name':<14} {'img':>4} {'classes':>7} {'params':>14} {'MACs':>16} {'GMACs':>8}")
    for name, cfg in PRESETS.items():
        cost = analytic_cost(cfg)
        row = {"name": name, "img_size": cfg.img_size, "num_classes": cfg.num_classes,
               "params": cost.params, "macs": cost.macs}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:<14} {cfg.img_size:>4} {cfg.num_classes:>7} {cost.params:>14,} "
                  f"{cost.macs:>16,} {cost.gmacs:>8.3f}")
    return 0
