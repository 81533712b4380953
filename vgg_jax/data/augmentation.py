"""The arithmetic of the paper's preprocessing, on the device: flip, colour shift, normalisation.

The host's work ends at uint8 pixels (decode, crop window, resize: `vgg_jax.data.preprocessing`);
the rest is a few operations per pixel, which an accelerator does in microseconds and a host
core in a third of its time per image. They run here, in jax.numpy, inside the jitted train and
eval steps, on any source that yields uint8 batches (TensorFlow is not involved).

Randomness: the example at index i of the global batch of step k draws its flip and colour
shift from the stateless key fold_in(fold_in(PRNGKey(seed), k), i). The batch at step k is a
function of (config, seed, k) (`vgg_jax.data.input_pipeline`), so a resumed run draws the same.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vgg_jax.core.normalization import Normalization

# AlexNet's PCA of ImageNet RGB pixels on a 0-1 scale: eigenvalues, eigenvectors as columns.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def normalize(images: jax.Array, normalization: Normalization) -> jax.Array:
    """The weights' input convention (`Normalization.apply`) in float32 on the device; uint8 or
    float images of any leading shape (..., 3)."""
    return normalization.apply(jnp.asarray(images).astype(jnp.float32))


def example_keys(seed: int, step: jax.Array, batch_size: int) -> jax.Array:
    """Raw keys [batch_size, 2]: example i of the global batch of `step` gets
    fold_in(fold_in(PRNGKey(seed), step), i)."""
    step_key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
    return jax.vmap(jax.random.fold_in, (None, 0))(step_key, jnp.arange(batch_size))


def draws(keys: jax.Array, color_shift_std: float) -> tuple[jax.Array, jax.Array]:
    """(flips bool [b]: mirror or not, probability 1/2; alphas [b, 3] ~ N(0, std^2)) from keys [b, 2]."""
    def one(key):
        flip_key, color_key = jax.random.split(key)
        return jax.random.bernoulli(flip_key), color_shift_std * jax.random.normal(color_key, (3,), jnp.float32)
    return jax.vmap(one)(keys)


def color_shifts(alphas: jax.Array) -> jax.Array:
    """AlexNet's lighting noise on a 0-255 scale, [b, 3]: 255 * eigvec @ (alpha * eigval) per
    image. Products and sums, not a matmul: exact float32 on accelerators whose default matmul
    precision is lower."""
    eigvec, eigval = jnp.array(IMAGENET_EIGVEC, jnp.float32), jnp.array(IMAGENET_EIGVAL, jnp.float32)
    return 255.0 * jnp.sum(eigvec * (alphas * eigval)[:, None, :], axis=-1)


def augment(images: jax.Array, keys: jax.Array, *, normalization: Normalization, flip: bool,
            color_shift_std: float) -> jax.Array:
    """float32 model input of uint8 crops [b, h, w, 3]: each mirrored with probability 1/2 (if
    `flip`), shifted in colour (if `color_shift_std`), then normalised; keys [b, 2]."""
    flips, alphas = draws(keys, color_shift_std)
    images = jnp.asarray(images).astype(jnp.float32)
    if flip:
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    if color_shift_std:
        images = images + color_shifts(alphas)[:, None, None, :]
    return normalize(images, normalization)


def train_augmentation(data_config, normalization: Normalization, seed: int) -> Callable:
    """`(uint8 images [b, h, w, 3], step) -> float32 model input`: the config's flip and colour
    shift, drawn per example from (seed, step, index in the batch), then normalisation."""
    flip, color_shift_std = bool(data_config.flip), float(data_config.color_shift_std)

    def apply(images, step):
        return augment(images, example_keys(seed, step, images.shape[0]), normalization=normalization,
                       flip=flip, color_shift_std=color_shift_std)
    return apply
