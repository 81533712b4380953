"""The host's share of the paper's preprocessing (Sec. 3.1, 3.2) on uint8 numpy images.

Rescale isotropically so that the smallest side is S (train; fixed, or drawn per image from
[scale_min, scale_max]) or Q (evaluation), and cut a crop x crop window: computed in the
original pixels and resized alone, which gives the pixels of rescaling the whole image and
cropping it (up to resampling at the window's border) at a fraction of the cost. The window
arithmetic is tf.image's (`vgg_jax.data.preprocessing.crop_window`), float32 and round-half-even.

Interpolation: Pillow's BILINEAR, a triangle filter widened by the shrink factor when
shrinking (antialiased), plain bilinear with half-pixel centres when enlarging: the filter of
tf.image's `resize(antialias=True)` and of torchvision's PIL resizes, which the imported
weights were trained with. The two differ only in rounding (Pillow rounds its 8-bit fixed-point
weights; tf.image computes in float32). OpenCV's INTER_AREA (a box filter) measured ~20% faster
per resize but 10x further from tf.image's pixels (README, Performance).
Flip, colour shift and normalisation are arithmetic and run on the device
(`vgg_jax.data.augmentation`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def scaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(h, w) after an isotropic rescale that makes the smallest side `scale`."""
    size = np.array([height, width], np.float32)
    return tuple(int(v) for v in np.round(size * np.float32(scale) / size.min()))


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 image resized to (height, width) with Pillow's (antialiased) bilinear filter."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def rescale_smallest_side(image: np.ndarray, scale: int) -> np.ndarray:
    """The image rescaled isotropically so that its smallest side is `scale` (Q or S)."""
    return resize(image, *scaled_size(*image.shape[:2], scale))


def crop_window(height: int, width: int, scale: int, crop: int, offset) -> tuple[int, int, int]:
    """(y, x, side): the square, in original pixels, that becomes the crop x crop crop of the
    image rescaled to smallest side `scale`; `offset` in [0, 1]^2 places it, (0.5, 0.5) centred."""
    smallest = min(height, width)
    side = int(np.round(np.float32(crop) * np.float32(smallest) / np.float32(scale)))
    side = min(max(side, 1), smallest)
    room = np.array([height - side, width - side], np.float32)
    y, x = np.round(np.asarray(offset, np.float32) * room).astype(int)
    return int(y), int(x), side


def crop(image: np.ndarray, scale: int, size: int, offset) -> np.ndarray:
    """uint8 size x size crop at `offset` of the image rescaled to smallest side `scale`."""
    y, x, side = crop_window(*image.shape[:2], scale, size, offset)
    return resize(image[y:y + side, x:x + side], size, size)


def train_crop(image: np.ndarray, rng: np.random.Generator, data_config) -> np.ndarray:
    """The paper's training crop: S drawn from [scale_min, scale_max], then a crop_size window
    at a uniformly drawn place; `rng` is the example's (keyed on seed and position)."""
    c = data_config
    scale = int(rng.integers(c.scale_min, c.scale_max + 1))
    return crop(image, scale, c.crop_size, rng.random(2))


def centre_crop(image: np.ndarray, data_config) -> np.ndarray:
    """The validation crop during training: centre crop_size window at test scale eval_scale."""
    return crop(image, data_config.eval_scale, data_config.crop_size, (0.5, 0.5))
