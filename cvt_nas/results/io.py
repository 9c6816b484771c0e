"""Results directories: atomic writes of the tables, plots and study.yaml; loading them back.

A study's directory ``results/<study>/`` holds:

* ``trials.csv`` and ``trials.parquet``: one row per trial (schema in `records`)
* ``epochs.parquet``: the long per-epoch table
* ``pareto.csv`` and ``pareto.md``: the non-dominated complete trials under the objectives
* ``pareto.png``: accuracy against MACs and params, the front highlighted
* ``study.yaml``: objectives, search space, settings, package versions, command line

Every file is written to a temporary file in the same directory and renamed over the old one,
so a crash (or a reader running at the same time) never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cvt_nas.common.atomic import atomic_path, atomic_write_text
from cvt_nas.common.yamlfile import read_yaml
from cvt_nas.results.objectives import check_objectives, parse_objectives
from cvt_nas.results.pareto import pareto_front
from cvt_nas.results.plots import plot_pareto
from cvt_nas.results.records import epochs_frame, history_rows, records_frame
from cvt_nas.results.tables import pareto_table, to_markdown
from cvt_nas.results.validate import check_epochs, check_same_trials, check_trials, read_table

TRIALS_PARQUET = "trials.parquet"
TRIALS_CSV = "trials.csv"
EPOCHS_PARQUET = "epochs.parquet"
STUDY_YAML = "study.yaml"
DEFAULT_OBJECTIVES = {"val_top1": "max", "macs": "min"}
# What `write_outputs` writes, in this order.
OUTPUT_FILES = (TRIALS_CSV, TRIALS_PARQUET, EPOCHS_PARQUET, "pareto.csv", "pareto.md",
                "pareto.png", STUDY_YAML)
VERSION_PACKAGES = ("cvt-nas", "torch", "timm", "optuna", "ray", "pandas", "numpy", "pyarrow",
                    "matplotlib")


def package_versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a result depends on (read from metadata, no imports)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _plain(value: Any) -> Any:
    """Convert a value to what ``yaml.safe_dump`` accepts (tuples, numpy scalars, paths...)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return str(value)


