"""Ablation experiments: one YAML per table of the CvT paper -> rows x seeds -> table.

An experiment file (``experiments/*.yaml``) lists the rows of one paper table, each a base preset
plus `CvTConfig` overrides, with the paper's reported values, and two scales: ``paper`` (the
official ImageNet recipe) and ``reduced`` (CPU-feasible). This module loads and validates those
files and turns a row into the model and training configs of a scale; `cvt_nas.ablation.runner` runs
them and `cvt_nas.ablation.table` builds the table. Nothing here imports torch.

Schema (unknown keys are errors naming the file, the key and the allowed keys)::

    name: table7_kv_stride          # output folder name
    title: "Table 7: ..."
    source: "Wu et al. ..."         # where the paper's numbers are from
    claim: "..."                    # what the paper claims, in words
    baseline: b                     # row the deltas are taken against
    columns: [kv_stride]            # descriptive columns each row fills in ``columns``
    scales:
      paper|reduced:
        base: cvt_13                # preset the rows override
        recipe: paper               # `cvt_nas.training.config.get_recipe` name
        train: {...}                # TrainConfig overrides for every row
        seeds: 1                    # default number of seeds
        metric: val_top1            # val_top1 | test_top1: the column reported as top-1
        notes: "..."
    rows:
      - row: a
        label: "k/v stride 1"
        model: {kv_stride: 1}       # CvTConfig overrides at every scale
        train: {}                   # TrainConfig overrides at every scale
        by_scale: {reduced: {model: {...}, train: {...}}}   # extra overrides for one scale
        scales: [paper, reduced]    # scales the row runs at (default: all)
        run: true                   # false: a paper-only reference row, never built or run
        note: "..."
        columns: {kv_stride: 1}
        paper: {params_m: 20, gflops: 6.55, top1: 82.3}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvt_nas.common.names import check_name
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost
from cvt_nas.model.presets import get_config

__all__ = [
    "SCALES",
    "Experiment",
    "Row",
    "Scale",
    "cost_rows",
    "load_experiment",
]

SCALES: tuple[str, ...] = ("paper", "reduced")
METRICS: tuple[str, ...] = ("val_top1", "test_top1")
PAPER_KEYS: tuple[str, ...] = ("params_m", "gflops", "top1")

_TOP_KEYS = {"name": True, "title": True, "source": False, "claim": False, "baseline": True,
             "columns": False, "scales": True, "rows": True}
_SCALE_KEYS = {"base": True, "recipe": True, "train": False, "seeds": False, "metric": False,
               "notes": False}
_ROW_KEYS = {"row": True, "label": True, "model": False, "train": False, "by_scale": False,
             "scales": False, "run": False, "note": False, "columns": False, "paper": False}
_BY_SCALE_KEYS = {"model": False, "train": False}


@dataclass(frozen=True)
class Scale:
    """How the rows run at one scale: base preset, training recipe and overrides, seeds."""

    name: str
    base: str
    recipe: str
    train: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1
    metric: str = "val_top1"
    notes: str = ""


@dataclass(frozen=True)
class Row:
    """One row of a paper table."""

    row: str
    label: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    by_scale: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    scales: tuple[str, ...] = ()  # empty: every scale of the file
    run: bool = True
    note: str = ""
    columns: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)

    def runs_at(self, scale: str) -> bool:
        """Whether the row is built and trained at ``scale`` (paper-only rows never are)."""
        return self.run and (not self.scales or scale in self.scales)

    def model_overrides(self, scale: str) -> dict[str, Any]:
        """`CvTConfig` overrides at ``scale``: the row's, then the scale-specific ones."""
        return {**self.model, **self.by_scale.get(scale, {}).get("model", {})}

    def train_overrides(self, scale: str) -> dict[str, Any]:
        """`TrainConfig` overrides of the row at ``scale`` (on top of the scale's)."""
        return {**self.train, **self.by_scale.get(scale, {}).get("train", {})}


