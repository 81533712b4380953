"""The host's share of the paper's image preprocessing (Sec. 3.1, 3.2) as small pure TensorFlow ops.

The host makes pixels: decode, the crop window, the isotropic rescale, and uint8 out
(`to_pixels`). The arithmetic (flip, colour shift, normalisation) runs on the device, inside the
jitted steps (`vgg_jax.data.augmentation`). Train, eval and predict compose the same ops. Images are
HxWx3 on a 0-255 scale. Crop placement is drawn by the caller from stateless seeds, so an
example's crop is a function of (run seed, example position) and a restarted run reproduces it.
The tfds path (`vgg_jax.data.tfds`) uses these ops; `load_image_file` and `evaluation_input`
(spec.preprocess, predict, stylize) need no TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np

from vgg_jax.core.normalization import Normalization
from vgg_jax.data import decode as data_decode, transforms
from vgg_jax.data.lazy_tensorflow import tf  # imported at the first op: `import vgg_jax.data.preprocessing` needs no TF


def decode(data: tf.Tensor) -> tf.Tensor:
    """uint8 HxWx3 from encoded JPEG/PNG/BMP/GIF bytes; grey, RGBA and CMYK become RGB, GIF its first frame."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def load_image_file(path: str) -> np.ndarray:
    """uint8 HxWx3 of an image file, decoded as the input pipeline decodes it (no TensorFlow:
    `vgg_jax.data.decode`, the same pixels as `decode`); ValueError naming the file otherwise."""
    try:
        return data_decode.load(path)
    except data_decode.UnreadableImage as error:
        raise ValueError(f"cannot read image {error}") from None


def scaled_size(height, width, scale) -> tf.Tensor:
    """[h, w] after an isotropic rescale that makes the smallest side equal to `scale`."""
    size = tf.cast(tf.stack([height, width]), tf.float32)
    return tf.cast(tf.round(size * tf.cast(scale, tf.float32) / tf.reduce_min(size)), tf.int32)


def rescale_smallest_side(image: tf.Tensor, scale) -> tf.Tensor:
    """float32 image rescaled isotropically so that its smallest side is `scale` (Q or S)."""
    shape = tf.shape(image)
    return tf.image.resize(image, scaled_size(shape[0], shape[1], scale), antialias=True)


def crop_window(height, width, scale, crop: int, offset) -> tf.Tensor:
    """[y, x, side, side]: the square, in original pixels, that becomes a crop x crop crop of the image
    rescaled to smallest side `scale`. `offset` in [0, 1]^2 places it: (0.5, 0.5) is the centre."""
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    smallest = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.round(crop * smallest / tf.cast(scale, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.minimum(height, width))
    room = tf.cast(tf.stack([height - side, width - side]), tf.float32)
    y_x = tf.cast(tf.round(tf.cast(offset, tf.float32) * room), tf.int32)
    return tf.concat([y_x, tf.stack([side, side])], axis=0)


def decode_crop(data: tf.Tensor, scale, crop: int, offset) -> tf.Tensor:
    """float32 crop x crop crop at `offset` of the image rescaled to `scale`, decoding only the
    window it needs (a JPEG's other blocks are never decoded): the same pixels as rescaling the
    whole image and cropping it, up to resampling at the window's border, at a fraction of the cost."""

    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        window = crop_window(shape[0], shape[1], scale, crop, offset)
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
        image = decode(data)
        shape = tf.shape(image)
        y, x, side, _ = tf.unstack(crop_window(shape[0], shape[1], scale, crop, offset))
        return image[y:y + side, x:x + side]

    window = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return tf.image.resize(window, [crop, crop], antialias=True)


def to_pixels(image: tf.Tensor) -> tf.Tensor:
    """uint8 of a resampled 0-255 image: rounded to the nearest level (within 0.5 of it), so the
    batch crosses to the device at a quarter of float32's bytes."""
    return tf.saturate_cast(tf.round(image), tf.uint8)


def evaluation_input(image: np.ndarray | str, scale: int, normalization: Normalization) -> np.ndarray:
    """float32 (1, h, w, 3) model input of one image (a file path, or uint8 HxWx3) at test scale
    `scale`: rescaled so that its smallest side is `scale`, normalised as the weights expect.
    Without TensorFlow: the evaluation pipeline's own rescale (`vgg_jax.data.transforms`)."""
    if not isinstance(image, np.ndarray):
        image = load_image_file(os.fspath(image))
    pixels = transforms.rescale_smallest_side(image, scale)  # uint8, as the input pipeline gives them
    return normalization.apply(pixels.astype(np.float32))[None]

