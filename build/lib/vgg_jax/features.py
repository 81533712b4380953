"""VGG as a feature extractor: named activations, a perceptual loss, and image descriptors.

All three are pure functions of (model, variables, images), so they jit, differentiate and
vmap inside user code. Images are model inputs: already normalised as the weights expect
(the Normalization returned with them). Under `jax.jit` only the layers up to the deepest
requested name are computed (XLA drops the rest).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import vgg_jax

# The activations perceptual losses commonly use (Johnson et al., 2016): the last ReLU of each block.
PERCEPTUAL_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
HEAD_NAMES = ("relu6", "relu7", "scores")


def extract_features(model: vgg_jax.VGG, variables: dict, images: jax.Array,
                     names: Sequence[str] = PERCEPTUAL_NAMES, dense: bool = False) -> dict[str, jax.Array]:
    """{name: activation} for the sown names (preact1_1, relu1_1, norm1, pool1, ..., relu6,
    relu7, scores), NHWC. The head runs only when a head name is asked for; `dense` applies it
    fully convolutionally on images larger than the training crop."""
    if any(name in HEAD_NAMES for name in names):
        if not model.include_top:
            raise ValueError(f"{[n for n in names if n in HEAD_NAMES]} need a model with include_top=True")
    else:
        model = model.clone(include_top=False)  # any image of >= 32 px; fc layers never run
    _, state = model.apply(variables, images, dense=dense, mutable=["intermediates"])
    sown = state["intermediates"]
    unknown = [name for name in names if name not in sown]
    if unknown:
        raise ValueError(f"unknown feature names {unknown}; this model has {sorted(sown)}")
    return {name: sown[name][0] for name in names}


def perceptual_loss(model: vgg_jax.VGG, variables: dict, x: jax.Array, y: jax.Array,
                    names: Sequence[str] = PERCEPTUAL_NAMES, weights: Sequence[float] | None = None) -> jax.Array:
    """sum over names of weight * mean((phi(x) - phi(y))^2): a scalar, from one forward pass."""
    weights = (1.0,) * len(names) if weights is None else tuple(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} feature names")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    features = extract_features(model, variables, jnp.concatenate([x, y]), names)
    half = x.shape[0]
    return sum(weight * jnp.mean(jnp.square(features[name][:half] - features[name][half:]))
               for name, weight in zip(names, weights))


def image_descriptor(model: vgg_jax.VGG, variables: dict, images: jax.Array) -> jax.Array:
    """The paper's Appendix B descriptor, (N, H, W, 3) -> (N, 4096): relu7 of the dense head,
    averaged over positions and over each image and its mirror, then L2-normalised.
    Images need at least the model's image_size pixels per side."""
    both = jnp.concatenate([images, images[:, :, ::-1]])
    pooled = jnp.mean(extract_features(model, variables, both, ("relu7",), dense=True)["relu7"], axis=(1, 2))
    half = images.shape[0]
    descriptor = (pooled[:half] + pooled[half:]) / 2
    return descriptor / jnp.maximum(jnp.linalg.norm(descriptor, axis=-1, keepdims=True), 1e-12)
