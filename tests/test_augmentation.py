"""The device-side arithmetic (flip, colour shift, normalisation) against numpy closed forms, and
the uint8 host path against the float path it replaced."""

import io

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from numerics import EPS32, assert_float32_close
import vgg_jax
from vgg_jax.core.normalization import Normalization
from vgg_jax.data import augmentation as aug, preprocessing as pp
from vgg_jax.train import steps

NORM = Normalization((120.0, 110.0, 100.0), (60.0, 50.0, 40.0), bgr=True)
IDENTITY = Normalization((0.0,) * 3, (1.0,) * 3)


def photo_jpeg(height=120, width=160):
    """A smooth, textured JPEG: resampling it gives non-integer pixels, so rounding to uint8 matters."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * y / height, 255 * x / width, 128 + 100 * np.sin((x + y) / 7)], -1)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def reference(image, flip, alpha, normalization):
    """The float host path the device replaced, in float64: flip, + 255 eigvec @ (alpha eigval),
    (x - mean) / std, BGR."""
    image = image[:, ::-1] if flip else image
    image = image + 255.0 * np.array(aug.IMAGENET_EIGVEC) @ (np.asarray(alpha, np.float64) * aug.IMAGENET_EIGVAL)
    image = (image - np.array(normalization.mean_rgb)) / np.array(normalization.std_rgb)
    return image[..., ::-1] if normalization.bgr else image


def test_device_augmentation_of_uint8_crops_matches_the_float_path_within_rounding():
    """Catches any change of the numbers beyond uint8 quantisation: a wrong flip axis, a colour
    shift of the wrong sign, scale or channel order, a missing or doubled BGR swap."""
    data = tf.constant(photo_jpeg())
    offsets = np.random.default_rng(0).uniform(size=(8, 2))
    floats = np.stack([pp.decode_crop(data, 96, 64, offset).numpy() for offset in offsets]).astype(np.float64)
    pixels = pp.to_pixels(floats).numpy()
    assert np.abs(pixels - floats).max() <= 0.5 and np.abs(pixels - floats).max() > 0.4  # quantisation is at stake
    keys = aug.example_keys(seed=3, step=5, batch_size=8)
    flips, alphas = map(np.asarray, aug.draws(keys, 0.1))
    assert 0 < flips.sum() < 8  # both branches are compared
    got = np.asarray(jax.jit(lambda x, k: aug.augment(x, k, normalization=NORM, flip=True, color_shift_std=0.1))(
        pixels, keys))
    expected = np.stack([reference(f, flip, alpha, NORM) for f, flip, alpha in zip(floats, flips, alphas)])
    # |pixel - float| <= 0.5 before the division by std; then a few float32 roundings of values
    # up to (255 + |shift| + mean) / std.
    std, mean = np.array(NORM.std_rgb)[::-1], np.array(NORM.mean_rgb)[::-1]
    shift = 255.0 * np.abs(alphas).max() * max(aug.IMAGENET_EIGVAL)
    bound = 0.5 / std + 4 * EPS32 * (255.0 + shift + mean) / std
    assert np.all(np.abs(got - expected) <= bound)


def test_flip_mirrors_half_the_examples_and_nothing_else():
    """Catches a flip of the wrong axis, one applied to every example or none, or draws that
    differ between two calls with the same keys."""
    n = 2000
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), np.uint8)
    keys = aug.example_keys(seed=0, step=0, batch_size=n)
    out = np.asarray(aug.augment(np.repeat(image[None], n, 0), keys, normalization=IDENTITY, flip=True,
                                 color_shift_std=0.0))
    mirrored = np.array([np.array_equal(x, image[:, ::-1]) for x in out])
    assert all(m or np.array_equal(x, image) for m, x in zip(mirrored, out))
    assert abs(mirrored.mean() - 0.5) < 4 * np.sqrt(0.25 / n)  # a fair coin, 4 standard errors
    again = aug.augment(np.repeat(image[None], n, 0), keys, normalization=IDENTITY, flip=True, color_shift_std=0.0)
    np.testing.assert_array_equal(out, again)


def test_pca_eigenvectors_are_orthonormal():
    """Catches a mistyped eigenvector entry (AlexNet's table)."""
    eigvec = np.array(aug.IMAGENET_EIGVEC)
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-3)


