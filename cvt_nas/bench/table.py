"""Reading a CvT-Bench table ("cvt-bench/1"): `load`, then lookups by arch_id, config or params.

A table directory holds ``manifest.json`` (what was trained and how), ``archs.parquet`` (one
row per architecture: costs, the config as JSON and one ``p:<param>`` column per parameter of
the space) and ``table.parquet`` (one row per architecture, seed and epoch). docs/bench.md
describes every field. A table may grow between reads (more architectures, more seeds), so
nothing here assumes every architecture has every seed.

Torch-free: pandas, pyarrow and the torch-free parts of cvt-nas only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cvt_nas.model.config import CvTConfig
from cvt_nas.space import SearchSpace, parse_space
from cvt_nas.training.config import TrainConfig

FORMAT = "cvt-bench/1"
PARAM_PREFIX = "p:"
RUN_STATUSES = ("complete", "diverged", "error", "oom")
MANIFEST_KEYS = ("format", "space", "space_yaml", "train", "epochs")
ARCH_COLUMNS = ("arch_id", "source", "sample_index", "name", "params", "macs", "latency_ms",
                "peak_train_mem_mb", "arch")
TABLE_COLUMNS = ("arch_id", "seed", "epoch", "status", "train_loss", "val_top1", "val_top5",
                 "train_time_s", "eval_time_s", "cpu_time_s", "time_s", "test_top1", "test_top5",
                 "device", "threads", "trial", "finished_at")
# columns added after the format's first tables: NaN when a table predates them
LATER_TABLE_COLUMNS = ("cpu_time_s",)
REBUILD = "rebuild it with `cvt-nas bench build SPACE.yaml --out DIR`"
# TrainConfig fields that change where or how a run goes, not its numbers (the seed is the
# run's, not the table's)
EXECUTION_FIELDS = ("seed", "threads", "num_workers", "device", "data_root", "download", "engine")


def recipe_numbers(train: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a TrainConfig dict that decide a run's numbers (not its seed, device, ...).
    Unset (None) fields are left out, so a field added to TrainConfig later changes nothing."""
    return {k: v for k, v in train.items() if k not in EXECUTION_FIELDS and v is not None}


