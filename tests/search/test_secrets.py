"""A PostgreSQL password never reaches a file, a pickle or the terminal.

A real server with a password user; a tiny search on the Optuna backend (the password on the
command line, and as ``?password=`` in $CVT_NAS_STORAGE), one on the Ray backend (a real local
cluster), a tiny ablation and `cvt-nas report`. Then every file under their output folders, Ray's
experiment folder and Ray's session logs, and everything printed, is searched for the password.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import PostgresServer, RayCluster

from cvt_nas.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_space.yaml"
EXPERIMENT = ROOT / "experiments" / "table7_kv_stride.yaml"
SECRET = "s3cr3t-Pw"  # what must never show; the password is SECRET + "@x" ('@' URL-encoded)
pytestmark = pytest.mark.slow  # a database server, a Ray cluster, three tiny runs


def _hits(folder: Path) -> list[str]:
    """Files under ``folder`` that hold the secret (parquet also decoded: it is compressed)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except OSError:  # a socket, or a file removed while we look
            continue
        if SECRET.encode() in data:
            found.append(str(path))
        elif path.suffix == ".parquet" and SECRET in pd.read_parquet(path).to_csv():
            found.append(str(path))
    return found


def test_no_password_in_any_output_pickle_or_message(
        postgres: PostgresServer, ray_cluster: RayCluster, tmp_path: Path,
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    postgres.add_user("carol", SECRET + "@x")
    url = postgres.url("carol", SECRET + "%40x")
    bare = postgres.url("carol")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    search = ["search", str(TINY), "--trials", "2", "--sampler", "random", "--seed", "0",
              "--threads", "1", "--quiet"]

    assert main([*search, "--out", str(tmp_path / "optuna"), "--storage", url,
                 "--study", "via-flag"]) == 0
    monkeypatch.setenv("CVT_NAS_STORAGE", f"{bare}?password={SECRET}%40x")
    assert main([*search, "--out", str(tmp_path / "optuna-env"), "--study", "via-env"]) == 0
    monkeypatch.delenv("CVT_NAS_STORAGE")
    assert main([*search, "--out", str(tmp_path / "ray"), "--storage", url, "--study", "ray",
                 "--backend", "ray", "--address", ray_cluster.address]) == 0
    assert main(["ablate", str(EXPERIMENT), "--out", str(tmp_path / "ablation"), "--storage", url,
                 "--seeds", "1", "--threads", "1", "--set", "train_subset=256",
                 "--set", "epochs=1", "--set", "val_fraction=0.005"]) == 0
    for run in ("optuna", "optuna-env", "ray"):
        assert main(["report", str(tmp_path / run)]) == 0
    # a password with a raw '@' is not a valid URL: the error must not show any part of it
    raw = f"postgresql+psycopg2://carol:{SECRET}@x@127.0.0.1:{postgres.port}/postgres"
    assert main([*search, "--out", str(tmp_path / "bad"), "--storage", raw]) == 2

    ray_files = list((tmp_path / "ray" / "ray").rglob("*.pkl"))
    assert any(p.name == "tuner.pkl" for p in ray_files)  # Ray did pickle its experiment
    assert any(p.name.startswith("searcher-state") for p in ray_files)
    assert (tmp_path / "optuna" / "study.yaml").exists()
    assert (tmp_path / "ablation" / "command.txt").exists()
    assert _hits(tmp_path) == []
    assert _hits(ray_cluster.temp) == []
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err
    assert "carol:***@" in (tmp_path / "optuna" / "study.yaml").read_text()
