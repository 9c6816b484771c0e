"""`cvt-nas compare DIR DIR ...`: overlay Pareto fronts and any-time hypervolume of studies."""

from __future__ import annotations

import argparse

import pandas as pd

from cvt_nas.results import (
    atomic_path,
    atomic_write_text,
    default_reference,
    hypervolume,
    ideal_box,
    load,
    load_meta,
    pareto_front,
    pareto_table,
    parse_objectives,
    plot_compare,
    study_objectives,
    to_markdown,
)
from cvt_nas.results.io import check_out_dir, study_labels


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="overlay fronts and plot hypervolume vs trials and time for studies",
        description="Compare search strategies: one plot with every study's Pareto front, the "
        "hypervolume after each finished trial and against elapsed wall time, all with one "
        "shared reference point; plus a summary table.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results/<study>/ directories")
    p.add_argument("--names", help="comma-separated labels, one per DIR (default: study names)")
    p.add_argument("--objective", action="append", metavar="NAME:max|min",
                   help="objective and direction (repeat; default: the studies' study.yaml)")
    p.add_argument("--ref", action="append", metavar="NAME=VALUE",
                   help="hypervolume reference value per objective (default: 10%% past the "
                   "worst complete trial of all studies)")
    p.add_argument("--out", default="results/compare",
                   help="where to write compare.png, compare.md, hypervolume.csv, fronts.csv "
                   "(default: results/compare)")
    p.set_defaults(func=run)


def _objectives(args: argparse.Namespace) -> dict[str, str]:
    if args.objective is not None:
        return parse_objectives(args.objective, "--objective")
    found = {str(d): study_objectives(d) for d in args.dirs}
    distinct = {tuple(o.items()) for o in found.values()}
    if len(distinct) > 1:
        raise ValueError(f"the studies have different objectives {found}; choose one set with "
                         "--objective NAME:max|min")
    return next(iter(found.values()))


def _reference(items: list[str] | None, objectives: dict[str, str], frame: pd.DataFrame
               ) -> dict[str, float]:
    ref = default_reference(frame, objectives) if not items or \
        len(items) < len(objectives) else {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in objectives:
            raise ValueError(f"--ref {item!r}: expected NAME=VALUE with NAME one of "
                             f"{list(objectives)}")
        ref[name] = float(value)
    return ref


def run(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out)
    objectives = _objectives(args)
    frames = [load(d) for d in args.dirs]
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(args.dirs):
            raise ValueError(f"--names has {len(names)} labels for {len(args.dirs)} directories")
    else:
        stored = [load_meta(d).get("study") or (str(f["study"].iloc[0]) if len(f) else None)
                  for d, f in zip(args.dirs, frames, strict=True)]
        names = study_labels(args.dirs, stored)
    by_name = dict(zip(names, frames, strict=True))
    ref = _reference(args.ref, objectives, pd.concat(frames, ignore_index=True))

    box = ideal_box(pd.concat(frames, ignore_index=True), objectives, ref)
    histories = plot_compare(by_name, objectives, ref, out / "compare.png", scale=box)
    rows, fronts = [], []
    y = next((k for k, d in objectives.items() if d == "max"), next(iter(objectives)))
    for name, df in by_name.items():
        front = pareto_front(df, objectives)
        fronts.append(pareto_table(front, objectives, full=True).assign(study=name))
        hist = histories[name]
        status = df["status"] if "status" in df.columns else pd.Series(dtype=str)
        rows.append({
            "study": name, "trials": len(df), "complete": int((status == "complete").sum()),
            "front": len(front), "hypervolume": (hv := hypervolume(df, objectives, ref)),
            "hv fraction": hv / box if box else float("nan"),
            f"best {y}": pd.to_numeric(front[y]).max() if len(front) else float("nan"),
            "elapsed (s)": float(hist["elapsed_s"].max()) if len(hist) else 0.0,
        })
    summary = pd.DataFrame(rows)
    curves = pd.concat([h.assign(study=n, hv_fraction=h["hypervolume"] / box if box else None)
                        for n, h in histories.items()], ignore_index=True)
    with atomic_path(out / "hypervolume.csv") as tmp:
        curves.to_csv(tmp, index=False)
    with atomic_path(out / "fronts.csv") as tmp:
        pd.concat(fronts, ignore_index=True).to_csv(tmp, index=False)
    ref_text = ", ".join(f"{k}={v:.6g}" for k, v in ref.items())
    text = to_markdown(summary, floatfmt=".4g",
                       title=f"Comparison ({', '.join(f'{k} {d}' for k, d in objectives.items())}"
                       f"; hypervolume reference {ref_text})")
    atomic_write_text(out / "compare.md", text + "\n")
    print(text)
    print(f"wrote compare.png, compare.md, hypervolume.csv, fronts.csv in {out}")
    return 0
