"""Test set-up: several CPU devices so sharding is exercised, a shared XLA compilation cache,
and a quiet TensorFlow."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests (and the train.py subprocesses, which inherit these variables) compile the same
# small programs: a persistent cache makes each compile happen once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "vgg_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
