"""LPIPS (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), VGG variant, version 0.1, computed as the reference `lpips` package computes it:

1. images in [-1, 1] go through its ScalingLayer, (x - SHIFT) / SCALE: torchvision's ImageNet
   mean and std carried over to the [-1, 1] range;
2. vgg16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each unit-normalised over channels;
3. squared differences weighted per channel by the learned non-negative 1x1 convs lin0..lin4
   (no bias; their dropout is off at evaluation), averaged over positions, summed over layers.

    params = lpips.load()                  # pretrained vgg16, the installed lpips package's vgg.pth
    d = lpips.distance(params, x, y)       # (N,); jittable, differentiable in x and y
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import vgg_jax
from vgg_jax.core import normalization
from vgg_jax.core.models import BLOCK_WIDTHS
from vgg_jax.features import extract_features, PERCEPTUAL_NAMES
from vgg_jax.weights import loading, WeightsError
from vgg_jax.weights.conversion import HEAD_LAYERS, open_weights, read_float32

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)  # 2 * mean - 1
SCALE = np.array([0.458, 0.448, 0.450], np.float32)  # 2 * std
EPS = 1e-10  # the reference's normalize_tensor


@struct.dataclass
class Params:
    """A pytree: jit and grad see the arrays, the backbone module is static."""

    model: vgg_jax.VGG = struct.field(pytree_node=False)  # vgg16 with include_top=False
    variables: dict  # its conv layers' variables
    linear: tuple[jax.Array, ...]  # per layer of PERCEPTUAL_NAMES, its (C,) channel weights


def installed_linear_path() -> str:
    """The v0.1 vgg.pth inside an installed `lpips` package, found without importing it (or torch)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("LPIPS needs the reference's linear weights: `pip install --no-deps lpips` "
                           "(only its weights/v0.1/vgg.pth is read), or pass linear=PATH to a vgg.pth")
    return os.path.join(spec.submodule_search_locations[0], "weights", "v0.1", "vgg.pth")


def read_linear(path: str, channels: list[int]) -> tuple[jax.Array, ...]:
    """The (C,) weights of lin0..lin4 from the reference's state dict (`linK.model.1.weight`,
    shaped (1, C, 1, 1)), read torch-free; one error naming every missing or misshapen layer."""
    keys = [f"lin{index}.model.1.weight" for index in range(len(PERCEPTUAL_NAMES))]
    with open_weights(path) as (tensors, _):
        problems = []
        for key, name, width in zip(keys, PERCEPTUAL_NAMES, channels):
            if key not in tensors:
                problems.append(f"{key} missing")
            elif tensors[key].shape != (1, width, 1, 1):
                problems.append(f"{key} is {tensors[key].shape}, {name} needs (1, {width}, 1, 1)")
        if problems:
            raise WeightsError(f"{path} does not hold LPIPS linear layers for this backbone: " + "; ".join(problems))
        return tuple(jnp.asarray(read_float32(path, key, tensors[key]).reshape(-1)) for key in keys)


def load(backbone: str | os.PathLike = "vgg16", linear: str | os.PathLike | None = None) -> Params:
    """LPIPS on `backbone`, any source `vgg_jax.load` takes (a weight file is read as vgg16's);
    `linear` the reference's linear-layer weights (default: the installed lpips's)."""
    model, variables, spec = loading.load(backbone, arch="vgg16")
    if spec.arch != "vgg16":
        raise ValueError(f"LPIPS's VGG variant is defined on vgg16 features; {backbone} is {spec.arch}")
    if spec.normalization != normalization.TORCHVISION:
        raise ValueError(f"LPIPS feeds its backbone torchvision-normalised RGB; {backbone} expects "
                         f"{spec.normalization} (Keras weights?): use torchvision's vgg16")
    channels = [model.scaled(width) for width in BLOCK_WIDTHS]  # relu1_2 .. relu5_3, one per block
    weights = read_linear(os.fspath(linear) if linear is not None else installed_linear_path(), channels)
    convs = {collection: {layer: jax.tree.map(jnp.asarray, values) for layer, values in layers.items()
                          if layer not in HEAD_LAYERS}
             for collection, layers in variables.items()}
    return Params(model.clone(include_top=False), convs, weights)


def unit_normalize(features: jax.Array) -> jax.Array:
    """features / (||features|| over channels + EPS), as the reference. Where every channel is 0
    the norm's gradient is taken as 0 (the reference's is NaN there), so the loss trains."""
    squares = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    nonzero = squares > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0)
    return features / (norm + EPS)


def distance(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """LPIPS between NHWC images in [-1, 1] (at least 32 px a side): (N,). x and y go through
    the backbone as one batch."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    features = extract_features(params.model, params.variables, (jnp.concatenate([x, y]) - SHIFT) / SCALE,
                                PERCEPTUAL_NAMES)
    half = x.shape[0]
    total = 0.0
    for name, weights in zip(PERCEPTUAL_NAMES, params.linear):
        unit = unit_normalize(features[name])
        total = total + jnp.mean(jnp.square(unit[:half] - unit[half:]) @ weights, axis=(1, 2))
    return total
