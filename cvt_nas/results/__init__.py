"""Trial records, results directories, Pareto fronts, hypervolume, tables and plots.

One trial-record schema serves the Optuna and Ray Tune backends and ablation runs (see
`cvt_nas.results.records`). Typical use::

    from cvt_nas import results
    df = results.load("results/cvt_micro")
    front = results.pareto_front(df, {"val_top1": "max", "macs": "min"})
    print(results.to_markdown(results.pareto_table(front, {"val_top1": "max", "macs": "min"})))

Nothing here imports torch itself (``import cvt_nas`` does, for the model).
"""

from __future__ import annotations

from cvt_nas.common.atomic import atomic_path, atomic_write_text
from cvt_nas.results.importers import (
    StudyTables,
    from_optuna,
    from_ray,
    read_study,
    study_records,
)
from cvt_nas.results.io import (
    DEFAULT_OBJECTIVES,
    load,
    load_epochs,
    load_many,
    load_meta,
    package_versions,
    study_objectives,
    write_outputs,
)
from cvt_nas.results.objectives import OBJECTIVE_NAMES, check_objectives, parse_objectives
from cvt_nas.results.pareto import (
    default_reference,
    hypervolume,
    hypervolume_history,
    hypervolume_points,
    ideal_box,
    nondominated_ranks,
    pareto_front,
    pareto_rank,
)
from cvt_nas.results.plots import plot_compare, plot_pareto
from cvt_nas.results.records import (
    EPOCH_COLUMNS,
    STATUSES,
    TRAIN_PREFIX,
    arch_columns,
    epochs_frame,
    history_rows,
    make_record,
    records_frame,
    reused_record,
)
from cvt_nas.results.tables import arch_string, pareto_table, to_latex, to_markdown

__all__ = [
    "DEFAULT_OBJECTIVES",
    "EPOCH_COLUMNS",
    "OBJECTIVE_NAMES",
    "STATUSES",
    "TRAIN_PREFIX",
    "StudyTables",
    "arch_columns",
    "arch_string",
    "atomic_path",
    "atomic_write_text",
    "check_objectives",
    "default_reference",
    "epochs_frame",
    "from_optuna",
    "from_ray",
    "history_rows",
    "hypervolume",
    "hypervolume_history",
    "hypervolume_points",
    "ideal_box",
    "load",
    "load_epochs",
    "load_many",
    "load_meta",
    "make_record",
    "nondominated_ranks",
    "package_versions",
    "pareto_front",
    "pareto_rank",
    "pareto_table",
    "parse_objectives",
    "plot_compare",
    "plot_pareto",
    "read_study",
    "records_frame",
    "reused_record",
    "study_objectives",
    "study_records",
    "to_latex",
    "to_markdown",
    "write_outputs",
]
