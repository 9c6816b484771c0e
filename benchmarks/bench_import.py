"""Import cost: `import cvt_nas` against `import torch, timm`, fresh interpreters, alternated.

    python benchmarks/bench_import.py [--repeats 5]

`import cvt_nas` must stay light (no torch, no timm) so that `cvt-nas --help`, space checks and
table queries start at once; this prints the median wall time of each import in a new process
and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from cvt_nas.common.proc import cpu_name

IMPORTS = {"cvt_nas": "import cvt_nas", "torch+timm": "import torch, timm"}


def time_import(code: str) -> float:
    """Wall seconds of a fresh interpreter that runs ``code`` and exits."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    time_import("pass")  # warm the page cache for the interpreter itself
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(args.repeats):
        for name, code in IMPORTS.items():  # alternated, so load drifts hit both
            times[name].append(time_import(code))
    base = statistics.median(time_import("pass") for _ in range(args.repeats))
    print(f"{cpu_name()}; python {sys.version.split()[0]}; median of {args.repeats}")
    print(f"{'empty interpreter':<18} {base:7.3f} s")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, value in med.items():
        print(f"{'import ' + name:<18} {value:7.3f} s  ({value - base:6.3f} s over empty)")
    print(f"torch+timm / cvt_nas: {med['torch+timm'] / med['cvt_nas']:.1f}x wall; "
          f"{(med['torch+timm'] - base) / max(med['cvt_nas'] - base, 1e-3):.0f}x over empty")


if __name__ == "__main__":
    main()
