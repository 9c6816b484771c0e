"""Two worker processes on one study: SQLite, and a real PostgreSQL server the test starts
(the ``postgres_url`` fixture, tests/conftest.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd

from cvt_nas.cli import main
from cvt_nas.common.storage import default_storage_url
from cvt_nas.search import study as store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"


def _two_workers(url: str, out: Path) -> None:
    assert main(["search", str(TINY), "--out", str(out), "--storage", url, "--n-workers", "2",
                 "--trials", "4", "--sampler", "tpe", "--seed", "0", "--threads", "1", "--quiet",
                 "--set", "constraints.max_params=1M"]) == 0
    study = optuna.load_study(study_name="tiny", storage=store.make_storage(url, None))
    trials = study.get_trials(deepcopy=False)
    recorded = [t for t in trials if "record" in t.user_attrs]
    numbers = [t.user_attrs["record"]["trial"] for t in recorded]
    assert sorted(numbers) == sorted(t.number for t in recorded)  # records carry their number
    assert len(recorded) == 4 and len(set(numbers)) == 4  # none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in recorded)
    # anything else is a trial that found the study full and stopped before sampling
    extra = [t for t in trials if "record" not in t.user_attrs]
    assert all(t.user_attrs.get("surplus") and not t.params for t in extra)
    workers = Counter(t.user_attrs["worker"].split(":")[1] for t in recorded)
    assert len(workers) == 2 and os.getpid() not in map(int, workers), workers
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == sorted(numbers)
    assert set(table["train.threads"]) == {1}


def test_two_workers_share_a_sqlite_study(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    _two_workers(default_storage_url(out), out)


def test_two_workers_share_a_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    _two_workers(postgres_url, tmp_path / "tiny")
