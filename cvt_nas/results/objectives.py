"""Objectives: the one grammar for naming them, and their check against a trials table.

A search ranks trials by objectives such as ``val_top1:max, macs:min``. The same grammar serves
a space file's ``search.objectives``, ``cvt-nas search --objectives``, ``report``/``compare
--objective`` and the ``objectives`` that study.yaml records, so a direction the search would
refuse (``val_top1:min``, which would rank the worst models first) is refused everywhere.

The library functions (`pareto_front`, `hypervolume`, ...) take any numeric columns as
objectives (`check_objectives`), e.g. ``test_top1`` for an analysis after the search.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

Objectives = Mapping[str, str]

# What a search can optimize, each in its one meaningful direction (accuracy up, costs down).
OBJECTIVE_NAMES = ("val_top1", "macs", "params", "latency")
# Minimization sign of each direction word (max columns are negated).
DIRECTIONS = {"max": -1.0, "maximize": -1.0, "min": 1.0, "minimize": 1.0}


def parse_objectives(items: Any, where: str = "--objectives") -> dict[str, str]:
    """``"val_top1:max,macs:min"``, a list of such items, or ``{name: dir}`` -> ``{name: dir}``.

    A direction may be left out (``latency`` means ``latency:min``); a given one must be the
    objective's own (``val_top1:max``; ``macs``/``params``/``latency``: ``min``).

    Args:
        items: the objectives as written.
        where: the file and key or the flag they came from, for messages.

    Raises:
        ValueError: nothing given, an unknown name, a wrong direction or a name given twice.
    """
    if isinstance(items, Mapping):
        items = [f"{name}:{direction}" for name, direction in items.items()]
    elif isinstance(items, str):
        items = [items]
    if not isinstance(items, list | tuple):
        raise ValueError(f"{where}: expected a list like [val_top1:max, macs:min], got {items!r}")
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{where}: no objective given; e.g. val_top1:max,macs:min")
    out: dict[str, str] = {}
    for item in parts:
        name, _, direction = item.partition(":")
        name, direction = name.strip(), direction.strip()
        if name not in OBJECTIVE_NAMES:
            raise ValueError(f"{where}: unknown objective {name!r}; choose from "
                             f"{list(OBJECTIVE_NAMES)}")
        expected = "max" if name == "val_top1" else "min"
        direction = direction or expected
        if direction != expected:
            raise ValueError(f"{where}: {name} can only be {name}:{expected}, got {item!r}")
        if name in out:
            raise ValueError(f"{where}: {name} is listed twice")
        out[name] = direction
    return out


def check_objectives(df: pd.DataFrame, objectives: Objectives) -> dict[str, str]:
    """Validate objectives against a frame; returns them normalized to ``"max"``/``"min"``.

    Raises:
        ValueError: no objectives, an unknown direction, or a column the frame lacks.
    """
    if not objectives:
        raise ValueError("no objectives given; use e.g. {'val_top1': 'max', 'macs': 'min'}")
    out = {}
    for name, direction in objectives.items():
        key = str(direction).lower()
        if key not in DIRECTIONS:
            raise ValueError(
                f"objective {name!r}: direction {direction!r} must be 'max' or 'min'"
            )
        if name not in df.columns:
            raise ValueError(
                f"objective {name!r} is not a column of the trials table; "
                f"numeric columns are {sorted(df.select_dtypes('number').columns)}"
            )
        out[name] = "max" if DIRECTIONS[key] < 0 else "min"
    return out
