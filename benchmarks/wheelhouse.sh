#!/usr/bin/env bash
# Downloads into wheelhouse/ (ignored by git) the small wheels that the accelerator image lacks
# (ml_collections; the data path's Grain, simplejpeg and the packages Grain imports that a JAX
# image does not carry), for Python 3.12 on x86-64 Linux; benchmarks/device_check.sh installs them there
# without a network. Run where pip can reach PyPI, from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheelhouse "ml_collections==1.1.0" "grain==0.2.18" "simplejpeg==1.9.0" "array_record==0.8.6" \
  "portpicker==1.6.0" "cloudpickle==3.1.3"
ls -l wheelhouse
