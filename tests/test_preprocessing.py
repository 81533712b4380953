"""Each preprocessing op against a closed form or an independent numpy/PIL reference."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vgg_jax.core.normalization import Normalization
from vgg_jax.data import preprocessing as pp


def smooth_image(height, width):
    """A smooth uint8 RGB image, so resampling differences stay small."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([255 * y / height, 255 * x / width, 128 + 100 * np.sin((x + y) / 15)], -1).astype(np.uint8)


def encode(image, fmt, mode="RGB", **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("height,width,scale", [(37, 50, 32), (50, 37, 64), (40, 40, 17), (375, 500, 256)])
def test_rescale_smallest_side_is_scale_and_keeps_aspect(height, width, scale):
    out = pp.rescale_smallest_side(tf.zeros([height, width, 3], tf.uint8), scale)
    new_height, new_width, _ = out.shape
    assert min(new_height, new_width) == scale
    assert abs(new_height / new_width - height / width) <= 1 / min(new_height, new_width)


def test_crop_window_stays_inside_and_has_the_rescaled_crop_size():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(20, 400, 2)
        crop = int(rng.integers(8, min(height, width) + 1))
        scale = int(rng.integers(crop, 3 * crop))
        offset = rng.uniform(size=2)
        y, x, side_y, side_x = pp.crop_window(height, width, scale, crop, offset).numpy()
        assert side_y == side_x == max(1, round(crop * min(height, width) / scale))
        assert 0 <= y <= height - side_y and 0 <= x <= width - side_x
        assert abs(y - offset[0] * (height - side_y)) <= 0.5 and abs(x - offset[1] * (width - side_x)) <= 0.5


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.5, 0.5), (1.0, 0.3)])
def test_decode_crop_matches_rescale_then_crop(offset):
    image = smooth_image(120, 160)
    scale, crop = 96, 64
    rescaled = pp.rescale_smallest_side(tf.constant(image), scale).numpy()
    y = round(offset[0] * (rescaled.shape[0] - crop))
    x = round(offset[1] * (rescaled.shape[1] - crop))
    reference = rescaled[y:y + crop, x:x + crop]
    for data in [encode(image, "PNG"), encode(image, "JPEG", quality=95)]:
        out = pp.decode_crop(tf.constant(data), scale, crop, offset).numpy()
        assert out.shape == (crop, crop, 3)
        assert np.abs(out - reference).mean() < 3.0


def block_pattern(height, width, seed=0):
    """Grey 8x8 blocks of random levels: a JPEG at quality 100 without chroma subsampling
    stores each as its DC term alone, so it decodes to the same levels (within rounding)."""
    levels = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8), dtype=np.uint8)
    return levels.repeat(8, 0).repeat(8, 1)[..., None].repeat(3, -1)


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.5, 0.5), (1.0, 0.3), (0.2, 1.0)])
def test_decode_crop_is_exactly_the_window_at_the_closed_form_offset(offset):
    """Catches a crop window off by a pixel (or rows and columns swapped) in either decoding path,
    which a comparison after resampling cannot see. At scale == the smallest side nothing is
    resampled, so the crop is image[y:y + crop, x:x + crop], y = round(offset_y * (H - crop)):
    checked on a PNG of noise and on a JPEG of flat 8x8 blocks (exact up to one level)."""
    height, width, crop = 64, 96, 48
    y, x = round(offset[0] * (height - crop)), round(offset[1] * (width - crop))
    noise = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    blocks = block_pattern(height, width)
    for image, data, atol in [(noise, encode(noise, "PNG"), 0),
                              (blocks, encode(blocks, "JPEG", quality=100, subsampling=0), 1)]:
        out = np.asarray(pp.decode_crop(tf.constant(data), height, crop, offset), np.float64)
        np.testing.assert_allclose(out, image[y:y + crop, x:x + crop], atol=atol, rtol=0)


def test_jpeg_window_decode_equals_full_decode_then_crop():
    data = encode(smooth_image(120, 160), "JPEG", quality=90)
    window = pp.crop_window(120, 160, 96, 64, (0.3, 0.7)).numpy()
    y, x, side, _ = window
    full = pp.decode(tf.constant(data)).numpy()[y:y + side, x:x + side]
    windowed = tf.image.decode_and_crop_jpeg(data, window, channels=3).numpy()
    difference = np.abs(windowed.astype(int) - full)  # chroma upsampling differs at the window's edge
    assert difference.mean() < 0.2 and difference.max() <= 6


def test_to_pixels_rounds_to_the_nearest_level_and_saturates():
    """Catches a truncating cast (0.9 -> 0: every pixel darker by up to 1) or a wrapping one (300 -> 44)."""
    values = tf.constant([-3.0, 0.2, 0.9, 1.5, 127.49, 254.6, 300.0])
    np.testing.assert_array_equal(pp.to_pixels(values).numpy(), [0, 0, 1, 2, 127, 255, 255])
    assert pp.to_pixels(values).dtype == tf.uint8


@pytest.mark.parametrize("bgr", [False, True])
def test_normalize_is_mean_subtraction_and_std_division(bgr):
    image = np.random.default_rng(0).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    norm = Normalization((120.0, 110.0, 100.0), (60.0, 50.0, 40.0), bgr=bgr)
    expected = (image - np.array([120.0, 110.0, 100.0])) / np.array([60.0, 50.0, 40.0])
    np.testing.assert_allclose(norm.apply(image.astype(np.float32)), expected[..., ::-1] if bgr else expected, rtol=1e-6)


@pytest.mark.parametrize("fmt,mode,tolerance", [
    ("PNG", "L", 1), ("PNG", "RGBA", 0), ("BMP", "RGB", 0), ("GIF", "P", 0), ("JPEG", "CMYK", 12),
])
def test_load_image_file_gives_rgb(tmp_path, fmt, mode, tolerance):
    source = smooth_image(30, 40)
    path = tmp_path / f"image.{fmt.lower()}"
    Image.fromarray(source).convert(mode).save(path, fmt)
    expected = np.asarray(Image.open(path).convert("RGB"))  # PIL as the independent decoder
    out = pp.load_image_file(str(path))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).mean() <= tolerance


def test_load_image_file_reads_the_first_gif_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    out = pp.load_image_file(str(tmp_path / "anim.gif"))
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


@pytest.mark.parametrize("content", [b"not an image", encode(smooth_image(64, 64), "JPEG")[:500]])
def test_load_image_file_names_the_unreadable_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.jpg"):
        pp.load_image_file(str(path))
