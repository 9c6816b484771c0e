"""Hosts for multi-host tests: Linux network namespaces on a private subnet.

Each host is a network namespace with one veth link to a bridge that lives in a namespace of its
own (the "switch"), so nothing is added to the machine's own network: the subnet 10.231.0.0/24
exists only between the test's namespaces and goes away with them. Every command run on a host
also gets its own UTS namespace with the host's name, so cvt-nas sees another machine
(`cvt_nas.common.proc.is_local` is false for the other hosts' workers, as on a real cluster: only
a heartbeat tells about them). The process table is shared, so the test can still signal any
process by pid; "the host dies" is SIGKILL to every process in its namespace.

Names carry the test process's pid (``cvt<pid>...``), so parallel runs do not clash; `hosts`
removes every namespace (the links go with them) when its block ends, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

SUBNET = "10.231.0"  # .1, .2, ... the hosts; the switch has no address


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why multi-host tests cannot run here (a reason for pytest.skip), or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run as root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (apt-get install iproute2 util-linux)"
    probe = f"cvt{os.getpid()}p{uuid.uuid4().hex[:4]}"
    try:
        _ip("netns", "add", probe)
        subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "true"], check=True,
                       capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"cannot create a network namespace here: {err.decode(errors='replace').strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass(frozen=True)
class Host:
    """One host: a network namespace, its address on the test subnet and its hostname."""

    netns: str
    ip: str
    hostname: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host (its network and its hostname)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]

    def popen(self, argv: Sequence[str], log: Path | IO[Any], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` on this host in a session of its own, stdout and stderr to ``log``."""
        out = log.open("w") if isinstance(log, Path) else log
        return subprocess.Popen(self.wrap(argv), env=env, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host to the end; its output is captured (text)."""
        return subprocess.run(self.wrap(argv), env=env, capture_output=True, text=True,
                              timeout=timeout)

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                             text=True, timeout=30).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> list[int]:
        """The host dies: SIGKILL to every process in it; returns their pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        return pids


@contextlib.contextmanager
def hosts(names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """Hosts ``names`` (10.231.0.1, .2, ... in that order) on one bridge; all removed at the end.

    Raises:
        subprocess.CalledProcessError: a namespace or link could not be made (`unavailable`
            tells beforehand).
    """
    tag = f"cvt{os.getpid()}"
    switch = f"{tag}sw"
    made: list[str] = []
    out: dict[str, Host] = {}
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            host = Host(f"{tag}{name}", f"{SUBNET}.{i}", f"{name}-{tag}")
            _ip("netns", "add", host.netns)
            made.append(host.netns)
            # made inside the switch namespace (names there are ours), one end moved to the host
            _ip("-n", switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            out[name] = host
        yield out
    finally:
        for host in out.values():
            host.kill()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@contextlib.contextmanager
def hosts_or_skip(names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """`hosts` for a test, which is skipped with the reason where they cannot be made."""
    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with hosts(names) as made:
        yield made
