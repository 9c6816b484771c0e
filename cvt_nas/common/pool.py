"""One pool of worker processes on a study, for the search and the ablations alike.

``run_workers(target, args, n, ...)`` runs ``target(*args, index)`` in ``n`` spawned processes
(in this process when ``n`` is 1) and waits for them. What it guarantees:

* Stopping: SIGINT or SIGTERM of this process is forwarded (as SIGTERM) to every worker at once.
  A worker turns the signal into `Interrupted` (a ``KeyboardInterrupt``), which unwinds its trial:
  the target marks that trial FAIL (and may queue it again) so the study stays resumable. Workers
  that have not stopped after ``stop_grace`` seconds are killed. Then `Interrupted` is raised
  here; the command line exits with 128 + the signal's number (130, 143) and one line.
  A signal can land while a finalizer runs (a ``__del__``, a weakref callback of the garbage
  collector), where Python swallows exceptions and prints a traceback: that `Interrupted` is
  kept quietly instead and raised again by `raise_pending_stop`, which the training loop calls
  every step.
* Dying workers: a worker that dies (``kill -9``, the OOM killer) leaves its trial RUNNING; the
  surviving workers fail it and retry it (the target's own loop, through
  `cvt_nas.common.storage.fail_dead_trials`). When no worker is left while ``unfinished()`` says
  work remains, a replacement is started (at most ``n`` in all); at the end one line names the
  lost workers (pid, signal). If they could not finish the work, `WorkersLost` says so. A worker
  stopped by its own SIGTERM/SIGINT is not replaced (someone asked it to stop).
* Environment: ``env(index)`` is set in worker ``index``'s environment before its target runs
  (and before it imports torch), e.g. its own ``CUDA_VISIBLE_DEVICES``; with ``env`` every
  worker is a process, one too.
* A worker whose parent dies gets SIGTERM (Linux ``PR_SET_PDEATHSIG``), so a killed search
  leaves no orphan training on.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

__all__ = ["STOP", "Interrupted", "Lost", "WorkersLost", "raise_pending_stop", "run_loops",
           "run_workers", "stop_on_signals"]

STOP = threading.Event()  # set once this process was asked to stop (loops check it)
STOP_GRACE = 30.0  # seconds a worker gets to leave its trial resumable after a stop
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
_SWALLOWED: list[Interrupted] = []  # stops a finalizer swallowed, for `raise_pending_stop`
_SIGNALLED: list[int] = []  # the signal of this process's stop, for `stop_exception`


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; the process should exit with `exit_code`."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; running trials were "
                         "failed so that the study can resume: re-run the same command")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class WorkersLost(RuntimeError):
    """Every worker died, replacements too, while work remained (the message is one line)."""


@dataclass(frozen=True)
class Lost:
    """A worker that ended without being asked to: its pid and how it ended."""

    index: int
    pid: int
    exitcode: int

    @property
    def stopped(self) -> int | None:
        """The signal it was stopped by (SIGINT, SIGTERM: it left its trial resumable, and is
        not replaced: someone asked it to stop), else None."""
        signum = self.exitcode - 128
        return signum if signum in _SIGNALS else None

    def __str__(self) -> str:
        code = self.exitcode
        if code < 0 or code > 128:  # killed by a signal, or stopped by one (128 + signum)
            try:
                return f"pid {self.pid} ({signal.Signals(-code if code < 0 else code - 128).name})"
            except ValueError:
                pass
        return f"pid {self.pid} (exit code {code})"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into `Interrupted` in this (main) thread; ignore repeats,
    so that the cleanup they start is not itself interrupted (a repeat of a stop that a
    finalizer swallowed is raised). A no-op off the main thread.
    Clears `STOP` first (an earlier stop of this process is over).

    An `Interrupted` raised inside a finalizer (Python swallows it there, printing a traceback)
    is kept silently for `raise_pending_stop` instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if STOP.is_set() and not _SWALLOWED:  # a repeat: the first one is unwinding
            return
        _SWALLOWED.clear()  # a repeat of a swallowed one: raise it now
        _SIGNALLED[:] = [signum]
        STOP.set()
        raise Interrupted(signum)

    default = sys.unraisablehook

    def unraisable(u: Any) -> None:
        if isinstance(u.exc_value, Interrupted):
            _SWALLOWED.append(u.exc_value)
        else:
            default(u)

    STOP.clear()
    _SWALLOWED.clear()
    _SIGNALLED.clear()
    sys.unraisablehook = unraisable
    try:
        with _handlers(handler):
            yield
            raise_pending_stop()  # swallowed after the last step: still a stop (exit 130/143)
    finally:
        sys.unraisablehook = default
        _SWALLOWED.clear()


def raise_pending_stop() -> None:
    """Raise the `Interrupted` that a finalizer swallowed (`stop_on_signals`), in the main
    thread; nothing otherwise. Cheap enough to call every training step."""
    if _SWALLOWED and threading.current_thread() is threading.main_thread():
        raise _SWALLOWED.pop()


def stop_exception() -> Interrupted:
    """The `Interrupted` of this process's stop (by its signal; SIGINT when `STOP` was set
    otherwise), for raising again where another error replaced it."""
    return Interrupted(_SIGNALLED[-1] if _SIGNALLED else signal.SIGINT)


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _child(target: Callable[..., Any], args: tuple[Any, ...], index: int, parent: int,
           env: Mapping[str, str]) -> None:
    """A worker process: die with the parent, take its environment, stop on a signal, run the
    target."""
    os.environ.update(env)  # before the target imports torch (CUDA reads it when it starts)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        sys.exit(128 + signal.SIGTERM)
    try:
        with stop_on_signals():
            target(*args, index)
    except Interrupted as exc:
        sys.exit(exc.exit_code)


def run_loops(n: int, loop: Callable[[int, threading.Event], None],
              abandon: Callable[[], None], name: str = "cvt-nas-trial") -> None:
    """Run ``loop(j, stop)`` for j < ``n`` in threads of this process (several trials at once
    on one device) and wait for them.

    A loop that raises sets ``stop`` (the others end after their current trial; the
    process-wide `STOP` stays for signals, so Ctrl-C still works) and is raised here once every
    loop has ended. A ``KeyboardInterrupt`` here (a stop signal: this is the main thread) calls
    ``abandon()``, which must leave the loops' running trials resumable, and propagates; the
    threads are daemons and end with the process.
    """
    errors: list[BaseException] = []
    stop = threading.Event()

    def body(j: int) -> None:
        try:
            loop(j, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=body, args=(j,), name=f"{name}-{j}", daemon=True)
               for j in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
                raise_pending_stop()
    except KeyboardInterrupt:
        stop.set()
        abandon()
        raise
    if errors:
        raise errors[0]


def run_workers(target: Callable[..., Any], args: tuple[Any, ...], n: int, *,
                unfinished: Callable[[], bool], label: str,
                stop_grace: float = STOP_GRACE,
                env: Callable[[int], Mapping[str, str]] | None = None) -> list[Lost]:
    """Run ``target(*args, index)`` in ``n`` workers until they end; returns the lost ones.

    Args:
        target: a module-level function (it is pickled for ``spawn``); it must end when the
            work is done and leave its trial resumable on ``KeyboardInterrupt``.
        args: its arguments before the worker index (picklable).
        n: number of workers; 1 runs the target in this process (unless ``env`` is given).
        unfinished: does work remain? Asked when no worker is left and one was lost.
        label: what runs, for messages (``cvt-nas search``).
        stop_grace: seconds between forwarding a stop and killing the workers still running.
        env: environment variables of worker ``index`` (called here, in the parent).

    Raises:
        Interrupted: this process got SIGINT/SIGTERM (after every worker ended).
        WorkersLost: no worker is left, the replacements are used up and work remains.
    """
    STOP.clear()
    if n <= 1 and env is None:
        with stop_on_signals():
            target(*args, 0)
        return []
    ctx = multiprocessing.get_context("spawn")
    live: dict[Any, tuple[int, Any]] = {}  # sentinel -> (index, process)
    asked: list[int] = []  # signals received

    def start(index: int) -> None:
        p = ctx.Process(target=_child, args=(target, args, index, os.getpid(),
                                             dict(env(index)) if env else {}),
                        name=f"cvt-nas-worker-{index}")
        p.start()
        live[p.sentinel] = (index, p)

    def forward(kill: bool) -> None:
        for _, p in list(live.values()):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(p.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def on_signal(signum: int, frame: Any) -> None:
        asked.append(signum)
        STOP.set()
        forward(kill=len(asked) > 1)  # a second Ctrl-C does not wait for the workers

    lost: list[Lost] = []
    replaced = 0
    stop_at: float | None = None
    on_main = threading.current_thread() is threading.main_thread()
    with _handlers(on_signal) if on_main else contextlib.nullcontext():
        for i in range(n):
            start(i)
        while live:
            for sentinel in wait(list(live), timeout=0.5):
                index, p = live.pop(sentinel)
                p.join()
                if p.exitcode != 0 and not asked:
                    lost.append(Lost(index, p.pid, p.exitcode))
            if asked:
                stop_at = stop_at or time.monotonic() + stop_grace
                if time.monotonic() > stop_at:
                    forward(kill=True)
                continue
            died = [x for x in lost if x.stopped is None]
            if not live and died and replaced < n and unfinished():
                start(n + replaced)  # an index past the first n: its own sampler stream
                replaced += 1
    if asked:
        raise Interrupted(asked[0])
    if lost:
        names = ", ".join(map(str, lost))
        if unfinished():
            if all(x.stopped for x in lost):  # its workers were stopped, not this process
                raise Interrupted(lost[0].stopped or signal.SIGTERM)
            raise WorkersLost(f"{label}: lost {len(lost)} worker(s) ({names}), replacements "
                              "included, and work remains; re-run the same command to resume")
        print(f"{label}: lost {len(lost)} worker(s): {names}; their trials were failed and "
              "run again by the others", file=sys.stderr, flush=True)
    return lost
