"""Number formatting: one module, and the texts it writes into committed tables stay the same."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cvt_nas.common import fmt


def test_counts_read_as_in_the_ablation_tables() -> None:
    assert fmt.params(19_997_480) == "20.00 M"
    assert fmt.params(820_234.0) == "0.82 M"  # a float from a column with gaps
    assert fmt.macs(6_643_074_560) == "6.643 G"
    assert fmt.macs(100_000_000) == "0.100 G"  # G from 0.1 G up
    assert fmt.macs(99_999_999) == "100.0 M"
    assert fmt.macs(27_971_584) == "28.0 M"
    assert fmt.percent(0.0142) == "+1.42%" and fmt.percent(-0.0001) == "-0.01%"
    assert fmt.signed(0.7) == "+0.70" and fmt.signed(-2.184) == "-2.18" and fmt.signed(0) == "+0.00"


@pytest.mark.parametrize(("value", "text"), [
    (4.0, "4"), (0.5, "0.5"), (3, "3"), ("dw_bn", "dw_bn"), (True, "True"), (1e20, str(int(1e20))),
])
def test_number_drops_a_trailing_zero_only(value: object, text: str) -> None:
    assert fmt.number(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (12_345_678, "12.3M"), (999, "999"), (1000, "1k"), (1_500_000_000, "1.5G"), (-2_000_000, "-2M"),
    (0.123456, "0.123"),
])
def test_si(value: float, text: str) -> None:
    assert fmt.si(value) == text


def test_short_and_duration_match_the_progress_line() -> None:
    """The search's progress line (`search.study._short`/`_duration` today) reads the same."""
    from cvt_nas.search import study

    old_short = getattr(study, "_short", None)
    old_duration = getattr(study, "_duration", None)
    for name in ("val_top1", "latency", "macs", "params"):
        for value in (0.0, 1.25, 81.234, 999.9, 1000.0, 15_726_080, 2.5e9, -3e6):
            text = fmt.short(name, value)
            if old_short is not None:  # moved elsewhere by another change: keep the values below
                assert text == old_short(name, value)
    assert fmt.short("val_top1", 81.26) == "81.3%" and fmt.short("latency", 3.44) == "3.4ms"
    assert fmt.short("macs", 15_726_080) == "15.7M macs"
    for seconds in (0, 0.4, 59.4, 59.6, 60, 185, 3599.4, 3600, 7620, 90_000):
        if old_duration is not None:
            assert fmt.duration(seconds) == old_duration(seconds)
    assert (fmt.duration(42), fmt.duration(185), fmt.duration(7620)) == (
        "42 s", "3 min 05 s", "2 h 07 min")


@pytest.mark.parametrize("value", [None, math.nan, np.float32("nan"), pd.NA, pd.NaT])
def test_missing_values_are_empty_cells(value: object) -> None:
    assert fmt.is_missing(value) and fmt.cell(value) == ""


def test_cells() -> None:
    assert not fmt.is_missing(0) and not fmt.is_missing("") and not fmt.is_missing(math.inf)
    assert fmt.cell(np.True_) == "true" and fmt.cell(False) == "false"
    assert fmt.cell(np.float64(1.005), ".1f") == "1.0" and fmt.cell(3) == "3"
    assert fmt.cell(2.5) == "2.50"