@dataclass(frozen=True)
class Experiment:
    """A paper table as runnable rows; see the module docstring for the YAML schema."""

    name: str
    title: str
    baseline: str
    scales: dict[str, Scale]
    rows: tuple[Row, ...]
    source: str = ""
    claim: str = ""
    columns: tuple[str, ...] = ()
    path: str = ""

    def row(self, key: str) -> Row:
        """The row with letter ``key``."""
        for r in self.rows:
            if r.row == key:
                return r
        raise KeyError(f"{self.path or self.name}: no row {key!r}; rows are "
                       f"{[r.row for r in self.rows]}")

    def runnable(self, scale: str) -> list[Row]:
        """Rows that are trained at ``scale``, in table order."""
        return [r for r in self.rows if r.runs_at(scale)]

    def model_config(self, row: str | Row, scale: str) -> CvTConfig:
        """The row's architecture at ``scale``: the scale's base preset plus the row's overrides.

        At the paper scale this is the config whose params/MACs the table reports (224 px and
        1000 classes unless the row overrides ``img_size``).
        """
        r = self.row(row) if isinstance(row, str) else row
        if not r.run:
            raise ValueError(f"{self.path}: row {r.row!r} is a paper-only reference row "
                             f"({r.note or 'run: false'}); it has no config")
        sc = self._scale(scale)
        try:
            return get_config(sc.base).replace(**r.model_overrides(scale))
        except ValueError as exc:
            raise ValueError(f"{self.path}: row {r.row!r} at scale {scale!r}: {exc}") from None

    def train_config(self, row: str | Row, scale: str, seed: int, **overrides: Any) -> Any:
        """The row's `TrainConfig` at ``scale`` for one seed (imports the trainer's config)."""
        from cvt_nas.training.config import get_recipe

        r = self.row(row) if isinstance(row, str) else row
        sc = self._scale(scale)
        data = {**sc.train, **r.train_overrides(scale), **overrides, "seed": int(seed)}
        img = r.model_overrides(scale).get("img_size")
        if img is not None and "img_size" not in r.train_overrides(scale):
            data["img_size"] = img  # a row that sets the model's size trains at that size
        try:
            return get_recipe(sc.recipe, **data)
        except ValueError as exc:
            raise ValueError(f"{self.path}: row {r.row!r} at scale {scale!r}: {exc}") from None

    def check(self, scale: str | None = None, train_overrides: Mapping[str, Any] | None = None
              ) -> None:
        """Build every runnable row's model and training config (at ``scale``, or every scale)
        as a run would, with ``train_overrides`` (``cvt-nas ablate --set``), so a bad row or
        field is one clear error before any study is opened, never a failed trial in it.

        Raises:
            ValueError: the file, the row, the scale and the rule.
        """
        from cvt_nas.training.datasets import BUILTIN, adapt_config

        for name in [scale] if scale is not None else list(self.scales):
            for r in self.runnable(name):
                model = self.model_config(r, name)
                train = self.train_config(r, name, 0, **dict(train_overrides or {}))
                if train.dataset in BUILTIN:  # an image folder may be elsewhere until a run
                    try:
                        adapt_config(model, train)
                    except ValueError as exc:
                        raise ValueError(f"{self.path}: row {r.row!r} at scale {name!r}: "
                                         f"{exc}") from None

    def _scale(self, scale: str) -> Scale:
        if scale not in self.scales:
            raise ValueError(f"{self.path}: no scale {scale!r}; this file has "
                             f"{sorted(self.scales)}")
        return self.scales[scale]


# -- loading --------------------------------------------------------------------------------


def _check_keys(data: Any, allowed: Mapping[str, bool], where: str, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(map(str, set(data) - set(allowed)))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    missing = sorted(k for k, required in allowed.items() if required and k not in data)
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} in {where}")
    return data


