"""The paper's testing methods (Sec. 3.2) for one net at one test scale Q.

Each method turns one image, rescaled so that its smallest side is Q, into a softmax posterior:
- single-crop: the centre crop of the model's image_size through the fc head;
- dense: the fully-convolutional head on the whole image; the class score map is averaged over
  its positions, then softmaxed, and averaged with the same for the image's mirror;
- multi-crop: a 5x5 regular grid of crops and their mirrors, 50 per scale, softmax averaged;
- dense+multi-crop: the average of those two posteriors (the paper's Table 5, in `ensemble`).

Dense batching: the images of one Q share their smallest side (Q) but not the other, so they are
grouped by a padded shape: that side zero-padded up to a multiple of `pad_multiple`. The padding
changes nothing: every conv's input is zeroed outside the image's own extent at that depth
(the max-pools floor, so that is the first side >> k positions after k pools), which is what
'SAME' zero padding shows a conv at an image's border; score-map windows that reach into the
padding are left out of the spatial average.

Only the rescaled images go to the device, as uint8, in batches of one padded shape; the
normalisation, the 50 crops and the mirrors are done there, inside the jitted program.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax.core import compilation, models, sharding
from vgg_jax.data import augmentation
from vgg_jax.weights import loading, model_directory

METHODS = ("single-crop", "dense", "multi-crop", "dense+multi-crop")
GRID = 5  # multi-crop: a GRID x GRID grid of crops, each also mirrored
POOLS = len(models.BLOCK_WIDTHS)


@dataclasses.dataclass(frozen=True)
class Member:
    """One net of an ensemble."""

    model: models.VGG
    variables: dict
    spec: model_directory.ModelSpec
    source: str


def load_member(source: str, arch: str | None = None) -> Member:
    """The net at `source`, anything `vgg_jax.load` takes (a workdir's best, else latest, step)."""
    variables, spec, origin = loading.load_variables(source, arch)
    return Member(loading.fitted_model(spec, variables, origin), variables, spec, origin)


# --- the methods on device --------------------------------------------------------------------

def valid_positions(sizes: jax.Array, padded: tuple[int, int], shape: tuple[int, int],
                    window: int = 1) -> jax.Array:
    """(N, h, w) bool: which positions of an (h, w) map of windows over a feature map depend only
    on each image's own pixels, for images of `sizes` (N, 2) zero-padded to `padded`.

    The feature map is the padded input after k 2x2 max-pools, each flooring, so an image of
    side s covers its first s >> k positions, and a window of `window` positions must fit in them.
    """
    extent = shape[0] + window - 1
    pools = next(k for k in range(POOLS + 1) if padded[0] >> k == extent)
    valid = (sizes >> pools) - window + 1
    rows = jnp.arange(shape[0]) < valid[:, :1]
    cols = jnp.arange(shape[1]) < valid[:, 1:]
    return rows[:, :, None] & cols[:, None, :]


def dense_score_maps(model: models.VGG, variables: dict, images: jax.Array,
                     sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Class score maps (N, h, w, C) of images zero-padded from `sizes` (N, 2), and their valid
    positions (N, h, w). On valid positions the maps equal those of the unpadded images."""
    padded = images.shape[1:3]

    def zero_outside_images(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Conv):
            x = args[0]
            args = (x * valid_positions(sizes, padded, x.shape[1:3])[..., None].astype(x.dtype), *args[1:])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(zero_outside_images):
        scores = model.apply(variables, images, dense=True)
    return scores.astype(jnp.float32), valid_positions(sizes, padded, scores.shape[1:3], model.head_window)


def spatial_softmax(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Softmax of each class score map averaged over its valid positions: (N, C)."""
    weights = valid / jnp.sum(valid, axis=(1, 2), keepdims=True)
    return jax.nn.softmax(jnp.einsum("nhwc,nhw->nc", scores, weights))


def flip_average(posteriors: jax.Array) -> jax.Array:
    """(2N, C) posteriors of N images followed by their mirrors -> (N, C)."""
    half = posteriors.shape[0] // 2
    return (posteriors[:half] + posteriors[half:]) / 2


def dense_posteriors(model, variables, images, sizes, flips: bool = True) -> jax.Array:
    """Dense posteriors (N, C) of N padded images; with `flips`, the images are followed by
    their N mirrors and each image's posteriors are averaged with its mirror's."""
    posteriors = spatial_softmax(*dense_score_maps(model, variables, images, sizes))
    return flip_average(posteriors) if flips else posteriors


def crop_posteriors(model, variables, crops: jax.Array) -> jax.Array:
    """(N, K, crop, crop, 3) -> (N, C): the softmax of the fc head averaged over each image's K crops."""
    n, k = crops.shape[:2]
    logits = model.apply(variables, crops.reshape(n * k, *crops.shape[2:])).astype(jnp.float32)
    return jax.nn.softmax(logits).reshape(n, k, -1).mean(axis=1)


def mirrored(images: jax.Array, sizes: jax.Array) -> jax.Array:
    """The left-right mirrors of images zero-padded at the right from widths sizes[:, 1]: each
    mirror stays at the left, padded at the right."""
    columns = sizes[:, 1:] - 1 - jnp.arange(images.shape[2])  # (N, W): source column, < 0 in padding
    inside = (columns >= 0)[:, None, :, None]
    return jnp.take_along_axis(images, jnp.maximum(columns, 0)[:, None, :, None], axis=2) * inside


def grid_offsets(extent: jax.Array, crop: int, grid: int) -> jax.Array:
    """(..., grid) start offsets of `grid` crops spread evenly over [0, extent - crop], rounded."""
    return jnp.round(jnp.arange(grid) * (extent[..., None] - crop) / (grid - 1)).astype(jnp.int32)


def multi_crops(images: jax.Array, sizes: jax.Array, crop: int, flips: bool = True) -> tuple[jax.Array, jax.Array]:
    """(centre (N, 1, crop, crop, 3), grid (N, 2 * GRID**2, crop, crop, 3)) of padded images of
    `sizes`, cut on the device: the centre crop, and the GRID x GRID grid, row-major, then its
    mirrors (without `flips`: the grid alone, GRID**2 crops)."""
    def cut(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (crop, crop, image.shape[-1]))

    centre = jax.vmap(cut)(images, (sizes[:, 0] - crop) // 2, (sizes[:, 1] - crop) // 2)
    ys, xs = grid_offsets(sizes[:, 0], crop, GRID), grid_offsets(sizes[:, 1], crop, GRID)
    ys, xs = jnp.repeat(ys, GRID, axis=1), jnp.tile(xs, (1, GRID))  # row-major
    grid = jax.vmap(jax.vmap(cut, in_axes=(None, 0, 0)))(images, ys, xs)
    return centre[:, None], jnp.concatenate([grid, grid[:, :, :, ::-1]], axis=1) if flips else grid


@functools.partial(compilation.jit, static_argnums=(0, 1), static_argnames="flips")
def all_methods(model, normalization, variables, images, sizes, flips: bool = True) -> dict:
    """{'single-crop', 'dense', 'multi-crop': posteriors (N, C)} of N uint8 images zero-padded at
    the bottom and right from `sizes` (N, 2): normalisation, mirrors and crops are done here, on
    the device. The padding need not be normalised: the dense path zeroes every conv's input
    outside the image, and crops stay inside it. `flips`: dense and multi-crop also average over
    mirrors (the paper's test-time flips; only for nets trained with flips)."""
    images = augmentation.normalize(images, normalization)
    centre, grid = multi_crops(images, sizes, model.image_size, flips)
    if flips:
        images, sizes = jnp.concatenate([images, mirrored(images, sizes)]), jnp.concatenate([sizes, sizes])
    return {"single-crop": crop_posteriors(model, variables, centre),
            "dense": dense_posteriors(model, variables, images, sizes, flips),
            "multi-crop": crop_posteriors(model, variables, grid)}


# --- the methods' inputs, on the host ---------------------------------------------------------

def padded_shape(shape: Sequence[int], scale: int, multiple: int) -> tuple[int, int]:
    """The batch an image rescaled to `scale` joins: its sides other than Q padded up to a
    multiple of `multiple` (few distinct shapes, so few compilations)."""
    return tuple(side if side == scale else -(-side // multiple) * multiple for side in shape[:2])


def padded_batch(images: list[np.ndarray], shape: tuple[int, int]) -> dict:
    """The images zero-padded at the bottom and right to `shape`, and their sizes."""
    padded = [np.pad(image, ((0, shape[0] - image.shape[0]), (0, shape[1] - image.shape[1]), (0, 0)))
              for image in images]
    return {"images": np.stack(padded), "sizes": np.array([image.shape[:2] for image in images], np.int32)}


def dense_batch(images: list[np.ndarray], shape: tuple[int, int]) -> dict:
    """The images then their mirrors, zero-padded at the bottom and right to `shape`."""
    return padded_batch(images + [image[:, ::-1] for image in images], shape)


# --- one net at one scale ---------------------------------------------------------------------

def scale_posteriors(member: Member, images: Iterable[tuple[np.ndarray, int]], *, scale: int,
                     batch_size: int, mesh, pad_multiple: int = 32, flips: bool = True) -> tuple[np.ndarray, dict]:
    """Labels (N,) and {'single-crop', 'dense', 'multi-crop': posteriors (N, C)} of one net on
    `images`: (uint8 image rescaled to `scale`, label) pairs, normalised on the device for this net;
    `flips`: dense and multi-crop average over mirrors too (see `all_methods`).

    Images wait for a full batch of `batch_size` of their padded shape; only the padded images
    go to the device (crops and mirrors are cut there). Short final batches are filled by
    repeating an image, so every batch of a shape has the same size and compiles once.
    """
    sharding.check_global_batch(batch_size, mesh)
    model = member.model
    variables = sharding.replicate(member.variables, mesh)
    results = {"single-crop": {}, "dense": {}, "multi-crop": {}}
    pending = collections.defaultdict(list)  # padded shape -> [(index, image)]

    def run(shape):
        indices, group = zip(*pending.pop(shape))
        group = list(group) + [group[-1]] * (batch_size - len(group))
        outputs = all_methods(model, member.spec.normalization, variables,
                              **sharding.global_batch(padded_batch(group, shape), mesh), flips=flips)
        for method, values in outputs.items():
            results[method].update(zip(indices, np.asarray(values)))

    labels = []
    for index, (image, label) in enumerate(images):
        labels.append(label)
        shape = padded_shape(image.shape, scale, pad_multiple)
        pending[shape].append((index, image))
        if len(pending[shape]) == batch_size:
            run(shape)
    for shape in list(pending):
        run(shape)
    return np.array(labels, np.int32), {
        method: np.array([values[i] for i in range(len(labels))], np.float32).reshape(len(labels), model.num_classes)
        for method, values in results.items()}
