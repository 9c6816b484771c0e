"""The one unknown-field check and source prefix that `CvTConfig` and `TrainConfig` share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cvt_nas.common.fields import check_fields, from_fields


@dataclass(frozen=True)
class Pair:
    a: int = 0
    b: int = 0

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError(f"field 'a': must be >= 0, got {self.a}")


def test_unknown_keys_are_one_sorted_line_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as err:
        check_fields("Pair", ["z", "a", "c"], ("b", "a"), "p.yaml")
    assert str(err.value) == "p.yaml: unknown Pair field(s) ['c', 'z']; allowed: ['a', 'b']"
    with pytest.raises(ValueError) as err:
        check_fields("Pair", {"c": 1}, {"a", "b"})
    assert str(err.value) == "unknown Pair field(s) ['c']; allowed: ['a', 'b']"
    check_fields("Pair", {"a": 1}, {"a", "b"})  # known keys pass


def test_from_fields_builds_or_names_the_source() -> None:
    assert from_fields(Pair, {"a": 2}, "p.yaml", ("a", "b")) == Pair(a=2)
    with pytest.raises(ValueError, match=r"^p.yaml: unknown Pair field\(s\) \['x'\]"):
        from_fields(Pair, {"x": 2}, "p.yaml", ("a", "b"))
    with pytest.raises(ValueError) as err:
        from_fields(Pair, {"a": -1}, "p.yaml", ("a", "b"))
    assert str(err.value) == "p.yaml: field 'a': must be >= 0, got -1"