def _mapping(value: Any, where: str, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where} must be a mapping, got {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{path}: {where}: keys must be field names, got {bad[0]!r}")
    return dict(value)


class _Scales(dict[str, Scale]):
    """An experiment's scales; looking up one the file lacks is a KeyError that names the file
    and its scales (the command line prints it as one line), wherever the lookup happens."""

    def __init__(self, path: str, scales: Mapping[str, Scale]) -> None:
        super().__init__(scales)
        self.path = path

    def __missing__(self, key: str) -> Scale:
        raise KeyError(f"{self.path}: no scale {key!r}; this file has {sorted(self)}")


def _names(value: Any, where: str, path: str) -> tuple[str, ...]:
    """A list of names (``columns``, a row's ``scales``); absent is empty."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: {where} must be a list of names, got {value!r}")
    return tuple(value)


def _load_scale(name: str, data: Any, path: str) -> Scale:
    where = f"scales.{name}"
    if name not in SCALES:
        raise ValueError(f"{path}: unknown scale {name!r}; allowed: {list(SCALES)}")
    d = _check_keys(data, _SCALE_KEYS, where, path)
    seeds = d.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"{path}: {where}.seeds must be an integer >= 1, got {seeds!r}")
    metric = d.get("metric", "val_top1")
    if metric not in METRICS:
        raise ValueError(f"{path}: {where}.metric {metric!r}; allowed: {list(METRICS)}")
    try:
        get_config(str(d["base"]))
    except ValueError as exc:
        raise ValueError(f"{path}: {where}.base: {exc}") from None
    return Scale(name=name, base=str(d["base"]), recipe=str(d["recipe"]),
                 train=_mapping(d.get("train"), f"{where}.train", path), seeds=seeds,
                 metric=metric, notes=str(d.get("notes") or "").strip())


def _load_row(data: Any, index: int, path: str) -> Row:
    d = _check_keys(data, _ROW_KEYS, f"rows[{index}]", path)
    where = f"row {d['row']!r}"
    by_scale: dict[str, dict[str, dict[str, Any]]] = {}
    for scale, value in _mapping(d.get("by_scale"), f"{where}.by_scale", path).items():
        if scale not in SCALES:
            raise ValueError(f"{path}: {where}.by_scale: unknown scale {scale!r}; "
                             f"allowed: {list(SCALES)}")
        v = _check_keys(value, _BY_SCALE_KEYS, f"{where}.by_scale.{scale}", path)
        by_scale[scale] = {k: _mapping(v.get(k), f"{where}.by_scale.{scale}.{k}", path)
                           for k in ("model", "train")}
    scales = _names(d.get("scales"), f"{where}.scales", path)
    bad = [s for s in scales if s not in SCALES]
    if bad:
        raise ValueError(f"{path}: {where}.scales: unknown scale(s) {bad}; allowed: {list(SCALES)}")
    paper = _mapping(d.get("paper"), f"{where}.paper", path)
    unknown = sorted(map(str, set(paper) - set(PAPER_KEYS)))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} in {where}.paper; "
                         f"allowed: {list(PAPER_KEYS)}")
    for key, value in paper.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: {where}.paper.{key} must be a number, got {value!r}")
    run = d.get("run", True)
    if not isinstance(run, bool):
        raise ValueError(f"{path}: {where}.run must be true or false, got {run!r}")
    return Row(row=str(d["row"]), label=str(d["label"]),
               model=_mapping(d.get("model"), f"{where}.model", path),
               train=_mapping(d.get("train"), f"{where}.train", path), by_scale=by_scale,
               scales=scales, run=run, note=str(d.get("note") or ""),
               columns=_mapping(d.get("columns"), f"{where}.columns", path),
               paper={k: float(v) for k, v in paper.items()})


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate an experiment YAML (``yaml.safe_load``).

    Every runnable row's model and training config is built at every scale it runs at
    (`Experiment.check`), so an impossible architecture or a bad training field fails here with
    the file, the row and the rule, not mid-run.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad YAML, unknown or missing keys, unknown preset/scale/baseline, or a row
            whose overrides give an invalid `CvTConfig`.
    """
    p = Path(path)
    data = read_yaml(p, "experiment file", "see experiments/*.yaml", mapping=False)
    where = str(p)
    d = _check_keys(data, _TOP_KEYS, "the top level", where)
    scales = _Scales(where, {name: _load_scale(name, value, where)
                             for name, value in _mapping(d["scales"], "scales", where).items()})
    if not isinstance(d["rows"], list) or not d["rows"]:
        raise ValueError(f"{where}: rows must be a non-empty list")
    rows = tuple(_load_row(r, i, where) for i, r in enumerate(d["rows"]))
    letters = [r.row for r in rows]
    dupes = sorted({x for x in letters if letters.count(x) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate row(s) {dupes}")
    columns = _names(d.get("columns"), "columns", where)
    for r in rows:
        extra = sorted(map(str, set(r.columns) - set(columns)))
        if extra:
            raise ValueError(f"{where}: row {r.row!r} fills column(s) {extra} not listed in "
                             f"columns {list(columns)}")
        missing = [s for s in r.scales if s not in scales]
        if missing:
            raise ValueError(f"{where}: row {r.row!r} runs at scale(s) {missing} that the file "
                             f"does not define")
    name = d["name"]
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    check_name(name, f"{where}: name")  # it names the table folder and the study
    exp = Experiment(name=name, title=str(d["title"]), baseline=str(d["baseline"]),
                     scales=scales, rows=rows, source=str(d.get("source") or ""),
                     claim=str(d.get("claim") or "").strip(), columns=columns, path=where)
    if exp.baseline not in letters:
        raise ValueError(f"{where}: baseline: no row {exp.baseline!r}; rows are {letters}")
    base = exp.row(exp.baseline)
    if not base.run:
        raise ValueError(f"{where}: baseline row {base.row!r} is paper-only (run: false)")
    exp.check()
    return exp


# -- costs ------------------------------------------------------------------------------------


def row_cost(exp: Experiment, row: Row, scale: str = "paper") -> Cost | None:
    """Exact params/MACs of a row's architecture at ``scale`` (None for paper-only rows)."""
    if scale not in exp.scales or not row.runs_at(scale):
        return None
    return analytic_cost(exp.model_config(row, scale))


def cost_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One dict per row: our exact paper-scale params/MACs next to the paper's, with the
    relative error (ours / paper - 1). Torch-free and instant; what ``--costs-only`` prints.
    """
    out = []
    for r in exp.rows:
        cost = row_cost(exp, r, "paper")
        rec: dict[str, Any] = {"row": r.row, "label": r.label, **{c: r.columns.get(c)
                                                                  for c in exp.columns}}
        rec["params"] = cost.params if cost else None
        rec["macs"] = cost.macs if cost else None
        rec["img_size"] = cost.img_size if cost else None
        rec["paper_params_m"] = r.paper.get("params_m")
        rec["paper_gflops"] = r.paper.get("gflops")
        rec["paper_top1"] = r.paper.get("top1")
        rec["params_err"] = (cost.params / 1e6 / rec["paper_params_m"] - 1
                             if cost and rec["paper_params_m"] else None)
        rec["macs_err"] = (cost.macs / 1e9 / rec["paper_gflops"] - 1
                           if cost and rec["paper_gflops"] else None)
        rec["note"] = r.note
        out.append(rec)
    return out
