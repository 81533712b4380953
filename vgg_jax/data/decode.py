"""Image files -> uint8 HxWx3 RGB pixels, with a pixel limit checked before any decoding.

JPEG goes straight to libjpeg-turbo through simplejpeg (the binding measured fastest: ~1.9x
tf.data's decode per core, issue 27), with the fast integer DCT and fancy upsampling that
tf.image uses, so both give the same pixels. Anything simplejpeg refuses (PNG, BMP, GIF, WebP,
CMYK JPEGs, JPEGs with recoverable damage) goes to Pillow. Neither applies EXIF orientation,
as tf.image does not: the pixels are the file's. Grey, palette, RGBA and CMYK become RGB (alpha
dropped, as tf.image drops it); a GIF gives its first frame.

Every file is untrusted: its size is bounded before it is read, and its pixel count (width x
height from the header) before it is decoded, so a 20000 x 20000 JPEG of a few MB is refused
in microseconds instead of taking 1.2 GB. What fails is an UnreadableImage, which the sources
count and replace.
"""

from __future__ import annotations

import io
import os

import numpy as np
import simplejpeg
from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000  # ImageNet's largest photo has ~8 MP
# No image within the pixel limit needs more than this per pixel (a 16-bit RGBA PNG stored
# uncompressed) plus a header, so a larger file is refused before it is read.
MAX_BYTES_PER_PIXEL = 8
HEADER_BYTES = 1 << 20


class UnreadableImage(ValueError):
    """A file that is not an image we decode, is damaged, or is over the pixel limit."""


def read_file(path: str, max_pixels: int) -> bytes:
    """The bytes of `path`; UnreadableImage where it is missing or too large to be an image
    within the pixel limit."""
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES_PER_PIXEL * max_pixels + HEADER_BYTES:
            raise UnreadableImage(f"{path}: {size} bytes, more than an image of at most {max_pixels} pixels holds")
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise UnreadableImage(f"{path}: {error.strerror or error}") from None


def looks_like_an_image(path: str) -> bool:
    """Whether the file's header is one of an image format Pillow reads (nothing is decoded)."""
    try:
        with Image.open(path):  # lazy: identifies the format from the first bytes
            return True
    except Exception:  # noqa: BLE001 - Pillow fails its own way on each kind of non-image
        return False


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise UnreadableImage(f"{width} x {height} pixels, over the limit of {max_pixels} (data.max_pixels)")


def _jpeg(data: bytes, max_pixels: int) -> np.ndarray | None:
    """RGB pixels of a JPEG libjpeg-turbo decodes without complaint, else None (Pillow's turn)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_size(height, width, max_pixels)
    if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK / YCCK: Pillow converts them
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)  # strict: damage goes to Pillow
    except ValueError:
        return None


def _pillow(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
            _check_size(image.height, image.width, max_pixels)
            if image.mode == "P" and "transparency" in image.info:  # else Pillow warns on each one
                image = image.convert("RGBA")
            return np.asarray(image.convert("RGB"))
    except UnreadableImage:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... on damage
        raise UnreadableImage(f"not a decodable image ({type(error).__name__}: {error})") from None


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB pixels of encoded image bytes; UnreadableImage for damaged data, formats
    neither library reads, and images of more than `max_pixels` pixels (checked first)."""
    image = _jpeg(data, max_pixels) if data[:2] == b"\xff\xd8" else None
    return image if image is not None else _pillow(data, max_pixels)


def load(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB pixels of an image file; UnreadableImage naming the file otherwise."""
    try:
        return decode(read_file(path, max_pixels), max_pixels)
    except UnreadableImage as error:
        message = str(error)
        raise UnreadableImage(message if message.startswith(path) else f"{path}: {message}") from None
