"""The one check on user-given names that become path components (studies, runs, experiments).

A study name becomes ``results/<study>/``, an experiment's ``name:`` its table folder, a run
name ``runs/train/<name>/<name>.json``: a name like ``../../x`` or ``a b`` must never reach a
path. Every such name goes through `check_name`.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_LENGTH", "NAME_RULE", "check_name"]

MAX_NAME_LENGTH = 100
NAME_RULE = (f"letters, digits, '.', '_' and '-' only, not starting with '.' or '-', at most "
             f"{MAX_NAME_LENGTH} characters")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_name(value: object, what: str) -> str:
    """``value`` if it is a safe name, else a ValueError naming ``what`` and the rule.

    Args:
        value: the name as given (from a flag, a YAML field or a file name).
        what: where it came from, e.g. ``"--study"`` or ``"exp.yaml: name"``; starts the message.
    """
    if (not isinstance(value, str) or len(value) > MAX_NAME_LENGTH
            or _NAME.fullmatch(value) is None):
        raise ValueError(f"{what}: {value!r} is not a valid name; use {NAME_RULE}")
    return value
