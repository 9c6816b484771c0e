"""`cvt-nas profile NAME`: params and MACs of a preset with overrides."""

from __future__ import annotations

import argparse
import json

from cvt_nas.commands._common import parse_set, positive_int, set_arg
from cvt_nas.model.presets import get_config
from cvt_nas.model.profiling import profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="params and MACs of a preset (with overrides)")
    p.add_argument("name", help="preset name (see `cvt-nas models`)")
    p.add_argument("--img-size", type=positive_int, help="input size (default: the preset's)")
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", type=set_arg,
                   help="override a field")
    p.add_argument(
        "--method", choices=("analytic", "fvcore", "both"), default="analytic",
        help="analytic (instant, default), fvcore (builds and traces), or both (must agree)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_set(args.set)
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    try:
        cfg = get_config(args.name).replace(**overrides)
    except ValueError as exc:
        if not overrides or "unknown model" in str(exc):
            raise
        flags = " and ".join(f for f, given in (("--set", args.set), ("--img-size", args.img_size),
                                                ("--num-classes", args.num_classes)) if given)
        raise ValueError(f"{flags}: {exc}") from None
    prof = profile(cfg, method=args.method)
    out = {"name": args.name, "arch_id": cfg.arch_id(), "img_size": prof.img_size,
           "params": prof.params, "macs": prof.macs}
    if prof.analytic is not None and prof.fvcore is not None:
        out["macs_analytic"] = prof.analytic.macs
        out["macs_fvcore"] = prof.fvcore.macs
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.name} ({out['arch_id']}) at {prof.img_size}px: "
              f"{prof.params:,} params ({prof.params / 1e6:.2f} M), "
              f"{prof.macs:,} MACs ({prof.macs / 1e9:.3f} G)")
    return 0
