"""Atomic writes: a killed writer's temporary file is cleaned by the next write of its folder,
a live writer's never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cvt_nas.common.atomic import STALE_AFTER_S, atomic_write_text, remove_debris

WRITER = """
import sys, time
from cvt_nas.common.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half a table")
    print("writing", flush=True)
    time.sleep(120)
"""


def _writer(target: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    return proc


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_a_killed_writes_debris_goes_with_the_next_write(tmp_path: Path) -> None:
    killed = _writer(tmp_path / "trials.csv")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    left = _debris(tmp_path)
    assert len(left) == 1 and left[0].startswith(".trials.csv.")
    live = _writer(tmp_path / "pareto.md")  # still writing: its file must survive
    try:
        atomic_write_text(tmp_path / "study.yaml", "x: 1\n")
        remaining = _debris(tmp_path)
        assert len(remaining) == 1 and remaining[0].startswith(".pareto.md.")
        assert not (tmp_path / "trials.csv").exists()  # the cut write never became the file
        assert (tmp_path / "study.yaml").read_text() == "x: 1\n"
    finally:
        live.kill()
        live.wait(timeout=60)


def test_old_unattributed_debris_goes_after_an_hour_and_other_files_stay(tmp_path: Path) -> None:
    old, fresh = tmp_path / ".trials.csv.k2j3h4g5.tmp", tmp_path / ".pareto.md.a1b2c3d4.tmp"
    mine = tmp_path / ".notes.tmp"  # not a name atomic writes make
    for p in (old, fresh, mine):
        p.write_text("x")
    hour_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old, (hour_ago, hour_ago))
    os.utime(mine, (hour_ago, hour_ago))
    assert remove_debris(tmp_path) == [old]
    assert fresh.exists() and mine.exists()
