"""CvT-Bench: a tabular benchmark of trained CvTs, and queries on it.

A table ("cvt-bench/1", docs/bench.md) records, for architectures sampled from a search space
and trained with one pinned recipe, every epoch's accuracy and time and each architecture's
costs. Query it without training anything::

    from cvt_nas.bench import load
    b = load("benchmarks/cvtbench/cvt_micro")
    r = b.query(b.archs.arch_id[0], epoch=2)      # a Result: val_top1, time_s, macs, ...
    b.lookup_config(cfg)                          # a CvTConfig (or params) -> its arch_id
    b.nearest(params)                             # closest table architecture, and how far
    table_front(b, {"val_top1": "max", "macs": "min"})  # the brute-force front, hypervolume
    rank_agreement(b)                             # Kendall tau of early vs final epochs
    seed_agreement(b)                             # the seed noise those are read against
    summary(b)                                    # what it holds (`cvt-nas bench show DIR`)

``cvt-nas search SPACE.yaml --backend table:DIR`` answers a search's trials from a table
(`cvt_nas.search.table_backend`). Torch-free.
"""

from __future__ import annotations

from cvt_nas.bench.analysis import (
    Front,
    cpu_shares,
    kendall_tau,
    rank_agreement,
    seed_agreement,
    summary,
    table_front,
)
from cvt_nas.bench.table import FORMAT, Bench, Result, load

__all__ = ["FORMAT", "Bench", "Front", "Result", "cpu_shares", "kendall_tau", "load",
           "rank_agreement", "seed_agreement", "summary", "table_front"]
