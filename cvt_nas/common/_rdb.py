"""An Optuna RDB storage that pickles without the password in its URL.

Ray Tune pickles its searcher (and with it the study and its storage) into the experiment
folder (``tuner.pkl``, ``searcher-state-*.pkl``); Optuna's own ``RDBStorage`` keeps its URL in
what it pickles. This one keeps the URL without its password; unpickled, it takes the full URL
from the environment variable named at creation (``$CVT_NAS_STORAGE``) when that names the same
database, else it connects without a password (PostgreSQL then reads ``~/.pgpass``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from optuna.storages import RDBStorage

_PASSWORD_KEYS = ("password", "passwd", "pwd")
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):\S*@(?=[^@\s]*(?:[/?]|$))")


class SecretFreeRDBStorage(RDBStorage):
    """`optuna.storages.RDBStorage` whose pickled state holds its URL without the password."""

    def __init__(self, url: str, *, env: str, **kwargs: Any) -> None:
        self.env = env
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = without_password(self.url)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        full = os.environ.get(state["env"])
        if full and without_password(full) == state["url"]:
            state = {**state, "url": full}
        super().__setstate__(state)


def without_password(url: str) -> str:
    """``scheme://user:pw@host/db?password=pw&x=1`` -> ``scheme://user@host/db?x=1`` (the
    password may hold '@', ':' or '/'; the last '@' before the host ends it)."""
    url = _USERINFO.sub(r"\g<head>@", url)
    base, sep, query = url.partition("?")
    if not sep:
        return url
    keep = [p for p in query.split("&") if p.split("=", 1)[0].lower() not in _PASSWORD_KEYS]
    return base + ("?" + "&".join(keep) if keep else "")
