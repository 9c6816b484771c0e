"""`cvt-nas report DIR`: regenerate a results directory's tables and plots from what is stored."""

from __future__ import annotations

import argparse

from cvt_nas.results import (
    load,
    load_epochs,
    load_meta,
    pareto_front,
    pareto_table,
    parse_objectives,
    study_objectives,
    to_latex,
    to_markdown,
    write_outputs,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="rewrite trials/pareto tables, pareto.png and study.yaml of a results dir",
        description="Regenerate trials.csv/.parquet, pareto.csv/.md, pareto.png and study.yaml "
        "from the stored trials table (and epochs.parquet), then print the Pareto table.",
    )
    p.add_argument("dir", help="a results/<study>/ directory")
    p.add_argument("--objective", action="append", metavar="NAME:max|min",
                   help="objective column and direction (repeat; default: study.yaml's)")
    p.add_argument("--latex", action="store_true", help="print the Pareto table as LaTeX")
    p.add_argument("--all-ranks", action="store_true",
                   help="print every complete trial with its Pareto rank, not only the front")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trials = load(args.dir)
    objectives = (parse_objectives(args.objective, "--objective") if args.objective is not None
                  else study_objectives(args.dir))
    write_outputs(args.dir, trials, load_epochs(args.dir), objectives, load_meta(args.dir))
    front = pareto_front(trials, objectives, all_ranks=args.all_ranks)
    table = pareto_table(front, objectives)
    if args.all_ranks:
        table.insert(0, "rank", front["pareto_rank"].to_numpy())
    counts = trials["status"].value_counts() if "status" in trials.columns else {}
    summary = ", ".join(f"{int(n)} {s}" for s, n in counts.items())
    print(f"{args.dir}: {len(trials)} trials ({summary}); objectives "
          + ", ".join(f"{k} {d}" for k, d in objectives.items()))
    print(to_latex(table) if args.latex else to_markdown(table))
    print(f"wrote trials.csv, trials.parquet, epochs.parquet, pareto.csv, pareto.md, pareto.png, "
          f"study.yaml in {args.dir}")
    return 0
