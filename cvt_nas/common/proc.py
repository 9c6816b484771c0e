"""Which process ran a trial, and is it still running: the worker tag ``host:pid:start``.

A trial stores the tag of the process that runs it. On the same machine a later process can tell
whether that worker is gone: its pid no longer exists, or the pid now belongs to another process
(a different start time, read from ``/proc/<pid>/stat``). A worker on another machine cannot be
checked this way; only the storage's heartbeat tells about it. Inside `trial_tag`, the storages
write the tag in the same commit that makes a trial RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["WorkerTag", "alive", "cpu_name", "cpu_share", "current_tag", "is_local", "parse_tag",
           "start_time", "threads_per_trial", "trial_tag", "usable_cpus", "worker_tag"]


class WorkerTag(NamedTuple):
    """The parts of a worker tag (``start`` is empty where ``/proc`` is missing)."""

    host: str
    pid: int | None
    start: str


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of
    ``/proc/<pid>/stat``), or None when there is no such process or no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the command name (field 2) is in parentheses and may hold spaces or ')'
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_tag(pid: int | None = None, thread: int | None = None) -> str:
    """``host:pid:start`` of this process (or of ``pid``), unique on a machine across pid reuse;
    ``host:pid:start#thread`` for one of several trial threads of a process (``--pack``)."""
    pid = os.getpid() if pid is None else pid
    tag = f"{socket.gethostname()}:{pid}:{start_time(pid) or ''}"
    return tag if thread is None else f"{tag}#{thread}"


_TAG = threading.local()  # the worker tag of this thread's trials (`trial_tag`)


@contextlib.contextmanager
def trial_tag(tag: str) -> Iterator[None]:
    """Trials this thread creates or claims meanwhile carry ``worker: tag`` from their first
    commit (both storages `cvt_nas.common.storage.open_storage` makes, `cvt_nas.common._rdb`)."""
    before = getattr(_TAG, "value", None)
    _TAG.value = tag
    try:
        yield
    finally:
        _TAG.value = before


def current_tag() -> str | None:
    """The tag `trial_tag` set for this thread, if any."""
    return getattr(_TAG, "value", None)


def parse_tag(tag: str) -> WorkerTag:
    """Split a tag made by `worker_tag` (a malformed pid reads as None; a thread is dropped:
    a process's threads live and die with it)."""
    host, _, rest = tag.partition(":")
    pid, _, start = rest.partition(":")
    start = start.partition("#")[0]
    return WorkerTag(host, int(pid) if pid.isdigit() else None, start)


def is_local(tag: str) -> bool:
    """Did the worker named by ``tag`` run on this machine?"""
    return parse_tag(tag).host == socket.gethostname()


def alive(tag: str) -> bool:
    """Is the worker named by ``tag`` still running? True when it cannot be told (another
    machine, a malformed tag): only a heartbeat can tell about those."""
    host, pid, start = parse_tag(tag)
    if host != socket.gethostname() or pid is None:
        return True
    if not os.path.isdir("/proc"):  # not Linux: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = start_time(pid)
    if now is None:
        return False
    return not start or now == start  # another start time: the pid was reused


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity on Linux, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_trial(workers: int, per_worker: int = 1) -> int:
    """Torch threads of one trial when ``workers`` processes each run ``per_worker`` trials at
    once (``--pack``) on this machine's cores: an equal share, at least 1."""
    return max(1, usable_cpus() // (workers * per_worker))


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``), for figures that depend on it."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_share(cpu_s: float, wall_s: float, threads: int | float | None) -> float | None:
    """CPU seconds a process used over the ``wall_s x threads`` it could have: near 1 for a
    CPU-bound run alone on its cores, far below when it shared them (None without a wall time
    or a thread count). Only this process counts: DataLoader worker processes do not."""
    if not wall_s or not threads or threads != threads:  # NaN threads
        return None
    return float(cpu_s) / (float(wall_s) * float(threads))
