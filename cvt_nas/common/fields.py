"""A config dataclass from a plain mapping: the one check for unknown fields and the one way a
validation error is prefixed with where the data came from (`CvTConfig`, `TrainConfig`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["check_fields", "from_fields"]


def check_fields(kind: str, keys: Iterable[Any], allowed: Collection[str],
                 source: str | None = None) -> None:
    """Refuse keys that are not fields of ``kind`` (a class name), listing the allowed ones, so
    a typo in a YAML file or an override is one line with the fix.

    Raises:
        ValueError: ``[source: ]unknown <kind> field(s) [...]; allowed: [...]``.
    """
    unknown = sorted(map(str, set(keys) - set(allowed)))
    if unknown:
        where = f"{source}: " if source is not None else ""
        raise ValueError(f"{where}unknown {kind} field(s) {unknown}; allowed: {sorted(allowed)}")


def from_fields(cls: type[T], data: Mapping[str, Any], source: str,
                allowed: Collection[str]) -> T:
    """``cls(**data)`` after `check_fields`; the class's own validation errors are prefixed
    with ``source`` (a file, a recipe) so the message says where the bad value came from.

    Raises:
        ValueError: an unknown field or an invalid value, naming ``source``.
    """
    check_fields(cls.__name__, data, allowed, source)
    try:
        return cls(**dict(data))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
