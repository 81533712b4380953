"""spec.preprocess: the evaluation preprocessing that travels with the weights, in one call."""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from numerics import float32_tolerance
from vgg_jax.core import normalization
from vgg_jax.weights import model_directory

KWARGS = {"num_classes": 10, "width": 0.125, "image_size": 64}


@pytest.mark.parametrize("convention", [normalization.CAFFE_BGR, normalization.TORCHVISION, normalization.PAPER],
                         ids=["caffe_bgr", "torchvision", "paper"])
def test_a_flat_colour_becomes_the_weights_normalised_values(convention):
    """Catches a missing or wrong normalisation (the channel order of Caffe/Keras weights, the
    std of torchvision's) and a wrong output shape. Resampling keeps a flat colour flat, so the
    expected values are the closed form, in float64."""
    spec = model_directory.ModelSpec("vgg11", KWARGS, None, convention)
    pixel = np.array([200.0, 100.0, 50.0])
    batch = spec.preprocess(np.full((30, 45, 3), pixel, np.uint8), 48)
    expected = (pixel - np.array(convention.mean_rgb)) / np.array(convention.std_rgb)
    expected = expected[::-1] if convention.bgr else expected
    assert batch.shape == (1, 48, 72, 3) and batch.dtype == np.float32
    # float32 rounding of the 0-255 values: a 4-tap bilinear sum, then the mean/std step
    tolerance = float32_tolerance(pixel, terms=4, layers=2) / min(convention.std_rgb)
    np.testing.assert_allclose(batch, np.broadcast_to(expected, batch.shape), rtol=0, atol=tolerance)


def test_a_file_and_its_pixels_give_the_same_batch_at_the_models_own_size_by_default(tmp_path):
    """Catches a file decoded differently from an array (channel order, alpha) and a default
    scale other than the model's image_size."""
    spec = model_directory.ModelSpec("vgg11", KWARGS, None, normalization.TORCHVISION)
    flower = load_sample_images().images[1]  # 427 x 640
    Image.fromarray(flower).save(tmp_path / "flower.png")
    from_file = spec.preprocess(tmp_path / "flower.png")
    assert from_file.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(from_file, spec.preprocess(flower))