def table_identity(space_sha256: str, train: Mapping[str, Any], sample_seed: int) -> str:
    """What makes two builds one table: the space file's hash, the recipe's numbers and the
    sample seed (stamped on a table's studies, and on simulated studies of it)."""
    text = json.dumps({"space_sha256": space_sha256, "train": recipe_numbers(train),
                       "sample_seed": sample_seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Result:
    """One architecture's run (one seed) as the table records it at one epoch.

    Accuracies are percent; ``time_s`` is the run's cumulative train + eval seconds at the end
    of ``epoch``; ``test_*`` are set at the run's final epoch only (None elsewhere).
    """

    arch_id: str
    seed: int
    epoch: int
    epochs: int  # the run's last recorded epoch
    status: str
    val_top1: float | None
    val_top5: float | None
    train_loss: float | None
    time_s: float | None
    test_top1: float | None
    test_top5: float | None
    params: int
    macs: int
    latency_ms: float | None
    peak_train_mem_mb: float | None


def _plain(v: Any) -> Any:
    """A parquet cell as a plain Python value (None for missing: None, NaN, pd.NA)."""
    if v is None or (not isinstance(v, str | bytes | list | tuple) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v  # numpy scalar -> Python


def _num(v: Any) -> float | None:
    v = _plain(v)
    return None if v is None else float(v)


class Bench:
    """A loaded table: ``manifest`` (dict), ``archs`` and ``table`` (DataFrames), lookups.

    Build with `load`. ``archs`` is indexed 0..n-1 and keeps ``arch_id`` as a column; ``table``
    is the long per-epoch frame as stored.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], archs: pd.DataFrame,
                 table: pd.DataFrame) -> None:
        self.path, self.manifest, self.archs, self.table = path, manifest, archs, table
        self._row = {a: i for i, a in enumerate(archs["arch_id"])}
        self._configs: dict[str, CvTConfig] = {}

    def __repr__(self) -> str:
        return (f"Bench({str(self.path)!r}, space={self.manifest.get('space')!r}, "
                f"archs={len(self.archs)}, runs={len(self.final())})")

    # -- what the table is about --------------------------------------------------------------

    @property
    def epochs(self) -> int:
        """Epochs of every complete run (the manifest's ``epochs``)."""
        return int(self.manifest["epochs"])

    @property
    def identity(self) -> str:
        """`table_identity` of this table (from its manifest)."""
        m = self.manifest
        return table_identity(str(m.get("space_sha256")), m.get("train") or {},
                              int(m.get("sample_seed") or 0))

    @property
    def param_names(self) -> list[str]:
        """The space's sampled architecture parameters (``p:`` columns, prefix removed)."""
        return [c[len(PARAM_PREFIX):] for c in self.archs.columns if c.startswith(PARAM_PREFIX)]

    def space(self) -> SearchSpace:
        """The search space the table was sampled from (the manifest's ``space_yaml``)."""
        source = f"{self.path / 'manifest.json'}: space_yaml"
        return parse_space(yaml.safe_load(self.manifest["space_yaml"]), source=source,
                           default_name=str(self.manifest["space"]), check=False)

    @cached_property
    def _train(self) -> TrainConfig:
        return TrainConfig.from_dict(self.manifest["train"],
                                     source=f"{self.path / 'manifest.json'}: train")

    def train_config(self) -> TrainConfig:
        """The pinned training configuration of every run (seed 0; a run's seed differs)."""
        return self._train

    # -- lookups --------------------------------------------------------------------------------

    def arch_id(self, arch: str | CvTConfig | Mapping[str, Any]) -> str:
        """The table's ``arch_id`` of an id, a config or a parameter dict.

        Raises:
            KeyError: the architecture is not in the table (one line: which, where, how many).
        """
        if isinstance(arch, str):
            if arch not in self._row:
                raise KeyError(f"{self.path}: arch_id {arch!r} is not in the table "
                               f"({len(self.archs)} architectures; see load(DIR).archs.arch_id)")
            return arch
        return self.lookup_config(arch)

    def lookup_config(self, config: CvTConfig | Mapping[str, Any]) -> str:
        """The ``arch_id`` of a `CvTConfig` (any input size and class count: `CvTConfig.arch_id`
        ignores them) or of a dict of the space's parameters (``p:`` columns, exact match).

        Raises:
            KeyError: no architecture of the table matches.
        """
        if isinstance(config, CvTConfig):
            key = config.arch_id()
            if key not in self._row:
                raise KeyError(f"{self.path}: config {key} is not in the table "
                               f"({len(self.archs)} architectures); pick one of "
                               "load(DIR).archs.arch_id or map it with nearest(params)")
            return key
        arch, distance = self.nearest(config)
        if distance:
            raise KeyError(f"{self.path}: no architecture has these parameters (the nearest, "
                           f"{arch}, differs in {distance}); use nearest(params) to map them")
        return arch

    def params_of(self, arch_id: str) -> dict[str, Any]:
        """The sampled parameters of a table architecture (missing ones left out)."""
        row = self.archs.iloc[self._row[self.arch_id(arch_id)]]
        out = {name: _plain(row[PARAM_PREFIX + name]) for name in self.param_names}
        return {k: v for k, v in out.items() if v is not None}

    def config(self, arch: str | CvTConfig | Mapping[str, Any]) -> CvTConfig:
        """The architecture's `CvTConfig`, rebuilt from the ``arch`` column."""
        arch_id = self.arch_id(arch)
        if arch_id not in self._configs:
            row = self.archs.iloc[self._row[arch_id]]
            self._configs[arch_id] = CvTConfig.from_dict(json.loads(row["arch"]))
        return self._configs[arch_id]

    @cached_property
    def _candidates(self) -> tuple[list[str], list[list[Any]]]:
        """Sampled architectures with a complete run, in arch_id order, and their parameters."""
        done = set(self._complete)
        rows = self.archs[(self.archs["source"] == "sample") & self.archs["arch_id"].isin(done)]
        rows = rows.sort_values("arch_id", kind="stable")
        names = [PARAM_PREFIX + n for n in self.param_names]
        values = [[_plain(v) for v in r] for r in rows[names].itertuples(index=False)]
        return list(rows["arch_id"]), values

    def answerable(self) -> list[str]:
        """The architectures `nearest` may choose: sampled ones with a complete run."""
        return list(self._candidates[0])

    def nearest(self, params: Mapping[str, Any],
                among: Callable[[str], bool] | None = None) -> tuple[str, int]:
        """The sampled architecture with a complete run closest to ``params``, and how far.

        Distance: the number of the space's parameters whose values differ (Hamming; a
        parameter missing on one side and set on the other differs). Ties go to the smallest
        ``arch_id``, so the mapping is deterministic. Named architectures (no parameters) are
        never chosen; with ``among``, only the architectures it accepts are.

        Raises:
            ValueError: no complete run of a sampled architecture (that ``among`` accepts).
        """
        ids, values = self._candidates
        if among is not None:
            kept = [i for i, a in enumerate(ids) if among(a)]
            ids, values = [ids[i] for i in kept], [values[i] for i in kept]
        if not ids:
            raise ValueError(f"{self.path}: no complete run of a sampled architecture"
                             + (" that meets the search's constraints" if among else " yet")
                             + f"; {REBUILD} (or let its build run longer)")
        want = [_plain(params.get(n)) for n in self.param_names]
        best, best_d = ids[0], len(want) + 1
        for arch, have in zip(ids, values, strict=True):
            d = sum(a != b for a, b in zip(want, have, strict=True))
            if d < best_d:
                best, best_d = arch, d
                if d == 0:
                    break
        return best, best_d

    def distance(self, params: Mapping[str, Any], arch: str) -> int:
        """How many of the space's parameters differ between ``params`` and a table
        architecture (the Hamming distance `nearest` minimizes)."""
        have = self.params_of(arch)
        return sum(_plain(params.get(n)) != have.get(n) for n in self.param_names)

    @cached_property
    def _runs(self) -> dict[tuple[str, int], pd.DataFrame]:
        """Every run's rows by epoch, keyed (arch_id, seed): lookups without scanning."""
        ordered = self.table.sort_values(["arch_id", "seed", "epoch"], kind="stable")
        return {(str(a), int(s)): g.reset_index(drop=True)
                for (a, s), g in ordered.groupby(["arch_id", "seed"], sort=False)}

    @cached_property
    def _complete(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for (arch_id, seed), rows in self._runs.items():
            if (rows["status"] == "complete").all():
                out.setdefault(arch_id, []).append(seed)
        return {a: sorted(s) for a, s in out.items()}

    def seeds(self, arch: str | CvTConfig | Mapping[str, Any]) -> list[int]:
        """Seeds with a complete run of the architecture, ascending."""
        return list(self._complete.get(self.arch_id(arch), []))

    def curve(self, arch: str | CvTConfig | Mapping[str, Any], seed: int) -> pd.DataFrame:
        """The per-epoch rows of one run, by epoch (empty when that seed was not run)."""
        rows = self._runs.get((self.arch_id(arch), int(seed)))
        return rows.copy() if rows is not None else self.table.iloc[0:0]

    def query(self, arch: str | CvTConfig | Mapping[str, Any], epoch: int | None = None,
              seed: int | None = None) -> Result:
        """One run of an architecture at one epoch.

        Args:
            arch: an ``arch_id``, a `CvTConfig` or a dict of the space's parameters.
            epoch: 1..the run's last epoch; None: the last one.
            seed: which run; None: the smallest seed with a complete run (else the smallest).

        Raises:
            KeyError: unknown architecture, a seed or an epoch the table does not hold.
        """
        arch_id = self.arch_id(arch)
        have = sorted(s for a, s in self._runs if a == arch_id)
        if seed is None:
            done = self.seeds(arch_id)
            if not have:
                raise KeyError(f"{self.path}: arch_id {arch_id!r} has no run yet")
            seed = done[0] if done else have[0]
        rows = self._runs.get((arch_id, int(seed)))
        if rows is None:
            raise KeyError(f"{self.path}: arch_id {arch_id!r} has no run with seed {seed} "
                           f"(seeds run: {have})")
        last = int(rows["epoch"].max())
        epoch = last if epoch is None else int(epoch)
        at = rows[rows["epoch"] == epoch]
        if at.empty:
            raise KeyError(f"{self.path}: arch_id {arch_id!r} seed {seed} has epochs "
                           f"{sorted(int(e) for e in rows['epoch'])}, not {epoch}")
        r = at.iloc[0]
        a = self.archs.iloc[self._row[arch_id]]
        return Result(arch_id=arch_id, seed=int(seed), epoch=epoch, epochs=last,
                      status=str(r["status"]), val_top1=_num(r["val_top1"]),
                      val_top5=_num(r["val_top5"]), train_loss=_num(r["train_loss"]),
                      time_s=_num(r["time_s"]), test_top1=_num(r["test_top1"]),
                      test_top5=_num(r["test_top5"]), params=int(a["params"]),
                      macs=int(a["macs"]), latency_ms=_num(a["latency_ms"]),
                      peak_train_mem_mb=_num(a["peak_train_mem_mb"]))

    def final(self, epoch: int | None = None) -> pd.DataFrame:
        """One row per complete run (architecture, seed) at ``epoch`` (None: its last), with
        the architecture's costs: the frame brute-force fronts and rank studies read."""
        t = self.table[self.table["status"] == "complete"]
        if epoch is None:
            t = t[t["epoch"] == t.groupby(["arch_id", "seed"])["epoch"].transform("max")]
        else:
            t = t[t["epoch"] == epoch]
        costs = self.archs[["arch_id", "source", "name", "params", "macs", "latency_ms",
                            "peak_train_mem_mb"]]
        out = t.merge(costs, on="arch_id", how="left", validate="many_to_one")
        return out.sort_values(["arch_id", "seed"], kind="stable").reset_index(drop=True)


# -- loading and validation ---------------------------------------------------------------------


def load(path: str | Path) -> Bench:
    """Load and validate a table directory written by ``cvt-nas bench build``.

    Raises:
        FileNotFoundError: no such directory, or one of its three files is missing.
        ValueError: not a "cvt-bench/1" table, or a field or column is missing or wrong; the
            message names the file, the field and the fix.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such table directory; {REBUILD}")
    for name in ("manifest.json", "archs.parquet", "table.parquet"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing; is {root} a CvT-Bench table? "
                                    f"{REBUILD}")
    manifest = _manifest(root / "manifest.json")
    archs = _frame(root / "archs.parquet", ARCH_COLUMNS)
    table = _frame(root / "table.parquet", TABLE_COLUMNS, later=LATER_TABLE_COLUMNS)
    _check(root, archs, table)
    return Bench(root, manifest, archs.reset_index(drop=True), table.reset_index(drop=True))


def _manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc}); {REBUILD}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; {REBUILD}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {data.get('format')!r}, this cvt-nas reads "
                         f"{FORMAT!r}; {REBUILD} or use the cvt-nas version that wrote it")
    missing = [k for k in MANIFEST_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: field(s) {missing} missing; {REBUILD}")
    if not isinstance(data["epochs"], int) or data["epochs"] < 1:
        raise ValueError(f"{path}: field 'epochs' must be an integer >= 1, got "
                         f"{data['epochs']!r}; {REBUILD}")
    if not isinstance(data["train"], dict):
        raise ValueError(f"{path}: field 'train' must be an object of TrainConfig fields; "
                         f"{REBUILD}")
    return data


def _frame(path: Path, columns: tuple[str, ...], later: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for a bad file
        raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}); "
                         f"{REBUILD}") from None
    for c in later:
        if c not in df.columns:
            df[c] = pd.Series(float("nan"), index=df.index, dtype="float64")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (not a {FORMAT} table); "
                         f"{REBUILD}")
    return df


def _check(root: Path, archs: pd.DataFrame, table: pd.DataFrame) -> None:
    where = root / "archs.parquet"
    dup = archs["arch_id"][archs["arch_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{where}: arch_id {dup.iloc[0]!r} appears twice; arch_id must be "
                         f"unique; {REBUILD}")
    bad_source = sorted(set(archs["source"]) - {"sample", "named"})
    if bad_source:
        raise ValueError(f"{where}: column 'source' holds {bad_source}; allowed: sample, named")
    where = root / "table.parquet"
    unknown = sorted(set(table["arch_id"]) - set(archs["arch_id"]))
    if unknown:
        raise ValueError(f"{where}: arch_id {unknown[0]!r} has runs but no row in "
                         f"archs.parquet ({len(unknown)} such); {REBUILD}")
    bad_status = sorted(set(table["status"]) - set(RUN_STATUSES))
    if bad_status:
        raise ValueError(f"{where}: column 'status' holds {bad_status}; allowed: "
                         f"{list(RUN_STATUSES)}")
    for col in ("seed", "epoch"):
        if not pd.api.types.is_integer_dtype(table[col]):
            raise ValueError(f"{where}: column {col!r} must hold integers, not "
                             f"{table[col].dtype}; {REBUILD}")
    if len(table) and int(table["epoch"].min()) < 0:
        raise ValueError(f"{where}: column 'epoch' holds negative values; {REBUILD}")
    dup_rows = table.duplicated(["arch_id", "seed", "epoch"])
    if dup_rows.any():
        r = table[dup_rows].iloc[0]
        raise ValueError(f"{where}: (arch_id {r['arch_id']!r}, seed {r['seed']}, epoch "
                         f"{r['epoch']}) appears twice; {REBUILD}")


__all__ = ["ARCH_COLUMNS", "Bench", "FORMAT", "PARAM_PREFIX", "Result", "RUN_STATUSES",
           "TABLE_COLUMNS", "load"]
