"""Compare search algorithms on a CvT-Bench table, in simulation: one command, one YAML file.

    python experiments/search_algorithms.py                       # experiments/search_algorithms.yaml
    python experiments/search_algorithms.py --table DIR --seeds 3 --trials 30 --out /tmp/study

Every method (a sampler, optionally a pruner and a number of asynchronous ``workers``, default
1) runs ``seeds`` simulated searches of ``trials`` trials each
(`cvt_nas.search.table_backend.simulate`: in memory, answered from the table, with simulated
time; with several workers, trials overlap in simulated time and each ask sees only the trials
finished by then). A search's quality after each trial, and at each simulated second, is its
hypervolume divided by the hypervolume of the table's own Pareto front as that search sees it
(brute force over every architecture's run that answers the search's seed; with one seed per
architecture that is the whole table's front), at one reference point for all
(`cvt_nas.bench.table_front`). So 1.0 means the search found the best front it could find.
Methods are compared by the mean over seeds with 95 % bootstrap confidence bands. The table's
rank agreement (Kendall tau of each early epoch against the final one) and its seed noise
(`cvt_nas.bench.seed_agreement`: the spread of one architecture's seeds, and the Kendall tau
between seeds) are written beside.

Writes OUT/: table.md and table.csv (one row per method), curves.csv (mean and band per
method, against trials and against simulated time), runs.csv (every search's final numbers),
hv.png (both curves), kendall.csv, noise.csv, and README.md saying which method wins at which
budget.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvt_nas.bench import Bench, Front, load, rank_agreement, seed_agreement, table_front
from cvt_nas.common import fmt
from cvt_nas.common.atomic import atomic_path, atomic_write_text
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.results import (
    hypervolume,
    hypervolume_history,
    parse_objectives,
    records_frame,
    to_markdown,
)
from cvt_nas.search.optuna_backend import SearchRun
from cvt_nas.search.table_backend import TableRunner, TableSpace, simulate, table_space
from cvt_nas.search.trial import TrialSettings
from cvt_nas.space import load_space

DEFAULT = Path(__file__).with_suffix(".yaml")
KEYS = ("table", "space", "out", "objectives", "trials", "seeds", "methods")
METHOD_KEYS = ("sampler", "pruner", "population_size", "workers")
BUDGETS = (0.1, 0.25, 0.5, 1.0)  # fractions of the trial budget (and of random's time)
TIME_POINTS = 200
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str
    pruner: str = "none"
    population_size: int | None = None
    workers: int = 1  # simulated asynchronous workers (`cvt_nas.search.table_backend`)


def read_config(path: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The study file, with command-line overrides; unknown keys are one-line errors."""
    data = read_yaml(path, "study file", f"keys: {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(KEYS)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: key(s) {missing} missing")
    for key in ("trials", "seeds"):
        v = data[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{path}: {key} (or --{key}): {v!r}; give a whole number >= 1")
    if not isinstance(data["methods"], dict) or not data["methods"]:
        raise ValueError(f"{path}: methods: give a mapping of names to {{sampler: ..., pruner: "
                         "...}}, one of them 'random'")
    methods = []
    for name, spec in data["methods"].items():
        if spec is not None and not isinstance(spec, dict):
            raise ValueError(f"{path}: methods.{name}: {spec!r}; give a mapping such as "
                             "{sampler: tpe}")
        bad = sorted(set(spec or {}) - set(METHOD_KEYS))
        if bad or "sampler" not in (spec or {}):
            raise ValueError(f"{path}: methods.{name}: give sampler (and optionally pruner, "
                             f"population_size, workers); unknown {bad}")
        workers = spec.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"{path}: methods.{name}.workers: {workers!r}; give a whole "
                             "number >= 1 (simulated workers)")
        methods.append(Method(name, **spec))
    if not any(m.name == "random" for m in methods):
        raise ValueError(f"{path}: methods: a method named 'random' is the baseline; add it")
    data["methods"] = methods
    data["objectives"] = parse_objectives(data["objectives"], f"{path}: objectives")
    return data


