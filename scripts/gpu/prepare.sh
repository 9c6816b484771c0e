#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on the GPU machine and cannot fetch there (it has no
# network): optuna and its pure-Python dependencies as wheels in .whl/, Fashion-MNIST in .data/.
# Run once, here, from the repository root of the checkout that the device tool sends. Both
# folders are kept out of git (.git/info/exclude) and travel only when `carry` names them.
# Size: about 36 MB (data 30 MB, wheels 5.5 MB), within the 64 MiB a call may carry. Every other
# need of these wheels (numpy, packaging, pyyaml, tqdm, markupsafe, typing-extensions) is on the
# GPU image already.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for d in /.whl/ /.data/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done

# The GPU image has torch, timm, pandas, transformers, pyarrow, matplotlib, pyyaml, tqdm,
# markupsafe and typing-extensions (KINDS.md); the search also needs optuna (with alembic,
# sqlalchemy, mako, colorlog). Versions: those of constraints/ here.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0

data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p .data/fashion-mnist
cp "$data"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz .data/fashion-mnist/
du -sh .whl .data
