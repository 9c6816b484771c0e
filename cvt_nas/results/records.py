"""Trial records: one flat row per trial, the same for Optuna, Ray Tune and ablation runs.

Column schema (see `trial_columns`), in this order:

* identity: ``study``, ``trial``, ``backend``, ``status`` (one of `STATUSES`), ``reason``,
  ``arch_id``
* metrics: ``params``, ``macs`` (at the trial's image size), ``val_top1``, ``val_top5``,
  ``test_top1``, ``test_top5`` (percent; NaN when not evaluated), ``train_loss``, ``epochs``
  (epochs actually run), ``wall_time_s``, ``images_per_s`` (training throughput), ``device`` and
  ``threads`` (where it ran; a GPU by its physical name, ``cuda:2 (NVIDIA H200)``, whatever
  ``CUDA_VISIBLE_DEVICES`` the process had: `cvt_nas.common.gpus.physical_device`), ``seed``,
  ``finished_at`` (ISO 8601, UTC, when the record was made)
* architecture scalars: ``img_size``, ``in_chans``, ``num_classes``, ``qkv_bias``, ``act``,
  ``attn_scale``, ``drop_rate``, ``num_stages``
* per-stage architecture: ``<field>_s<stage>`` for every field of `CvTConfig`'s
  ``STAGE_FIELDS``, field-major (``depth_s1``, ``depth_s2``, ``depth_s3``, ``num_heads_s1``, ...).
  A stage whose ``mlp_ratio`` or ``kv_stride`` holds one value per block is written as a string
  such as ``"1,2,2,1"``; the whole column then holds strings.
* training: ``train.<field>`` for every field of ``TrainConfig.to_dict()`` (the dot keeps them
  apart from architecture columns and from metrics such as ``train_loss``); nested values are
  JSON strings
* ``arch``: the canonical JSON of ``CvTConfig.to_dict()`` (sorted keys), enough to rebuild the
  config with ``CvTConfig.from_dict(json.loads(row.arch))``
* ``error``, then any ``extra`` keys the caller adds. A search adds ``params_sampled``,
  ``constraint_violation``, ``worker`` (``host:pid:start``, plus ``@gpu<N>`` for a process pinned
  to GPU N: `cvt_nas.common.gpus.worker_label`) and, for a trial that trained on the CPU while
  the search had GPUs, ``warning`` (`cvt_nas.common.gpus.cpu_warning`).

The per-epoch table (`history_rows`) is long: ``study``, ``trial``, ``epoch`` and the metrics
the trainer reported (``train_loss``, ``val_top1``, ``val_top5``, ``lr``, ``time_s``, ...).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cvt_nas.common import fmt
from cvt_nas.common.gpus import physical_device
from cvt_nas.model.config import BLOCK_FIELDS, STAGE_FIELDS, CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost

STATUSES: tuple[str, ...] = ("complete", "pruned", "infeasible", "diverged", "oom", "failed")

IDENTITY_COLUMNS: tuple[str, ...] = ("study", "trial", "backend", "status", "reason", "arch_id")
METRIC_COLUMNS: tuple[str, ...] = (
    "params", "macs", "val_top1", "val_top5", "test_top1", "test_top5", "train_loss", "epochs",
    "wall_time_s", "images_per_s", "device", "threads", "seed", "finished_at",
)
ARCH_SCALAR_COLUMNS: tuple[str, ...] = (
    "img_size", "in_chans", "num_classes", "qkv_bias", "act", "attn_scale", "drop_rate",
    "num_stages",
)
TRAIN_PREFIX = "train."
TAIL_COLUMNS: tuple[str, ...] = ("arch", "error")
EPOCH_COLUMNS: tuple[str, ...] = (
    "study", "trial", "epoch", "train_loss", "val_top1", "val_top5", "lr", "time_s",
)

_INT_COLUMNS = ("trial", "params", "macs", "epochs", "threads", "seed", "num_stages", "img_size",
                "in_chans", "num_classes")
_INT_STAGE_FIELDS = ("embed_kernel", "embed_stride", "embed_padding", "embed_dim", "depth",
                     "num_heads", "qkv_kernel", "q_stride", "kv_stride")
_BOOL_STAGE_FIELDS = ("pos_embed", "cls_token")
_FLOAT_COLUMNS = ("val_top1", "val_top5", "test_top1", "test_top5", "train_loss", "wall_time_s",
                  "images_per_s")
# Result fields copied as they are (TrialResult attribute -> column).
_RESULT_FIELDS = ("params", "macs", "val_top1", "val_top5", "test_top1", "test_top5",
                  "train_loss", "epochs", "wall_time_s", "images_per_s", "device", "threads",
                  "seed", "error")


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def stage_column(field: str, stage: int) -> str:
    """Column name of a per-stage field, with stages counted from 1: ``depth_s1``."""
    return f"{field}_s{stage}"


def arch_columns(num_stages: int) -> list[str]:
    """Architecture columns (scalars, then per-stage fields) for a number of stages."""
    return [*ARCH_SCALAR_COLUMNS,
            *(stage_column(f, s) for f in STAGE_FIELDS for s in range(1, num_stages + 1))]


def format_blocks(value: Any) -> str:
    """A per-block list as a compact string: ``[1, 2, 2, 1]`` -> ``"1,2,2,1"``."""
    if isinstance(value, list | tuple):
        return ",".join(fmt.number(v) for v in value)
    return fmt.number(value)


def arch_json(cfg: CvTConfig) -> str:
    """Canonical JSON of a config (sorted keys, no spaces): equal configs give equal strings."""
    return json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))


def flatten_arch(cfg: CvTConfig) -> dict[str, Any]:
    """Architecture fields of a config as flat columns (see the module docstring)."""
    data = cfg.to_dict()
    row: dict[str, Any] = {k: data[k] for k in ARCH_SCALAR_COLUMNS if k in data}
    row["num_stages"] = cfg.num_stages
    for name in STAGE_FIELDS:
        for s, value in enumerate(data[name], start=1):
            row[stage_column(name, s)] = format_blocks(value) if isinstance(value, list) else value
    return row


def flatten_train(train: Mapping[str, Any]) -> dict[str, Any]:
    """Training fields as ``train.<field>`` columns; lists and dicts become JSON strings."""
    row = {}
    for key, value in train.items():
        if isinstance(value, list | tuple | dict):
            value = json.dumps(value, sort_keys=True, default=str)
        elif value is not None and not isinstance(value, bool | int | float | str):
            value = str(value)  # paths, enums
        row[TRAIN_PREFIX + key] = value
    return row


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    raise TypeError(f"expected a mapping or an object with to_dict(), got {type(obj).__name__}")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def make_record(
    *,
    study: str,
    trial: int,
    backend: str,
    model_cfg: CvTConfig | None,
    train_cfg: _HasToDict | Mapping[str, Any] | None,
    result: Any | None,
    status: str | None = None,
    reason: str | None = None,
    extra: Mapping[str, Any] | None = None,
    cost: Cost | None = None,
    finished_at: datetime | None = None,
) -> dict[str, Any]:
    """One flat, JSON-serializable row describing a trial: the only place a record is built.

    Args:
        study: study name (also the results directory name).
        trial: trial number within the study.
        backend: ``"optuna"``, ``"ray"``, ``"ablate"``, ``"train"``, ...
        model_cfg: the architecture; pass the config the trial trains (after
            ``cvt_nas.training.datasets.adapt_config``) so ``in_chans``/``num_classes`` match the
            data. None for a sample that gives no valid architecture: the row then keeps the
            identity, the training fields and the reason, with no architecture columns.
        train_cfg: a ``TrainConfig`` (or its ``to_dict()``); None when there is none either.
        result: the ``TrialResult`` (or its ``to_dict()``); ``None`` for a trial that never ran,
            such as one rejected by the budget gate: params and MACs then come from ``cost``
            or ``analytic_cost(model_cfg, train img_size)`` and the status defaults to
            ``"infeasible"``.
        status: overrides the result's status.
        reason: why the trial ended as it did (e.g. ``"macs 3.1e8 > budget 2e8"``).
        extra: additional columns (e.g. sampler name, ablation row); must not reuse schema names.
        cost: the trial's analytic cost when the caller has it already (the budget gate):
            params and MACs the result lacks come from it instead of being computed again.
        finished_at: when the trial ended; default now (a record is made as its trial ends).

    Returns:
        A dict of plain Python values (no NaN: missing values are ``None``).

    Raises:
        ValueError: an unknown status or an ``extra`` key that clashes with the schema.
    """
    res = _as_dict(result)
    train = _as_dict(train_cfg)
    status = status or res.get("status") or ("infeasible" if result is None else None)
    if status not in STATUSES:
        raise ValueError(f"trial {trial}: unknown status {status!r}; choose one of {STATUSES}")
    img_size = train.get("img_size") or (model_cfg.img_size if model_cfg is not None else None)
    record: dict[str, Any] = {
        "study": study, "trial": int(trial), "backend": backend, "status": status,
        "reason": reason, "arch_id": model_cfg.arch_id() if model_cfg is not None else None,
    }
    record.update({k: _clean(res.get(k)) for k in _RESULT_FIELDS if k != "error"})
    record["device"] = physical_device(record["device"])  # made where the trial ran
    if (record["params"] is None or record["macs"] is None) and model_cfg is not None:
        if cost is None:
            try:
                cost = analytic_cost(model_cfg, int(train.get("img_size") or model_cfg.img_size))
            except ValueError as exc:  # no tokens left at this size: record why, keep the row
                record["reason"] = "; ".join(x for x in (reason, f"cost: {exc}") if x)
        if cost is not None:
            record["params"] = cost.params if record["params"] is None else record["params"]
            record["macs"] = cost.macs if record["macs"] is None else record["macs"]
    if record["seed"] is None:
        record["seed"] = train.get("seed")
    if record["epochs"] is None and result is None:
        record["epochs"] = 0
    record["finished_at"] = _now(finished_at)
    if model_cfg is not None:
        record.update(flatten_arch(model_cfg))
    else:
        record["img_size"] = None if img_size is None else int(img_size)
    record.update(flatten_train(train))
    record["arch"] = arch_json(model_cfg) if model_cfg is not None else None
    record["error"] = res.get("error")
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra column {key!r} clashes with a record column; rename it")
        record[key] = value
    return record


def reused_record(source: Mapping[str, Any], *, study: str, trial: int, **extra: Any
                  ) -> dict[str, Any]:
    """The record of a trial that takes an earlier trial's result instead of training again.

    One rule for searches (a sample drawn again) and ablations (a run another table trained):
    the ``source`` record is copied under ``study`` and ``trial``, with ``wall_time_s`` 0
    (nothing was trained), ``finished_at`` now, ``reused_from`` naming the source
    (``<study>#<trial>``) and a ``reason`` saying so. ``extra`` sets further columns (the
    worker, the ablation row, a reason in the search's words, ...), over copied ones.
    """
    origin = f"{source.get('study')}#{source.get('trial')}"
    record = {**source, "study": study, "trial": int(trial), "wall_time_s": 0.0,
              "reason": f"same run as {origin}: its result, not retrained",
              "finished_at": _now(), "reused_from": origin}
    record.update(extra)
    return record


def _now(when: datetime | None = None) -> str:
    when = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return when.isoformat(timespec="milliseconds")


def history_rows(study: str, trial: int, history: Iterable[Mapping[str, Any]] | None
                 ) -> list[dict[str, Any]]:
    """Rows of the long per-epoch table for one trial (one row per reported epoch)."""
    rows = []
    for i, entry in enumerate(history or [], start=1):
        row: dict[str, Any] = {"study": study, "trial": int(trial)}
        row.update({k: _clean(v) for k, v in entry.items() if k not in ("study", "trial")})
        row["epoch"] = int(row.get("epoch", i))
        rows.append(row)
    return rows


def _order(columns: Iterable[str]) -> list[str]:
    """Schema order for a set of record columns; unknown columns keep first-seen order."""
    cols = list(dict.fromkeys(columns))
    stages = max((int(c.rsplit("_s", 1)[1]) for c in cols
                  if c.rsplit("_s", 1)[0] in STAGE_FIELDS and c.rsplit("_s", 1)[1].isdigit()),
                 default=0)
    head = [*IDENTITY_COLUMNS, *METRIC_COLUMNS, *arch_columns(stages)]
    train = [c for c in cols if c.startswith(TRAIN_PREFIX)]
    known = set(head) | set(train) | set(TAIL_COLUMNS)
    return [*head, *train, *TAIL_COLUMNS, *(c for c in cols if c not in known)]


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The trials DataFrame of a list of records, in schema order with stable dtypes.

    Every schema column is present even when all values are missing, so frames from different
    backends have the same columns. Dtypes follow the schema (nullable ``Int64`` integers,
    ``float64`` metrics, nullable ``boolean`` flags, ``str`` text); other columns (``train.*``,
    extras) get theirs from the Python types of their values, never from which rows happen to
    be missing. A per-stage column holding a per-block string such as ``"1,2,2,1"`` is stored
    as strings throughout.
    """
    records = [dict(r) for r in records]
    columns = _order(c for r in records for c in r)
    data = {c: _typed([r.get(c) for r in records], column_kind(c)) for c in columns}
    return pd.DataFrame(data, columns=columns, index=pd.RangeIndex(len(records)))


_STR_COLUMNS = ("study", "backend", "status", "reason", "arch_id", "finished_at", "device", "act",
                "attn_scale", "arch", "error")
_KIND_BY_STAGE_FIELD = {
    **dict.fromkeys(_INT_STAGE_FIELDS, "int"), **dict.fromkeys(_BOOL_STAGE_FIELDS, "bool"),
    "mlp_ratio": "float", "drop_path": "float", "embed_type": "str", "proj_method": "str",
}


def column_kind(col: str) -> str | None:
    """The schema's type of a column (``int``, ``float``, ``bool``, ``str``), None when the
    schema leaves it to the values (``train.*`` and extra columns)."""
    if col in _INT_COLUMNS:
        return "int"
    if col in _FLOAT_COLUMNS or col == "drop_rate":
        return "float"
    if col in _STR_COLUMNS:
        return "str"
    if col == "qkv_bias":
        return "bool"
    base, _, stage = col.rpartition("_s")
    return _KIND_BY_STAGE_FIELD.get(base) if stage.isdigit() else None


def _infer_kind(present: list[Any]) -> str:
    if not present:
        return "object"
    if all(isinstance(v, bool | np.bool_) for v in present):
        return "bool"
    if any(isinstance(v, bool | np.bool_) for v in present):
        return "object"
    if all(isinstance(v, numbers.Integral) for v in present):
        return "int"
    if all(isinstance(v, numbers.Real) for v in present):
        return "float"
    if all(isinstance(v, str) for v in present):
        return "str"
    return "object"


def _typed(values: list[Any], kind: str | None) -> pd.Series:
    missing = [fmt.is_missing(v) for v in values]
    present = [v for v, m in zip(values, missing, strict=True) if not m]
    if any(isinstance(v, str) for v in present) and kind in ("int", "float", None):
        kind = "str"  # per-block strings ("1,2,2,1") next to numbers
    kind = kind or _infer_kind(present)
    if kind == "int":
        ints = [None if m else int(v) for v, m in zip(values, missing, strict=True)]
        return pd.Series(ints, dtype="Int64")
    if kind == "float":
        return pd.Series([np.nan if m else float(v) for v, m in zip(values, missing, strict=True)],
                         dtype="float64")
    if kind == "bool":
        bools = [None if m else _as_bool(v) for v, m in zip(values, missing, strict=True)]
        return pd.Series(bools, dtype="boolean")
    if kind == "str":
        strs = [None if m else (v if isinstance(v, str) else format_blocks(v))
                for v, m in zip(values, missing, strict=True)]
        return pd.Series(strs, dtype="str")
    return pd.Series([None if m else v for v, m in zip(values, missing, strict=True)],
                     dtype=object)


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):  # from a CSV written by another tool
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def epochs_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The long per-epoch DataFrame (``EPOCH_COLUMNS`` first, then any other reported metric)."""
    rows = [dict(r) for r in rows]
    seen = dict.fromkeys(c for r in rows for c in r)
    columns = [*EPOCH_COLUMNS, *(c for c in seen if c not in EPOCH_COLUMNS)]
    kinds = {"study": "str", "trial": "int", "epoch": "int"}
    data = {c: _typed([r.get(c) for r in rows], kinds.get(c, "float" if c in EPOCH_COLUMNS
                                                          else None)) for c in columns}
    return pd.DataFrame(data, columns=columns, index=pd.RangeIndex(len(rows)))


def block_columns(df: pd.DataFrame) -> list[str]:
    """The per-stage columns of fields that may hold per-block values (``kv_stride_s1``, ...)."""
    return [c for c in df.columns if c.rsplit("_s", 1)[0] in BLOCK_FIELDS]
