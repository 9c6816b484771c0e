"""Argument helpers shared by subcommands."""

from __future__ import annotations

from typing import Any

import yaml


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["depth=[1,2,3]", "act=gelu"]`` -> ``{"depth": [1, 2, 3], "act": "gelu"}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected field=value, e.g. --set kv_stride=1")
        out[key.strip()] = yaml.safe_load(value)
    return out
