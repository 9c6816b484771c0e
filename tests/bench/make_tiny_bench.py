"""Builds tests/data/tiny_bench/, the small real CvT-Bench table the bench tests read.

    PYTHONPATH=. python tests/bench/make_tiny_bench.py   # a few minutes on 1 thread

`cvt_nas.bench.build` trains the first 3 sampled architectures of tests/data/tiny_space.yaml
(1200 training and 1200 validation images) with seeds 0 and 1, then grows the table to 10
architectures with seed 0, 2 epochs each. Only the three table files are
kept (not the build's storage or experiment file).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cvt_nas.bench.build import build

ROOT = Path(__file__).resolve().parents[2]
SPACE = Path("tests/data/tiny_space.yaml")  # as given: the manifest records it


def main() -> None:
    out = ROOT / "tests" / "data" / "tiny_bench"
    with tempfile.TemporaryDirectory() as tmp:
        for archs, seeds in ((3, 2), (10, 1)):
            build(SPACE, tmp, archs=archs, seeds=seeds, epochs=2, threads=1)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in ("manifest.json", "archs.parquet", "table.parquet"):
            shutil.copy(Path(tmp) / name, out / name)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
