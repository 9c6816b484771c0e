"""Atomic file writes: write to a temporary file in the target's directory, then rename.

A crash, or a reader running at the same time, never sees a half-written table or plot. A
process killed in the middle of a write leaves its temporary file behind
(``.<name>.<host>-<pid>.<random>.tmp``); the next atomic write into that folder removes such
debris once its writer is gone (this machine: its process has ended; another machine, or a name
without a process: older than `STALE_AFTER_S`). A live writer's file is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates files readable by the owner only; give results the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
# .<name>.<host>-<pid>.<random>.tmp, or the older .<name>.<random>.tmp (no writer recorded)
_DEBRIS = re.compile(r"^\..+?\.(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
STALE_AFTER_S = 3600.0


def _writer_gone(name: str, path: Path, now: float) -> bool:
    m = _DEBRIS.match(name)
    if m is None:
        return False
    if m["host"] == _HOST and m["pid"] is not None:
        pid = int(m["pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_debris(folder: str | Path) -> list[Path]:
    """Remove temporary files that killed atomic writes left in ``folder``; returns them."""
    folder, now, removed = Path(folder), time.time(), []
    try:
        names = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    except OSError:
        return []
    for path in names:
        if _writer_gone(path.name, path, now):
            with contextlib.suppress(OSError):  # another writer cleaned it first
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is
    removed if the block raises. Debris of killed writes in that directory is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_debris(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
