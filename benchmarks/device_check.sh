#!/usr/bin/env bash
# One-shot accelerator check (under 8 minutes on one H200): environment, vgg16 bf16/f32 img/s
# and MFU, train-step memory and the largest batch, train.py on the synthetic source with
# SIGTERM and resume, and the tests that need no TensorFlow. Prints and writes
# ${OUT:-.}/device_report.md (benchmarks/device_check.py says what each section measures).
#   benchmarks/device_check.sh                 on the accelerator machine, from the working tree
#   benchmarks/device_check.sh --cpu-dry-run   the same sequence at toy size on the CPU, TensorFlow blocked
# Needs no install and no network: the working tree's vgg_jax, plus the small wheels the image may
# lack (ml_collections, grain, simplejpeg, ...), carried in wheelhouse/ (built by benchmarks/wheelhouse.sh where pip works).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import ml_collections, grain, simplejpeg" 2>/dev/null; then
  [[ -d wheelhouse ]] || { echo "error: ml_collections, grain or simplejpeg is missing and there is no wheelhouse/: run benchmarks/wheelhouse.sh where pip works" >&2; exit 1; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vgg_jax_wheels wheelhouse/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/vgg_jax_wheels"
fi
# One compilation cache for the sections and train.py's resume (it recompiles the same steps).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/vgg_jax_xla_cache}

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  export JAX_PLATFORMS=cpu
  exec "$PYTHON" -m benchmarks.without_tensorflow -m benchmarks.device_check --toy --out "${OUT:-.}"
fi
exec "$PYTHON" -m benchmarks.device_check --out "${OUT:-.}"
