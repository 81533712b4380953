"""vgg_jax: VGG (Simonyan & Zisserman, 2015) in JAX/Flax."""

import functools

from vgg_jax.class_names import imagenet_class_names
from vgg_jax.compilation import COMPILER_OPTIONS, jit
from vgg_jax.models import LAYOUTS, VGG

# Named constructors: partials over the one VGG module (config letters from the paper).
vgg11 = functools.partial(VGG, layout="A")
vgg11_lrn = functools.partial(VGG, layout="A", lrn=True)
vgg13 = functools.partial(VGG, layout="B")
vgg16_conv1 = functools.partial(VGG, layout="C")
vgg16 = functools.partial(VGG, layout="D")
vgg19 = functools.partial(VGG, layout="E")
vgg11_bn = functools.partial(VGG, layout="A", batch_norm=True)
vgg13_bn = functools.partial(VGG, layout="B", batch_norm=True)
vgg16_bn = functools.partial(VGG, layout="D", batch_norm=True)
vgg19_bn = functools.partial(VGG, layout="E", batch_norm=True)

ARCHITECTURES = {
    "vgg11": vgg11, "vgg11_lrn": vgg11_lrn, "vgg13": vgg13, "vgg16_conv1": vgg16_conv1,
    "vgg16": vgg16, "vgg19": vgg19, "vgg11_bn": vgg11_bn, "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn, "vgg19_bn": vgg19_bn,
}


def create_model(arch: str, **kwargs) -> VGG:
    """The VGG named `arch` (one of ARCHITECTURES), with VGG's fields as keyword arguments."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def __getattr__(name: str):
    """`load` (vgg_jax.loading), `pretrained` and `import_weights` (vgg_jax.weights), imported on
    first use (they bring orbax, h5py and safetensors, which a plain `import vgg_jax` does not need)."""
    if name == "load":
        from vgg_jax import loading

        return loading.load
    if name in ("pretrained", "import_weights"):
        from vgg_jax import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")


__all__ = ["VGG", "LAYOUTS", "COMPILER_OPTIONS", "jit", "ARCHITECTURES", "create_model", "imagenet_class_names",
           "load", "pretrained", "import_weights", *ARCHITECTURES]
