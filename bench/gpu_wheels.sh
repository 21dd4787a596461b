#!/bin/bash
# Download, here, the wheels that the one-shot device run needs and the lent GPU
# machine's image lacks (it has torch, transformers, peft, pyarrow, pytest, but not
# PyAV, which the toy datasets of the GPU training test encode their video with).
# The machine has no network: the wheels travel in .whl/ (git-ignored), named in the
# device run's `carry`; bench/gpu_oneshot.py installs them into /tmp before its steps.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
AV_VERSION=$(.venv/bin/python -c "import av; print(av.__version__)")
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "av==${AV_VERSION}"
ls -la .whl
