"""Analyse a search's results directory with pandas: status counts, the Pareto table, what the
front trials have in common, hypervolume, and learning curves of the front.

Run after the README's main command::

    cvt-nas search search_spaces/cvt_micro.yaml      # writes results/cvt_micro/
    python experiments/analyse_results.py             # or: ... results/other_study --latex

Everything below uses the public API of `cvt_nas.results`; the same frame can be rebuilt from
the Optuna storage alone with ``results.from_optuna("sqlite:///results/cvt_micro/study.db")``.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cvt_nas import results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default="results/cvt_micro",
                        help="a results/<study>/ directory (default: results/cvt_micro)")
    parser.add_argument("--latex", action="store_true", help="also print the table as LaTeX")
    args = parser.parse_args(argv)

    try:
        df = results.load(args.dir)
    except FileNotFoundError as exc:
        print(f"{exc}\nrun `cvt-nas search search_spaces/cvt_micro.yaml` first", file=sys.stderr)
        return 2
    objectives = results.study_objectives(args.dir)
    print(f"{args.dir}: {len(df)} trials, objectives {objectives}")
    print(df["status"].value_counts().to_string(), end="\n\n")

    # The Pareto table: non-dominated complete trials, best accuracy first.
    front = results.pareto_front(df, objectives)
    table = results.pareto_table(front, objectives)
    print(results.to_markdown(table, title="Pareto front"), end="\n\n")
    if args.latex:
        print(results.to_latex(table, caption=f"Pareto front of {args.dir}"), end="\n\n")

    # Every complete trial with its Pareto rank, and the architecture fields that vary.
    ranked = results.pareto_front(df, objectives, all_ranks=True)
    stage_cols = [c for c in results.arch_columns(int(df["num_stages"].max()))
                  if c in df.columns and df[c].nunique(dropna=True) > 1]
    train_cols = [c for c in df.columns
                  if c.startswith(results.TRAIN_PREFIX) and df[c].nunique(dropna=True) > 1]
    cols = ["trial", "pareto_rank", *objectives, *stage_cols, *train_cols]
    print(results.to_markdown(ranked[list(dict.fromkeys(cols))], floatfmt=".4g",
                              title="All complete trials by Pareto rank"), end="\n\n")

    # Hypervolume against a reference just past the worst complete trial.
    if len(front):
        ref = results.default_reference(df, objectives)
        hv = results.hypervolume(df, objectives, ref)
        box = results.ideal_box(df, objectives, ref)
        print(f"hypervolume {hv:.4g} ({hv / box:.1%} of the ideal box) with reference {ref}")

    # Learning curves of the front trials from the long per-epoch table.
    epochs = results.load_epochs(args.dir)
    curves = epochs[epochs["trial"].isin(front["trial"])]
    if len(curves):
        wide = curves.pivot_table(index="epoch", columns="trial", values="val_top1")
        print("\nval top-1 (%) per epoch of the front trials:")
        print(wide.round(2).to_string())
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 120)
    sys.exit(main())
