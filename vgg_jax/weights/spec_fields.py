"""The fields of a model directory's spec, checked as untrusted input before a model is built.

A spec comes from a JSON file that anyone may have written, and its fields decide what gets
allocated (image_size is predict's default test scale; width, image_size and num_classes size
the variables) and what reaches a terminal (class names). Bounds:
  arch            one of models.ARCHITECTURES
  num_classes     1 .. MAX_CLASSES (ImageNet-21k's 21843, as for weight files)
  image_size      a multiple of 32 in 32 .. MAX_IMAGE_SIZE (512, the paper's largest test scale)
  width           a number in (0, 1] (the multiplier scales VGG down)
  dropout_rate    [0, 1); include_top, remat, batch_norm, lrn: booleans; layout, init_scheme,
                  conv_algorithm, pool, dtype: one of their names; any other argument is refused
  class_names     absent, or one printable name of 1 .. MAX_NAME_CHARS characters per class
Each failure is a ValueError "<field>: <value>: <reason>" (file strings shown escaped).
"""

from __future__ import annotations

from vgg_jax.core import models
from vgg_jax.core.normalization import finite_float

MAX_CLASSES = 21843  # ImageNet-21k's classes: the most any published VGG head has
MAX_IMAGE_SIZE = 512
MAX_WIDTH = 1.0
MAX_NAME_CHARS = 256
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return finite_float(value) is not None


BOOLEAN = (lambda value: isinstance(value, bool), "true or false")


def one_of(names) -> tuple:
    return (lambda value: isinstance(value, str) and value in names), f"one of {', '.join(sorted(names))}"


# model argument -> (test, what it must be)
MODEL_ARGUMENTS = {
    "num_classes": (lambda v: is_integer(v) and 1 <= v <= MAX_CLASSES, f"an integer in 1 .. {MAX_CLASSES}"),
    "image_size": (lambda v: is_integer(v) and models.DOWNSAMPLING <= v <= MAX_IMAGE_SIZE
                   and v % models.DOWNSAMPLING == 0, f"a multiple of 32 in 32 .. {MAX_IMAGE_SIZE}"),
    "width": (lambda v: is_number(v) and 0 < v <= MAX_WIDTH, f"a number in (0, {MAX_WIDTH:g}]"),
    "dropout_rate": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "include_top": BOOLEAN,
    "remat": BOOLEAN,
    "batch_norm": BOOLEAN,
    "lrn": BOOLEAN,
    "layout": one_of(models.LAYOUTS),
    "init_scheme": one_of(models.INIT_SCHEMES),
    "conv_algorithm": one_of(models.CONV_ALGORITHMS),
    "pool": one_of(models.POOLS),
    "dtype": one_of(COMPUTE_DTYPES),
}


def shown(value) -> str:
    """A value from a file as it may be printed: repr (escapes control characters), shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_arch(arch) -> str:
    if not (isinstance(arch, str) and arch in models.ARCHITECTURES):
        raise ValueError(f"arch: {shown(arch)}: not one of {', '.join(sorted(models.ARCHITECTURES))}")
    return arch


def check_model_arguments(arguments) -> dict:
    """The VGG fields a spec sets (the architecture's own, such as batch_norm, may be restated)."""
    if not isinstance(arguments, dict):
        raise ValueError(f"model_kwargs: {shown(arguments)}: not a JSON object")
    for name, value in arguments.items():
        if name not in MODEL_ARGUMENTS:
            raise ValueError(f"model_kwargs: {shown(name)}: not a model argument a spec may set "
                             f"(those are {', '.join(MODEL_ARGUMENTS)})")
        test, wanted = MODEL_ARGUMENTS[name]
        if not test(value):
            raise ValueError(f"model_kwargs.{name}: {shown(value)}: must be {wanted}")
    return dict(arguments)


def check_class_names(names, num_classes: int, include_top: bool) -> list[str] | None:
    """None, or printable names: one per class where the model has its classifier."""
    if names is None:
        return None
    if not isinstance(names, list) or len(names) > MAX_CLASSES:
        raise ValueError(f"class_names: not a list of at most {MAX_CLASSES} names")
    if include_top and len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for {num_classes} classes")
    for index, name in enumerate(names):
        if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()):
            raise ValueError(f"class_names[{index}]: {shown(name)}: must be 1 .. {MAX_NAME_CHARS} "
                             "printable characters (no control or formatting characters)")
    return names