def seen_front(bench: Bench, seed: int, objectives: dict[str, str], front: Front) -> float:
    """Hypervolume of the table as a search with ``seed`` sees it: each sampled architecture's
    answering run (`TableRunner.answering_seed`), brute force, at the common reference. Named
    architectures are left out: a search never lands on them (`Bench.nearest`)."""
    runner, final = TableRunner(bench, seed), bench.final()
    sampled = bench.archs.loc[bench.archs["source"] == "sample", "arch_id"]
    final = final[final["arch_id"].isin(sampled)]
    answer = {a: runner.answering_seed(a) for a in final["arch_id"].unique()}
    rows = final[[answer[a] == s for a, s in zip(final["arch_id"], final["seed"], strict=True)]]
    return hypervolume(rows, objectives, front.reference)


def run_all(space: TableSpace, bench: Bench, objectives: dict[str, str], methods: list[Method],
            seeds: int, trials: int, front: Front) -> dict[str, list[pd.DataFrame]]:
    """Every method's searches: per seed, the normalized hypervolume after each trial."""
    out: dict[str, list[pd.DataFrame]] = {}
    best = [seen_front(bench, seed, objectives, front) for seed in range(seeds)]
    for m in methods:
        start = time.perf_counter()
        out[m.name] = []
        for seed in range(seeds):
            settings = TrialSettings(study=f"{m.name}-{seed}", backend="table",
                                     objectives=objectives)
            run = SearchRun(space=space, settings=settings, storage_url="memory",
                            trials=trials, sampler=m.sampler, pruner=m.pruner, seed=seed,
                            population_size=m.population_size, heartbeat=None,
                            runner=TableRunner(bench, seed))
            df = records_frame(simulate(run, m.workers))
            hist = hypervolume_history(df, objectives, front.reference)
            hist["hv"] = hist["hypervolume"] / best[seed]
            status = df.set_index("trial")["status"].loc[hist["trial"]].to_numpy()  # its order
            hist["completed"] = np.cumsum(status == "complete")
            hist["pruned"] = np.cumsum(status == "pruned")
            out[m.name].append(hist)
        print(f"  {m.name}: {seeds} searches x {trials} trials in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def by_trials(hists: list[pd.DataFrame], trials: int) -> np.ndarray:
    """(seeds, trials) normalized hypervolume after trial 1..trials (last value carried)."""
    rows = []
    for h in hists:
        hv = h["hv"].to_numpy()
        rows.append(np.r_[hv, np.full(max(0, trials - len(hv)), hv[-1] if len(hv) else 0.0)]
                    [:trials])
    return np.array(rows)


def by_time(hists: list[pd.DataFrame], grid: np.ndarray) -> np.ndarray:
    """(seeds, len(grid)) normalized hypervolume reached by each simulated time."""
    rows = []
    for h in hists:
        t, hv = h["elapsed_s"].to_numpy(), h["hv"].to_numpy()
        idx = np.searchsorted(t, grid, side="right") - 1
        rows.append(np.where(idx >= 0, hv[np.clip(idx, 0, None)], 0.0))
    return np.array(rows)


def band(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Mean over seeds (axis 0) and its 95 % percentile-bootstrap interval."""
    n = values.shape[0]
    means = values[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1)
    return values.mean(axis=0), np.percentile(means, 2.5, axis=0), np.percentile(
        means, 97.5, axis=0)


def first_reach(curve: np.ndarray, target: float) -> int | None:
    """Index of the first point where ``curve`` reaches ``target`` (None if never)."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return int(hit[0]) if len(hit) else None


def summarize(runs: dict[str, list[pd.DataFrame]], methods: list[Method], trials: int
              ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The per-method table, the curves and the facts the README states."""
    total_time = {m: np.array([h["elapsed_s"].iloc[-1] for h in hs]) for m, hs in runs.items()}
    grid = np.linspace(0.0, max(float(t.max()) for t in total_time.values()), TIME_POINTS)
    curves, rows = [], []
    trial_mean: dict[str, np.ndarray] = {}
    time_mean: dict[str, np.ndarray] = {}
    for m in methods:
        hv_n = by_trials(runs[m.name], trials)
        hv_t = by_time(runs[m.name], grid)
        # one bootstrap stream per method, so its bands do not depend on the other methods
        rng = np.random.default_rng([0, zlib.crc32(m.name.encode())])
        (mean_n, lo_n, hi_n), (mean_t, lo_t, hi_t) = band(hv_n, rng), band(hv_t, rng)
        trial_mean[m.name], time_mean[m.name] = mean_n, mean_t
        curves += [{"method": m.name, "axis": "trials", "x": i + 1, "mean": a, "low": b,
                    "high": c} for i, (a, b, c) in enumerate(zip(mean_n, lo_n, hi_n, strict=True))]
        curves += [{"method": m.name, "axis": "sim_time_s", "x": float(x), "mean": a, "low": b,
                    "high": c} for x, a, b, c in zip(grid, mean_t, lo_t, hi_t, strict=True)]
        row: dict[str, Any] = {"method": m.name, "sampler": m.sampler, "pruner": m.pruner,
                               "workers": m.workers, "seeds": len(runs[m.name])}
        for f in BUDGETS:
            k = max(1, int(round(f * trials)))
            row[f"hv@{k}"] = mean_n[k - 1]
            row[f"ci@{k}"] = f"{lo_n[k - 1]:.3f}-{hi_n[k - 1]:.3f}"
        row["sim_h"] = float(total_time[m.name].mean()) / 3600
        row["completed"] = float(np.mean([h["completed"].iloc[-1] for h in runs[m.name]]))
        row["pruned"] = float(np.mean([h["pruned"].iloc[-1] for h in runs[m.name]]))
        rows.append(row)
    table = pd.DataFrame(rows)
    target = float(trial_mean["random"][-1])
    random_time = float(total_time["random"].mean())
    reach_n, reach_t = [], []
    for m in methods:
        hit_n = first_reach(trial_mean[m.name], target)
        reach_n.append(None if hit_n is None else hit_n + 1)
        hit_t = first_reach(time_mean[m.name], target)
        reach_t.append(None if hit_t is None else float(grid[hit_t]) / random_time)
    table["trials_to_random_final"] = reach_n
    table["time_to_random_final"] = reach_t  # as a fraction of random's mean total time
    facts: dict[str, Any] = {"target": target, "random_time_s": random_time, "grid": grid,
                             "trial_mean": trial_mean, "time_mean": time_mean}
    return table, pd.DataFrame(curves), facts


def plot(curves: pd.DataFrame, methods: list[Method], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    axes = fig.subplots(1, 2, sharey=True)
    for i, m in enumerate(methods):
        color = f"C{i}"
        for ax, axis, scale in ((axes[0], "trials", 1.0), (axes[1], "sim_time_s", 3600.0)):
            c = curves[(curves["method"] == m.name) & (curves["axis"] == axis)]
            x = c["x"].to_numpy() / scale
            ax.plot(x, c["mean"], color=color, label=m.name, lw=1.6)
            ax.fill_between(x, c["low"], c["high"], color=color, alpha=0.18, lw=0)
    axes[0].set(xlabel="trials", ylabel="hypervolume / table front's", title="against trials")
    axes[1].set(xlabel="simulated wall-clock time (h)", title="against simulated time")
    axes[0].legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _winner(vals: Mapping[str, float]) -> str:
    """The best mean (ties named together), with random's for scale."""
    top = max(vals.values())
    best = [m for m, v in vals.items() if v >= top - 1e-9]
    if len(best) == len(vals):
        return f"all methods tie ({top:.3f})"
    return f"**{', '.join(best)}** ({top:.3f}{' each' if len(best) > 1 else ''}; random " \
           f"{vals['random']:.3f})"


def readme(cfg: dict[str, Any], bench: Bench, front: Front, table: pd.DataFrame,
           facts: dict[str, Any], kendall: pd.DataFrame, noise: pd.DataFrame,
           command: str) -> str:
    """Plain statements from the numbers: who wins at which budget, the half-budget target,
    how early epochs rank, and the seed noise that ranking is read against."""
    trials, methods = int(cfg["trials"]), [m.name for m in cfg["methods"]]
    lines = [f"# Search algorithms on CvT-Bench `{bench.manifest.get('space')}` (simulated)", "",
             f"Generated by `{command}`. Table `{cfg['table']}`: "
             f"{len(bench.archs)} architectures, {front.runs} complete runs of "
             f"{bench.epochs} epochs; its full front has {len(front.points)} points. "
             f"Objectives {dict(cfg['objectives'])}; {table['seeds'].iloc[0]} seeds x {trials} "
             "trials per method; hypervolume is divided by that of the table's front as the search "
             "sees it (each architecture answered by one seed's run; 1.0 = that whole front "
             "found); bands are 95 % bootstrap intervals of the mean over seeds.", "",
             "## Who wins at which budget", ""]
    for f in BUDGETS:
        k = max(1, int(round(f * trials)))
        vals = {m: float(facts["trial_mean"][m][k - 1]) for m in methods}
        lines.append(f"- after {k} trials: {_winner(vals)}")
    grid = facts["grid"]
    if (table["workers"] > 1).any():
        lines.append("- (simulated time is wall-clock: a method with W workers runs W trials at "
                     "once, on W machines)")
    for f in BUDGETS:
        t = f * facts["random_time_s"]
        j = min(len(grid) - 1, int(np.searchsorted(grid, t, side="right")) - 1)
        vals = {m: float(facts["time_mean"][m][max(j, 0)]) for m in methods}
        lines.append(f"- after {fmt.duration(t)} of simulated time ({f:.0%} of random's): "
                     f"{_winner(vals)}")
    final_col = f"hv@{trials}"
    lines += ["", "## The half-budget target", "",
              f"Random search's final mean hypervolume is {facts['target']:.3f} ({trials} trials, "
              f"{fmt.duration(facts['random_time_s'])} of simulated time). The target: another "
              "method reaches it in at most half of that budget.", ""]
    met = []
    for r in table[table["method"] != "random"].itertuples():
        k, frac = r.trials_to_random_final, r.time_to_random_final
        if k is None or pd.isna(k):
            lines.append(f"- {r.method}: does not reach it in {trials} trials (final "
                         f"{table.loc[r.Index, final_col]:.3f})")
            continue
        when = f"after {int(k)} trials ({k / trials:.0%})"
        by_time = frac is not None and not pd.isna(frac) and frac <= 0.5
        if frac is not None and not pd.isna(frac):
            when += f" and {frac:.0%} of random's simulated time"
            if r.workers > 1:  # W machines against one: not the same compute
                when += (f" (on {r.workers} workers against random's one, so not a same-compute "
                         "budget: it does not count for the target)")
                by_time = False
        lines.append(f"- {r.method}: reaches it {when}")
        if k <= trials / 2 or by_time:
            met.append(r.method)
    lines += ["", f"The target is **{'met by ' + ', '.join(met) if met else 'not met'}**.",
              "", "## Do early epochs rank like the last one?", ""]
    if kendall.empty:
        lines.append("The table has no seed with two or more complete runs: nothing to rank.")
    for r in kendall.itertuples():
        lines.append(f"- seed {r.seed}, epoch {r.epoch} vs epoch {r.final_epoch} "
                     f"({r.archs} architectures): Kendall tau {r.kendall_tau:.2f}, "
                     f"{r.concordant:.0%} of pairs ordered alike, the best architecture "
                     + ("the same" if r.same_best else "not the same"))
    lines += ["", "## Seed noise", ""]
    if noise.empty:
        lines.append("No architecture has two complete seeds yet: the noise floor is unknown.")
    else:
        lines.append("Architectures trained with several seeds: how far their runs differ, and "
                     "how well two seeds rank them alike. Tau between seeds is how reproducible "
                     "a ranking is at all; an early epoch that agrees with its own seed's last "
                     "one better than that shares the seed's noise with it.")
        lines.append("")
    for r in noise.itertuples():
        tau = ("no two seeds share 2 architectures" if pd.isna(r.kendall_tau)
               else f"Kendall tau between seeds {r.kendall_tau:.2f} (mean of {r.seed_pairs} "
               "seed pairs)")
        lines.append(f"- epoch {r.epoch} ({r.archs} architectures, {r.runs} runs): mean std "
                     f"across seeds {r.seed_std:.2f} points of val top-1, largest spread "
                     f"{r.seed_range:.2f}; {tau}")
    lines += ["", "Files: table.md/table.csv (per method: mean hypervolume and 95 % interval at "
              "10/25/50/100 % of the trials, mean simulated hours, trials and time to reach "
              "random's final value), curves.csv, runs.csv, hv.png, kendall.csv, noise.csv.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT), help="the study YAML")
    parser.add_argument("--table", help="override the table directory")
    parser.add_argument("--space", help="override the space file (the table's own)")
    parser.add_argument("--out", help="override the output directory")
    parser.add_argument("--seeds", type=int, help="override seeds per method")
    parser.add_argument("--trials", type=int, help="override trials per search")
    args = parser.parse_args(argv)
    command = " ".join(["python experiments/search_algorithms.py", *(argv or sys.argv[1:])])
    try:
        cfg = read_config(Path(args.config), {"table": args.table, "space": args.space,
                                              "out": args.out,
                                              "seeds": args.seeds, "trials": args.trials})
        bench = load(cfg["table"])
        space = table_space(load_space(cfg["space"]), bench)
        objectives = dict(cfg["objectives"])
        front = table_front(bench, objectives)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"search_algorithms: {exc}", file=sys.stderr)
        return 2
    print(f"{bench}: front of {len(front.points)} points, hypervolume {front.hypervolume:.4g}",
          file=sys.stderr)
    trials, seeds = int(cfg["trials"]), int(cfg["seeds"])
    runs = run_all(space, bench, objectives, cfg["methods"], seeds, trials, front)
    table, curves, facts = summarize(runs, cfg["methods"], trials)
    kendall, noise = rank_agreement(bench), seed_agreement(bench)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    finals = pd.DataFrame([{"method": m, "seed": s, "hv": h["hv"].iloc[-1],
                            "sim_time_s": h["elapsed_s"].iloc[-1],
                            "completed": int(h["completed"].iloc[-1]),
                            "pruned": int(h["pruned"].iloc[-1])}
                           for m, hs in runs.items() for s, h in enumerate(hs)])
    for name, df in (("table.csv", table), ("curves.csv", curves), ("runs.csv", finals),
                     ("kendall.csv", kendall), ("noise.csv", noise)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    atomic_write_text(out / "table.md", to_markdown(
        table, title=f"Search algorithms on {cfg['table']} ({seeds} seeds x {trials} trials)")
        + "\n")
    plot(curves, cfg["methods"], out / "hv.png",
         f"{cfg['table']}: {len(bench.archs)} archs, {seeds} seeds x {trials} trials")
    atomic_write_text(out / "README.md", readme(cfg, bench, front, table, facts, kendall, noise,
                                                 command))
    print(f"wrote {out}/ (README.md, table.md, table.csv, curves.csv, runs.csv, hv.png, "
          "kendall.csv, noise.csv)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
