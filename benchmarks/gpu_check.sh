#!/usr/bin/env bash
# VGG-16 bfloat16 throughput and MFU on one NVIDIA H200, in under 5 minutes.
#   benchmarks/gpu_check.sh                 install jax with CUDA if needed, then measure
#   benchmarks/gpu_check.sh --cpu-dry-run   no install, tiny batch on the CPU: checks the script
# BATCH and STEPS override the defaults (256 and 20). Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  export JAX_PLATFORMS=cpu
  exec python -m benchmarks.gpu_throughput --batch "${BATCH:-2}" --steps "${STEPS:-1}"
fi

python -c "import vgg_jax.training" 2>/dev/null || pip install -q -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  # The driver's CUDA version picks the wheel: jax[cuda13] needs a CUDA 13 driver.
  cuda_major=$(nvidia-smi | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$')
  if (( cuda_major >= 13 )); then extra=cuda13; else extra=cuda12; fi
  pip install -q -U "jax[${extra}]"
fi
export JAX_PLATFORMS=cuda
timeout 240 python -m benchmarks.gpu_throughput --batch "${BATCH:-256}" --steps "${STEPS:-20}"
