"""Search-space building blocks: distributions, field specs, budgets, samples and errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

from cvt_nas.model.config import CvTConfig
from cvt_nas.training.config import TrainConfig

INVALID = 1.0  # the constraint violation reported for an invalid architecture
MAX_VALUES = 1_000_000  # the most values `Dist.values` lists (and grid search enumerates)


class SpaceError(ValueError):
    """A search-space file is wrong; the message names the file, the key and the fix."""


class Suggest(Protocol):
    """What a sampler must offer: Optuna's ``Trial`` suggest methods."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...


@dataclass(frozen=True)
class Dist:
    """One distribution: ``choice`` (categorical), ``int`` or ``float``."""

    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    @property
    def encoded(self) -> bool:
        """List-valued choices travel through samplers as JSON strings."""
        return self.kind == "choice" and any(isinstance(c, list) for c in self.choices)

    def suggest(self, s: Suggest, name: str) -> Any:
        """Draw a raw value through ``s`` under ``name`` (what a sampler stores; see `decode`)."""
        if self.kind == "choice":
            return s.suggest_categorical(name, self.sampler_choices())
        if self.kind == "int":
            return int(s.suggest_int(name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log))
        return float(s.suggest_float(name, self.low, self.high, step=self.step, log=self.log))

    def sampler_choices(self) -> list[Any]:
        """The choices as a sampler sees them (lists as JSON strings)."""
        return [json.dumps(c) if isinstance(c, list) else c for c in self.choices]

    def decode(self, raw: Any) -> Any:
        """The config value of a raw sampler value."""
        return json.loads(raw) if self.encoded and isinstance(raw, str) else raw

    def count(self) -> int | None:
        """How many values the distribution holds (None for a continuous range), computed
        without listing them, so a huge range costs nothing."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        if self.step is None:
            return None
        return int(round((self.high - self.low) / self.step)) + 1

    def values(self) -> list[Any] | None:
        """Every raw value, for grid search; None for a continuous range.

        Raises:
            ValueError: more than `MAX_VALUES` values (listing them would not finish).
        """
        n = self.count()
        if n is None:
            return None
        if n > MAX_VALUES:
            raise ValueError(f"{n:,} values, more than the {MAX_VALUES:,} a grid can list")
        if self.kind == "choice":
            return self.sampler_choices()
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        assert self.step is not None
        return [self.low + i * self.step for i in range(n)]

    def corners(self) -> list[Any]:
        """A few representative values (ends and middle) for the greedy extremes search."""
        n = self.count()
        vals = self.values() if n is not None and n <= 16 else None
        if vals is not None:
            return vals
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.kind == "int":
            step = int(self.step or 1)
            mid = int(self.low) + (int(mid) - int(self.low)) // step * step
            return [int(self.low), mid, int(self.high)]
        return [self.low, mid, self.high]


@dataclass(frozen=True)
class Entry:
    """One stage's value (or the tied value): fixed, or a distribution drawn once or per block."""

    fixed: Any = None
    dist: Dist | None = None
    per_block: bool = False


@dataclass(frozen=True)
class FieldSpec:
    """How one config field is set: ``tied`` (one entry, one draw) or one entry per stage."""

    name: str
    tied: bool
    entries: tuple[Entry, ...]
    per_stage: bool  # the field is a per-stage field of CvTConfig (or head_dim)
    section: str = "model"  # "model" (CvTConfig) or "train" (TrainConfig)

    @property
    def prefix(self) -> str:
        """Parameter-name prefix: ``train.`` for training fields."""
        return "train." if self.section == "train" else ""

    @property
    def sampled(self) -> bool:
        return any(e.dist is not None for e in self.entries)


@dataclass(frozen=True)
class Violation:
    """One broken constraint: its key, a readable message, and how far off (0 < amount)."""

    key: str
    message: str
    amount: float


@dataclass(frozen=True)
class Budget:
    """Constraints checked before training: cost bounds at the search image size, and rules.

    ``nondecreasing`` lists per-stage fields that may not shrink from stage to stage;
    ``min_head_dim`` / ``max_head_dim`` bound ``embed_dim // num_heads``; ``min_grid`` is the
    smallest token-grid side allowed after the last stage's embedding.
    """

    max_params: int | None = None
    max_macs: int | None = None
    min_params: int | None = None
    min_macs: int | None = None
    nondecreasing: tuple[str, ...] = ()
    min_head_dim: int | None = None
    max_head_dim: int | None = None
    min_grid: int | None = None


@dataclass(frozen=True)
class Sample:
    """One draw: the flat parameters and the configs they give (or why they are invalid)."""

    params: dict[str, Any]
    model: CvTConfig | None
    train: TrainConfig | None
    error: str | None = None

    @property
    def arch_id(self) -> str | None:
        return self.model.arch_id() if self.model is not None else None
