"""Markdown tables: the one writer serves Pareto tables and the ablation tables."""

from __future__ import annotations

import pandas as pd

from cvt_nas.results import to_markdown


def test_a_cell_writer_and_plain_rules() -> None:
    df = pd.DataFrame({"row": ["a", "b|c"], "macs": [6.6e9, None], "ok": [True, None]})

    def cell(col: str, v: object) -> str:
        return f"<{col}:{v}>"

    text = to_markdown(df, ["row", "ok", "macs"], cell=cell, align=False)
    assert text.splitlines() == [
        "| row | ok | macs |",
        "|---|---|---|",
        "| <row:a> | <ok:True> | <macs:6600000000.0> |",
        "| <row:b\\|c> |  |  |",  # missing values never reach the writer; pipes are escaped
    ]


def test_default_cells_right_align_numbers() -> None:
    df = pd.DataFrame({"name": ["x"], "top1": [81.256], "flag": [False]})
    assert to_markdown(df, title="T").splitlines() == [
        "## T", "", "| name | top1 | flag |", "| :--- | ---: | :--- |", "| x | 81.26 | false |"]
