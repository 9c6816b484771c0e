#!/usr/bin/env bash
# timm's own model tests on the cvt_nas presets: tests/test_models.py from timm's source
# distribution (the installed version's; downloaded once from the package registry into
# ~/.cache/cvt-nas/), with cvt_nas imported (scripts/timm_tests/cvt_timm_plugin.py, which also
# skips the few tests that cannot apply, each with its reason), plus the timm test functions that
# timm's file keeps to its own modules (scripts/timm_tests/test_cvt_timm_extra.py).
#
# Usage: scripts/timm_tests.sh [--all] [pytest arguments]
#   default  every preset, except that the two CvT-W24s (277M parameters, 60-193 GMACs; building
#            one takes ~8 s of weight init) skip the compute-heavy tests, as timm's own CI leaves
#            out its largest models, and timm's pruning sweeps are left out
#   --all    every preset in every test (the CI's slow job)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}

FILTER="cvt"
if [ "${1:-}" = "--all" ]; then
  shift
else
  # The CvT-W24s keep the tests that run on the meta device or only build the model
  # (default_cfgs, features); timm's pruning sweeps and features_only backward with
  # checkpointing (test_cvt_timm_extra.py) wait for --all.
  FILTER="cvt and not (w24 and (test_model_forward[ or backward or fx or torchscript or intermediates))"
  FILTER="$FILTER and not prune and not grad_checkpointing"
fi

VERSION=$("$PY" -c "import timm; print(timm.__version__)")
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cvt-nas/timm-src
SRC=$CACHE/timm-$VERSION
if [ ! -f "$SRC/tests/test_models.py" ]; then
  echo "[timm-tests] downloading timm $VERSION's source distribution (its tests) to $CACHE"
  mkdir -p "$CACHE"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
    "timm==$VERSION" -d "$CACHE"
  tar -xzf "$CACHE/timm-$VERSION.tar.gz" -C "$CACHE"
fi

export PYTHONPATH="$ROOT:$ROOT/scripts/timm_tests${PYTHONPATH:+:$PYTHONPATH}"
export CVT_TIMM_SRC=$SRC
exec "$PY" -m pytest -c "$SRC/pyproject.toml" --rootdir "$SRC" -p cvt_timm_plugin -p no:cacheprovider \
  -W ignore::pytest.PytestUnknownMarkWarning -rs -k "$FILTER" \
  "$SRC/tests/test_models.py" "$ROOT/scripts/timm_tests/test_cvt_timm_extra.py" "$@"
