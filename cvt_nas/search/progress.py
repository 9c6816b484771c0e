"""The progress line of a running search, and a periodic refresh of its results.

A background thread reads the study (`cvt_nas.search.study`) every few seconds and prints one
status line to stderr when it changed: trials done by status, trials running, a few points of the
Pareto front, the elapsed time and a naive estimate of the rest.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from cvt_nas.common import fmt
from cvt_nas.common.storage import redact
from cvt_nas.search.study import collect, make_storage, tally, write_results


def front_summary(records: list[dict[str, Any]], objectives: dict[str, str], limit: int = 3
                  ) -> str:
    """A few points of the current Pareto front, e.g. ``81.2%/12.3M macs``."""
    from cvt_nas.results import pareto_front, records_frame

    done = [r for r in records if r.get("status") == "complete"]
    if not done:
        return "no complete trial yet"
    front = pareto_front(records_frame(done), objectives)
    parts = []
    for _, row in front.head(limit).iterrows():
        parts.append("/".join(fmt.short(name, row[name]) for name in objectives))
    more = f" (+{len(front) - limit})" if len(front) > limit else ""
    return "front " + ", ".join(parts) + more


class Progress:
    """A background thread printing a one-line status to stderr and refreshing the results."""

    def __init__(self, storage_url: str, study: str, total: int, objectives: dict[str, str],
                 out_dir: str | Path, meta: dict[str, Any], every: float = 5.0,
                 write_every: float = 60.0, show: bool = True) -> None:
        self.url, self.name, self.total = storage_url, study, total
        self.objectives, self.out_dir, self.meta = objectives, out_dir, meta
        self.every, self.write_every, self.show = every, write_every, show
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last = ""
        self._start = time.monotonic()
        self._done_at_start: int | None = None

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, study: optuna.Study) -> str:
        t = tally(study)
        records, _ = collect(study)
        status = ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items())) or "none yet"
        return (f"[{self.name}] {t.done}/{self.total} done ({status}), {t.running} running | "
                f"{front_summary(records, self.objectives)}")

    def timing(self, done: int) -> str:
        """Elapsed time of this run and, once it finished a trial, a naive estimate of the rest."""
        if self._done_at_start is None:
            self._done_at_start = done
        elapsed = time.monotonic() - self._start
        text = f"{fmt.duration(elapsed)} elapsed"
        finished = done - self._done_at_start
        if finished > 0 and done < self.total:
            text += f", ~{fmt.duration(elapsed / finished * (self.total - done))} left"
        return text

    def _run(self) -> None:
        study = optuna.load_study(study_name=self.name,
                                  storage=make_storage(self.url, heartbeat=None))
        self.timing(tally(study).done)  # trials done before this run do not count for the rate
        last_write = time.monotonic()
        while True:
            stopping = self._stop.wait(self.every)
            try:
                self._print_if_changed(study)  # once more when stopping: the final count
                if not stopping and time.monotonic() - last_write > self.write_every:
                    write_results(study, self.out_dir, self.objectives, self.meta)
                    last_write = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a status line must never stop a search
                print(f"[{self.name}] progress: {redact(str(exc))}", file=sys.stderr, flush=True)
            if stopping:
                return

    def _print_if_changed(self, study: optuna.Study) -> None:
        text = self.line(study)
        if self.show and text != self._last:  # a new line only when the study changed
            print(f"{text} | {self.timing(tally(study).done)}", file=sys.stderr, flush=True)
            self._last = text
