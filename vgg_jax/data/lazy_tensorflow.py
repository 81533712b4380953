"""TensorFlow and tensorflow-datasets, imported when a tfds source first uses them.

They are the optional `tfds` extra: only tensorflow-datasets sources (`vgg_jax.data.tfds`) and
the tf.image ops of `preprocessing` use them. TensorFlow takes seconds to import, prints C++ log
lines, and many JAX GPU/TPU environments do not have it. Those modules name `tf` and `tfds` through
the stand-ins below, which import the real module at their first attribute access; where it is
not installed, that access raises MissingTensorFlow, one line naming the package.
"""

from __future__ import annotations

import importlib
import os


class MissingTensorFlow(ValueError):
    """A tfds source was asked for where TensorFlow or tensorflow-datasets is not installed."""


class LazyModule:
    """Stands for the module `name`, imported (then `configure`d, once) on first attribute access."""

    def __init__(self, name: str, package: str, configure=None):
        self._name, self._package, self._configure = name, package, configure

    def load(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING lines, read at import
        # TF decodes and resizes here; its oneDNN kernels (matmul, conv) are unused, and with them
        # off it does not print "oneDNN custom operations are on" (twice, before its logging starts).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        try:
            module = importlib.import_module(self._name)
        except ImportError as error:
            raise MissingTensorFlow(
                f"tensorflow-datasets sources read images with tf.data, which needs the `{self._package}` "
                f"package ({error}): install the extra (pip install -e \".[tfds]\" or pip install "
                f"\"vgg_jax[tfds]\"), or use 'digits', 'synthetic', 'folder:PATH' or 'imagenet:PATH'") from None
        if self._configure is not None:
            self._configure(module)
            self._configure = None
        return module

    def __getattr__(self, attribute: str):
        return getattr(self.load(), attribute)


def _hide_accelerators(tensorflow) -> None:
    """TF only decodes and augments: the accelerators are JAX's."""
    try:
        tensorflow.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised (by the user's code) before the pipeline first ran
        pass


tf = LazyModule("tensorflow", "tensorflow-cpu", configure=_hide_accelerators)
tfds = LazyModule("tensorflow_datasets", "tensorflow-datasets")
