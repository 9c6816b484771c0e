"""The worker pool with real processes and real signals (targets that train nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cvt_nas.common.pool import (
    STOP,
    Interrupted,
    WorkersLost,
    raise_pending_stop,
    run_workers,
    stop_on_signals,
)

HERE = Path(__file__).resolve().parent


def _die(folder: str, index: int) -> None:
    Path(folder, f"started-{index}").touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _die_unless_replacement(folder: str, n: int, index: int) -> None:
    if index < n:
        _die(folder, index)
    Path(folder, "done").touch()


def _loop(folder: str, index: int, signal_self: bool) -> None:
    Path(folder, f"started-{index}").touch()
    try:
        if signal_self:
            os.kill(os.getpid(), signal.SIGTERM)
        while True:
            time.sleep(0.05)
    finally:
        Path(folder, f"stopped-{index}").touch()  # what a trial's cleanup would do


def _until_stopped(folder: str, index: int) -> None:
    _loop(folder, index, signal_self=False)


def _stop_self(folder: str, index: int) -> None:
    _loop(folder, index, signal_self=True)


def _deaf(folder: str, index: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(folder, f"started-{index}").touch()
    while True:
        time.sleep(0.05)


def _signal_when(folder: Path, names: list[str], signum: int) -> threading.Thread:
    """SIGTERM this process once the files exist (the workers are up)."""
    def send() -> None:
        while not all((folder / n).exists() for n in names):
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _note_env(folder: str, index: int) -> None:
    Path(folder, f"env-{index}").write_text(
        f"{os.environ.get('CVT_NAS_TEST_GPU')} {os.getpid()} {'torch' in sys.modules}")


@pytest.mark.parametrize("n", [1, 3])
def test_each_worker_gets_its_own_environment_before_it_runs(tmp_path: Path, n: int) -> None:
    """``env``: worker i's variables are set before the target (and torch) runs, in a process
    of its own even when there is one worker (this one's environment is left alone)."""
    assert run_workers(_note_env, (str(tmp_path),), n, label="test", unfinished=lambda: False,
                       env=lambda i: {"CVT_NAS_TEST_GPU": "ab"[i % 2]}) == []
    seen = [(tmp_path / f"env-{i}").read_text().split() for i in range(n)]
    assert [gpu for gpu, _, _ in seen] == ["a", "b", "a"][:n]
    assert all(int(pid) != os.getpid() for _, pid, _ in seen)
    assert {torch for _, _, torch in seen} == {"False"}
    assert "CVT_NAS_TEST_GPU" not in os.environ


def test_a_dead_worker_is_replaced_while_work_remains(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lost = run_workers(_die_unless_replacement, (str(tmp_path), 2), 2, label="test",
                       unfinished=lambda: not (tmp_path / "done").exists())
    assert sorted((x.index, x.exitcode) for x in lost) == [(0, -9), (1, -9)]
    assert (tmp_path / "done").exists()  # by the replacement (index 2)
    err = capsys.readouterr().err
    names = ", ".join(f"pid {x.pid} (SIGKILL)" for x in lost)
    assert err == f"test: lost 2 worker(s): {names}; their trials were failed and run again " \
                  "by the others\n"


def test_replacements_are_bounded_and_the_loss_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(WorkersLost) as err:
        run_workers(_die, (str(tmp_path),), 2, label="test", unfinished=lambda: True)
    text = str(err.value)
    assert text.startswith("test: lost 4 worker(s) (pid ") and "\n" not in text
    assert text.count("(SIGKILL)") == 4  # 2 workers + 2 replacements, then it gives up
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"started-{i}" for i in range(4)]


def test_nothing_is_replaced_when_the_work_is_done(tmp_path: Path) -> None:
    lost = run_workers(_die, (str(tmp_path),), 2, label="test", unfinished=lambda: False)
    assert len(lost) == 2 and not (tmp_path / "started-2").exists()


def test_workers_stopped_one_by_one_are_not_replaced(tmp_path: Path) -> None:
    """A SIGTERM sent to each worker (not to the pool) stops them: nothing is replaced."""
    with pytest.raises(Interrupted) as err:
        run_workers(_stop_self, (str(tmp_path),), 2, label="test", unfinished=lambda: True)
    assert err.value.exit_code == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "started-0", "started-1", "stopped-0", "stopped-1"]


def test_sigterm_reaches_every_worker_and_each_cleans_up(tmp_path: Path) -> None:
    _signal_when(tmp_path, ["started-0", "started-1"], signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        run_workers(_until_stopped, (str(tmp_path),), 2, label="test", unfinished=lambda: True)
    assert err.value.exit_code == 143 and str(err.value).startswith("stopped by SIGTERM; ")
    assert (tmp_path / "stopped-0").exists() and (tmp_path / "stopped-1").exists()


def test_a_worker_that_ignores_the_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    _signal_when(tmp_path, ["started-0", "started-1"], signal.SIGINT)
    with pytest.raises(Interrupted) as err:
        run_workers(_deaf, (str(tmp_path),), 2, label="test", unfinished=lambda: True,
                    stop_grace=1.0)
    assert err.value.exit_code == 130


def test_one_worker_runs_here_and_a_signal_interrupts_it(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    _signal_when(tmp_path, ["started-0"], signal.SIGTERM)
    with pytest.raises(Interrupted):
        run_workers(_until_stopped, (str(tmp_path),), 1, label="test", unfinished=lambda: True)
    assert (tmp_path / "stopped-0").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_pool import _until_stopped; "
            "from cvt_nas.common.pool import run_workers; "
            "run_workers(_until_stopped, (sys.argv[2],), 2, label='t', unfinished=lambda: 1)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(HERE), str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"started-{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    parent.kill()
    parent.wait()
    while not all((tmp_path / f"stopped-{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)


class _SignalledWhileCollected:
    """Sends this process SIGTERM from its finalizer: the handler runs inside ``__del__``."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.01)  # bytecodes for the handler to run at, still inside the finalizer


def test_a_stop_that_lands_in_a_finalizer_is_raised_at_the_next_step_without_a_traceback(
        capfd: pytest.CaptureFixture[str]) -> None:
    # CI once printed "Exception ignored in: <function WeakValueDictionary...remove>" with the
    # Interrupted's traceback, and the worker trained on
    reached = []
    try:
        with pytest.raises(Interrupted) as stopped, stop_on_signals():
            _SignalledWhileCollected()  # collected at once: the Interrupted is swallowed
            assert STOP.is_set()
            reached.append(True)
            raise_pending_stop()  # what the training loop calls every step
        assert reached  # not raised outside the finalizer
        assert stopped.value.exit_code == 128 + signal.SIGTERM
        raise_pending_stop()  # raised once
        with pytest.raises(Interrupted), stop_on_signals():
            _SignalledWhileCollected()  # and no training step follows: raised on leaving
        with pytest.raises(Interrupted), stop_on_signals():
            _SignalledWhileCollected()
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C is not ignored as a repeat
            time.sleep(1)  # not reached: the handler raises here
            reached.append(False)
        assert reached[-1] is True
    finally:
        STOP.clear()
    assert "Traceback" not in capfd.readouterr().err
