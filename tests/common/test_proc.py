"""Worker tags: this machine's dead workers are told apart by pid and start time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cvt_nas.common.proc import (
    alive,
    parse_tag,
    start_time,
    threads_per_trial,
    usable_cpus,
    worker_tag,
)


def test_a_running_process_is_alive_and_a_finished_one_is_not() -> None:
    me = worker_tag()
    host, pid, start = parse_tag(me)
    assert (host, pid) == (socket.gethostname(), os.getpid()) and start.isdigit()
    assert alive(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = worker_tag(child.pid)
    child.wait()
    assert not alive(tag)
    assert start_time(child.pid) is None


def test_a_reused_pid_is_not_the_same_worker() -> None:
    host, pid, start = parse_tag(worker_tag())
    assert not alive(f"{host}:{pid}:{int(start) + 1}")  # same pid, another start time


def test_other_machines_and_malformed_tags_cannot_be_told_dead() -> None:
    assert alive("elsewhere:1:1")  # only a heartbeat can tell
    assert alive(f"{socket.gethostname()}:notapid:")
    assert parse_tag("h:12:") == ("h", 12, "") and parse_tag("h") == ("h", None, "")


def test_start_time_survives_a_process_name_with_spaces_and_parentheses() -> None:
    """The name in /proc/<pid>/stat is free text; the fields after it are found from the last
    ')'."""
    code = ("import sys; print(flush=True); sys.stdin.readline(); "
            "open('/proc/self/comm', 'w').write('a) b (c'); print(flush=True); "
            "sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        child.stdout.readline()
        before = start_time(child.pid)
        child.stdin.write("\n")
        child.stdin.flush()
        child.stdout.readline()  # renamed itself
        assert "a) b (c" in open(f"/proc/{child.pid}/stat").read()
        assert before is not None and start_time(child.pid) == before
        assert alive(worker_tag(child.pid))
    finally:
        child.kill()
        child.wait()


def test_cpu_name_is_the_model_line_of_proc_cpuinfo() -> None:
    from pathlib import Path

    from cvt_nas.common.proc import cpu_name

    models = [line.split(":", 1)[1].strip() for line in
              Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    assert cpu_name() == (models[0] if models else cpu_name()) and cpu_name()


def test_a_trial_thread_tag_lives_and_dies_with_its_process() -> None:
    """``--pack`` loops tag their trials ``host:pid:start#thread``: distinct tags (their own
    sampler streams), one liveness (the process's)."""
    me, first, second = worker_tag(), worker_tag(thread=0), worker_tag(thread=1)
    assert first == f"{me}#0" and second == f"{me}#1" and len({me, first, second}) == 3
    assert parse_tag(second) == parse_tag(me) and alive(second)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = worker_tag(child.pid, thread=3)
    child.wait()
    assert not alive(tag)


def test_threads_per_trial_share_the_cores_and_never_drop_to_zero() -> None:
    cores = usable_cpus()
    assert cores >= 1 and threads_per_trial(1) == cores
    assert threads_per_trial(1, 2) == max(1, cores // 2)
    assert threads_per_trial(cores * 4, 4) == 1
