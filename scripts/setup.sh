#!/usr/bin/env bash
# Set up cvt-nas on a fresh machine: a virtual environment in .venv with the pinned stack, the
# default dataset (Fashion-MNIST, from Debian's package) and, for the tests, a PostgreSQL server
# binary. Safe to re-run; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
echo "[setup] installing the pinned stack (constraints/ci.txt); about a minute on a fresh machine"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints/ci.txt -e ".[test]" \
  2> >(grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root'" >&2)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${CVT_NAS_DATA:-}" ]; then
  echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  as_root apt-get update -qq && as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "[setup] could not install dataset-fashion-mnist; see README 'Data'" >&2
fi
if [ "${CVT_NAS_SKIP_POSTGRES:-0}" != 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "[setup] installing PostgreSQL server binaries (for the multi-machine storage tests)"
  as_root apt-get update -qq && as_root apt-get install -y -qq postgresql >/dev/null \
    || echo "[setup] could not install postgresql; its tests will be skipped" >&2
fi
echo "[setup] done: activate with '. .venv/bin/activate'"
