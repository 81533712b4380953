"""Runs a Python script as if TensorFlow and tensorflow-datasets were not installed.

  python -m benchmarks.without_tensorflow SCRIPT [ARGS...]     # e.g. train.py --config ...
  python -m benchmarks.without_tensorflow -m MODULE [ARGS...]  # e.g. -m pytest --collect-only ...

Many JAX GPU/TPU environments have no TensorFlow; this shows on any machine that what the
script does needs none: every `import tensorflow` (or tensorflow_datasets, clu) in the process
raises ModuleNotFoundError. Used by tests/test_without_tensorflow.py and device_check.sh's
--cpu-dry-run.
"""

from __future__ import annotations

import os
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")


def block() -> None:
    """From now on, importing a BLOCKED package raises ModuleNotFoundError and
    `importlib.util.find_spec` finds none (a None entry in sys.modules, Python's own way)."""
    if loaded := [name for name in sys.modules if name.split(".")[0] in BLOCKED]:
        raise RuntimeError(f"already imported: {loaded[:3]}")
    sys.modules.update(dict.fromkeys(BLOCKED))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    block()
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` would
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