def write_outputs(
    out_dir: str | Path,
    trials: pd.DataFrame | Sequence[Mapping[str, Any]],
    epochs: pd.DataFrame | Sequence[Mapping[str, Any]] | None,
    objectives: Mapping[str, str],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write every file of a results directory from the trials and epochs tables.

    Safe to call after every trial: each file is replaced atomically.

    Args:
        out_dir: the study's directory, usually ``results/<study>``.
        trials: the trials table, or the list of records from `make_record`.
        epochs: the per-epoch table, or the rows from `history_rows` (None: empty).
        objectives: e.g. ``{"val_top1": "max", "macs": "min"}``.
        meta: what study.yaml should hold: ``space``, ``settings``, ``command``, ... Package
            ``versions``, the ``study`` name and ``created`` (the first write's time, kept from
            an existing study.yaml) are added unless present.

    Returns:
        The directory.
    """
    out = check_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials_df = trials if isinstance(trials, pd.DataFrame) else records_frame(trials)
    epochs_df = epochs if isinstance(epochs, pd.DataFrame) else epochs_frame(epochs or [])
    objectives = check_objectives(trials_df, objectives)

    with atomic_path(out / TRIALS_PARQUET) as tmp:
        trials_df.to_parquet(tmp, index=False)
    with atomic_path(out / TRIALS_CSV) as tmp:
        trials_df.to_csv(tmp, index=False)
    with atomic_path(out / EPOCHS_PARQUET) as tmp:
        epochs_df.to_parquet(tmp, index=False)

    front = pareto_front(trials_df, objectives)
    with atomic_path(out / "pareto.csv") as tmp:
        pareto_table(front, objectives, full=True).to_csv(tmp, index=False)
    title = f"Pareto front of {_study_name(trials_df, out)}"
    atomic_write_text(out / "pareto.md", to_markdown(pareto_table(front, objectives),
                                                      title=title) + "\n")
    plot_pareto(trials_df, objectives, out / "pareto.png", title=title)

    study = dict(_plain(dict(meta or {})))
    study.setdefault("study", _study_name(trials_df, out))
    study["objectives"] = dict(objectives)
    study.setdefault("versions", package_versions())
    if "created" not in study and (out / STUDY_YAML).is_file():  # an earlier write's stamp
        with contextlib.suppress(ValueError):
            study["created"] = read_yaml(out / STUDY_YAML, "study.yaml").get("created")
    study["created"] = study.pop("created", None) or datetime.now(UTC).isoformat(timespec="seconds")
    study["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    study["n_trials"] = len(trials_df)
    if "status" in trials_df.columns:
        study["status_counts"] = {str(k): int(v) for k, v in
                                  trials_df["status"].value_counts(sort=False).items()}
    atomic_write_text(out / STUDY_YAML, yaml.safe_dump(study, sort_keys=False))
    return out


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a directory to write into: missing (it is created when written) or a directory.

    Raises:
        ValueError: it, or a folder above it, is a file.
    """
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"is under {str(p)!r}, a file"
                where = f"{flag} {str(out)!r}" if flag else repr(str(out))
                raise ValueError(f"{where} {what}; give a directory (a new one is created)")
            break
    return out


def write_run(path: str | Path, record: Mapping[str, Any],
              history: Sequence[Mapping[str, Any]]) -> Path:
    """Write one trained run as JSON: its record (`make_record`) and per-epoch history, the same
    pair a study keeps with each trial (``user_attrs["record"]`` / ``["history"]``)."""
    path = Path(path)
    check_out_dir(path.parent)
    atomic_write_text(path, json.dumps({"record": dict(record), "history": list(history)},
                                       indent=2) + "\n")
    return path


def read_run(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record and history of a run file written by `write_run` (``cvt-nas train``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not such a run file (e.g. one from an older ``cvt-nas train``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); write it again with cvt-nas train"
                         ) from None
    if not isinstance(data, dict) or not isinstance(data.get("record"), dict):
        hint = (" (written by an older cvt-nas train: rerun its 'command' to get a standard "
                "record)" if isinstance(data, dict) and "result" in data else "")
        raise ValueError(f"{path}: no 'record' object{hint}; expected the JSON cvt-nas train "
                         "writes: {\"record\": {...}, \"history\": [...]}")
    return data["record"], list(data.get("history") or [])


def _study_name(df: pd.DataFrame, out: Path) -> str:
    if "study" in df.columns and df["study"].nunique() == 1:
        return str(df["study"].iloc[0])
    return out.name


def _results_dir(path: str | Path, need_trials: bool = True) -> Path:
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"results directory {str(path)!r} does not exist")
    if need_trials and not (path / TRIALS_PARQUET).exists() and not (path / TRIALS_CSV).exists():
        raise FileNotFoundError(
            f"{str(path)!r} has no {TRIALS_PARQUET} or {TRIALS_CSV}; give a results/<study>/ "
            "directory written by `cvt-nas search` (or by cvt_nas.results.write_outputs)"
        )
    return path


def _is_run(path: str | Path) -> bool:
    return Path(path).suffix == ".json" and Path(path).is_file()


def load(path: str | Path) -> pd.DataFrame:
    """The trials table of a results directory (parquet when present, else CSV), or the one-row
    table of a run file of ``cvt-nas train`` (``runs/train/<name>/<name>.json``).

    Rows pass through `records_frame`, so columns and dtypes follow the schema whichever file
    (or writer version) they came from.
    """
    if _is_run(path):
        return records_frame([read_run(path)[0]])
    path = _results_dir(path)
    fix = _fix(path)
    tables = {name: read_table(path / name, fix) for name in (TRIALS_PARQUET, TRIALS_CSV)
              if (path / name).exists()}
    if len(tables) == 2:
        check_same_trials(tables[TRIALS_PARQUET], tables[TRIALS_CSV], path, fix)
    name, raw = next(iter(tables.items()))
    check_trials(raw, path / name, fix)
    return records_frame(raw.to_dict("records"))


def _fix(path: Path) -> str:
    return (f"restore the file, or rebuild the folder from its study with `cvt-nas report "
            f"{path} --write`")


def load_epochs(path: str | Path) -> pd.DataFrame:
    """The per-epoch table of a results directory (empty when it was never written) or of a run
    file of ``cvt-nas train``."""
    if _is_run(path):
        record, history = read_run(path)
        return epochs_frame(history_rows(record["study"], record["trial"], history))
    path = _results_dir(path)
    if not (path / EPOCHS_PARQUET).exists():
        return epochs_frame([])
    raw = read_table(path / EPOCHS_PARQUET, _fix(path))
    check_epochs(raw, path / EPOCHS_PARQUET, _fix(path))
    return epochs_frame(raw.to_dict("records"))


def load_meta(path: str | Path) -> dict[str, Any]:
    """The study.yaml of a results directory as a dict (empty when absent)."""
    path = _results_dir(path, need_trials=False)
    if not (path / STUDY_YAML).exists():
        return {}
    data: dict[str, Any] = read_yaml(path / STUDY_YAML, "study.yaml")
    return data


def study_objectives(path: str | Path) -> dict[str, str]:
    """The objectives recorded in study.yaml (checked as a search checks them), or the default
    ``val_top1`` max / ``macs`` min when it records none."""
    stored = load_meta(path).get("objectives")
    if stored is None:
        return dict(DEFAULT_OBJECTIVES)
    return parse_objectives(stored, f"{_results_dir(path, False) / STUDY_YAML}: objectives")


def study_labels(paths: Sequence[str | Path], studies: Sequence[str | None]) -> list[str]:
    """Unique labels for several results directories: study names, else folder names, else paths.
    """
    for candidate in (
        [s or Path(p).name for p, s in zip(paths, studies, strict=True)],
        [Path(p).name for p in paths],
        [str(p) for p in paths],
    ):
        if len(set(candidate)) == len(candidate):
            return candidate
    raise ValueError(f"the same results directory is given twice: {[str(p) for p in paths]}")


def load_many(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate the trials tables of several results directories.

    The ``study`` column labels each row's source: ``names`` when given, else the stored study
    name, falling back to the folder name (then the path) when two directories share a name. A
    ``source`` column holds the directory.
    """
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} directories")
    frames = [load(p) for p in paths]
    if names is None:
        stored = [str(f["study"].iloc[0]) if len(f) and f["study"].nunique() == 1 else None
                  for f in frames]
        names = study_labels(paths, stored)
    out = []
    for frame, name, path in zip(frames, names, paths, strict=True):
        frame = frame.copy()
        frame["study"] = name
        frame["source"] = str(path)
        out.append(frame)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
