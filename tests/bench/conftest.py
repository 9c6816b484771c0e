"""Fixtures of the bench tests: the small real table tests/data/tiny_bench/ (see
make_tiny_bench.py, which built it) and copies of it that a test may break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_table() -> Path:
    """The committed table directory (read-only: use `table_copy` to change it)."""
    return ROOT / "tests" / "data" / "tiny_bench"


@pytest.fixture
def table_copy(tiny_table: Path, tmp_path: Path) -> Path:
    """A copy of the table that a test may break."""
    out = tmp_path / "copy"
    shutil.copytree(tiny_table, out)
    return out