def test_color_shift_has_zero_mean_and_alexnet_covariance():
    """Catches a shift that is not one per image, alphas of the wrong std, or the eigenvalues
    applied on the wrong side (covariance eigvec diag((std eigval)^2) eigvec^T on a 0-255 scale)."""
    std, draws = 0.1, 4000
    keys = aug.example_keys(seed=7, step=0, batch_size=draws)
    shifts = np.asarray(aug.augment(np.zeros((draws, 2, 2, 3), np.uint8), keys, normalization=IDENTITY,
                                    flip=False, color_shift_std=std))
    assert np.all(shifts == shifts[:, :1, :1])  # one shift per image, the same on every pixel
    shifts = shifts[:, 0, 0]
    eigvec, eigval = np.array(aug.IMAGENET_EIGVEC), np.array(aug.IMAGENET_EIGVAL)
    expected = 255**2 * eigvec @ np.diag((std * eigval) ** 2) @ eigvec.T
    sem = np.sqrt(np.diag(expected) / draws)
    assert np.all(np.abs(shifts.mean(0)) < 4 * sem)
    np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.08 * expected.max())


@pytest.mark.parametrize("bgr", [False, True])
def test_normalize_is_mean_subtraction_and_std_division(bgr):
    """Catches mean and std swapped, integer arithmetic on uint8 (wrap-around), or BGR ignored."""
    image = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    norm = Normalization((120.0, 110.0, 100.0), (60.0, 50.0, 40.0), bgr=bgr)
    expected = (image - np.array([120.0, 110.0, 100.0])) / np.array([60.0, 50.0, 40.0])
    np.testing.assert_allclose(aug.normalize(image, norm), expected[..., ::-1] if bgr else expected,
                               rtol=0, atol=4 * EPS32 * 255 / 40)


def test_draws_depend_on_seed_step_and_index_only():
    """Catches keys that depend on the batch size (a resume or an accumulation split would see
    other flips), or that repeat across steps or seeds."""
    config = ml_collections.ConfigDict({"flip": True, "color_shift_std": 0.1})
    images = np.random.default_rng(1).integers(0, 256, (8, 4, 4, 3), np.uint8)
    apply = aug.train_augmentation(config, NORM, seed=0)
    np.testing.assert_array_equal(apply(images, 3)[:4], apply(images[:4], 3))
    np.testing.assert_array_equal(apply(images, 3), aug.train_augmentation(config, NORM, seed=0)(images, 3))
    assert not np.array_equal(apply(images, 3), apply(images, 4))
    assert not np.array_equal(apply(images, 3), aug.train_augmentation(config, NORM, seed=1)(images, 3))


def test_eval_step_normalises_uint8_batches_on_the_device():
    """Catches an eval step that feeds raw pixels to the net, or normalises twice."""
    model = vgg_jax.create_model("vgg11", num_classes=4, width=1 / 16, image_size=32, init_scheme="glorot")
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (4, 32, 32, 3), np.uint8)
    batch = {"label": rng.integers(0, 4, 4).astype(np.int32), "mask": np.array([True, True, True, False])}
    on_device = steps.eval_step(variables, {**batch, "image": pixels}, model=model, normalization=NORM)
    on_host = steps.eval_step(variables, {**batch, "image": reference(pixels, False, np.zeros(3), NORM)
                                             .astype(np.float32)}, model=model)
    assert_float32_close(on_device["loss"], on_host["loss"], terms=9 * 64, layers=len(variables["params"]))
    assert {k: int(on_device[k]) for k in ("top1", "top5", "count")} == {k: int(on_host[k]) for k in ("top1", "top5", "count")}
