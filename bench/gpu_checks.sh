#!/usr/bin/env bash
# The checks that need a GPU, as one run on a lent GPU machine (figures: bench/RESULTS.md).
#   - tests/models/test_cuda.py and tests/faults/test_gpu_worker.py (skipped without a GPU)
#   - bench/engine.py on cuda: the paired trainer (steps captured as CUDA graphs) vs the loop
#   - bench/sweep.py --scaling on cuda: nets at once before per-net throughput halves
# Needs the Python packages the GPU image (Python 3.12, its own torch) lacks as wheels in .whl/,
# and Fashion-MNIST's four .gz files in .gpudata/FashionMNIST/raw/ (both kept out of git through
# .git/info/exclude, and carried with the run). The wheels, fetched here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl PACKAGES
# were (2026-11-28): alembic amqp annotated-doc annotated-types anyio billiard celery click
# click-didyoumean click-plugins click-repl fastapi greenlet h11 kombu mako opentelemetry-api
# prompt-toolkit pydantic pydantic-core pydantic-settings python-dotenv python-multipart redis
# sqlalchemy starlette typing-extensions typing-inspection tzdata tzlocal uvicorn vine wcwidth,
# at the versions .venv holds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs \
  tests/models/test_cuda.py tests/faults/test_gpu_worker.py 2>&1 | tee "$OUT/tests.log"
cd bench
timeout 150 python3 engine.py --data-dir ../.gpudata --device cuda --steps 5000 \
  --bn-impl torch 2>&1 | tee "$OUT/engine.log"
timeout 150 python3 sweep.py --data-dir ../.gpudata --device cuda --scaling --steps 300 \
  --max-nets 8192 2>&1 | tee "$OUT/scaling.log"
