"""vgg_jax: VGG (Simonyan & Zisserman, 2015) in JAX/Flax.

What users import is at this level: the networks by name (`vgg16`, `create_model`), `jit`,
`load` / `pretrained` / `import_weights`, and the applications built on the network, one module
each: `features`, `lpips`, `style`, `nnx`, `export`, and the `predict` and `stylize` command lines.
What they are built from lives in the wings, each importing only the wings listed:

  core/      the network, checkpoint steps, compilation, sharding, devices (imports no wing)
  data/      image sources, decoding, the host's and the device's preprocessing (core)
  weights/   every model source: model directories, runs, pretrained sets, weight files (core;
             data for spec.preprocess)
  train/     the paper's training: config check, steps, loop, run files, pre-initialisation (core, data, weights)
  evaluate/  the paper's testing: single, dense and multi-crop, ensembles, error tables (core, data, weights)
"""

from vgg_jax.core.class_names import imagenet_class_names
from vgg_jax.core.compilation import COMPILER_OPTIONS, jit
from vgg_jax.core.models import (ARCHITECTURES, LAYOUTS, VGG, create_model, vgg11, vgg11_bn, vgg11_lrn, vgg13, vgg13_bn,
                                 vgg16, vgg16_bn, vgg16_conv1, vgg19, vgg19_bn)


def __getattr__(name: str):
    """`load` (vgg_jax.weights.loading), `pretrained` and `import_weights` (vgg_jax.weights), imported on
    first use (they bring orbax, h5py and safetensors, which a plain `import vgg_jax` does not need)."""
    if name == "load":
        from vgg_jax.weights import loading

        return loading.load
    if name in ("pretrained", "import_weights"):
        from vgg_jax import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")


__all__ = ["VGG", "LAYOUTS", "COMPILER_OPTIONS", "jit", "ARCHITECTURES", "create_model", "imagenet_class_names",
           "load", "pretrained", "import_weights", "vgg11", "vgg11_lrn", "vgg13", "vgg16_conv1", "vgg16", "vgg19",
           "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
