"""How cvt-nas writes numbers for people: tables, progress lines and summaries.

One module, so a count reads the same in every table and message: ``20.00 M`` params,
``6.643 G`` / ``28.0 M`` MACs, ``+1.42%`` relative errors, ``+0.70`` differences, ``12.3M``
short counts, ``3 min 05 s`` durations. The committed tables (``pareto.md``, the ablations'
``table.md``) are written with these functions, so changing one changes those files.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "cell", "duration", "is_missing", "macs", "number", "params", "percent", "short", "si",
    "signed",
]

_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def is_missing(v: Any) -> bool:
    """None, pandas' NA or a float NaN: a value a table shows as an empty cell."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(v)


def number(v: Any) -> str:
    """A value as short text: integral floats without ``.0`` (``4.0`` -> ``4``), else ``str``."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def params(n: float) -> str:
    """A parameter count in millions: ``19997480`` -> ``20.00 M``."""
    return f"{int(n) / 1e6:.2f} M"


def macs(n: float) -> str:
    """MACs in G from 0.1 G up (``6.643 G``), in M below (``28.0 M``)."""
    return f"{int(n) / 1e9:.3f} G" if int(n) >= 1e8 else f"{int(n) / 1e6:.1f} M"


def percent(fraction: float, digits: int = 2) -> str:
    """A signed relative difference in percent: ``0.0142`` -> ``+1.42%``."""
    return f"{100 * float(fraction):+.{digits}f}%"


def signed(v: float, digits: int = 2) -> str:
    """A difference with its sign: ``0.7`` -> ``+0.70``."""
    return f"{float(v):+.{digits}f}"


def si(v: float, digits: int = 3) -> str:
    """A count with an SI suffix and ``digits`` significant digits: ``12345678`` -> ``12.3M``."""
    scale, suffix = next((s for s in _SI if abs(v) >= s[0]), (1.0, ""))
    return f"{v / scale:.{digits}g}{suffix}"


def short(name: str, v: float) -> str:
    """An objective value in a one-line status: ``81.2%``, ``3.4ms``, ``12.3M macs``."""
    if name == "val_top1":
        return f"{v:.1f}%"
    if name == "latency":
        return f"{v:.1f}ms"
    return f"{si(v)} {name}"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def cell(v: Any, floatfmt: str = ".2f") -> str:
    """A table cell: empty when missing, ``true``/``false``, floats with ``floatfmt``."""
    if is_missing(v):
        return ""
    if isinstance(v, bool | np.bool_):
        return str(bool(v)).lower()
    if isinstance(v, float | np.floating):
        return format(float(v), floatfmt)
    return str(v)
