"""Feature extraction, perceptual loss and descriptors against torch and hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from numerics import assert_float32_close
from random_nets import he_normal_variables
import vgg_jax
from test_weights import TorchvisionVGG, imported_model, input_images
from vgg_jax.features import extract_features, image_descriptor, perceptual_loss
from vgg_jax.weights import import_weights

# torchvision vgg16's `features` indices: the output of module N-1 is what features[:N] returns.
TORCH_VGG16_OUTPUTS = {"relu1_2": 4, "relu3_3": 16, "pool5": 31}


@pytest.fixture(scope="module")
def vgg16_pair(tmp_path_factory):
    """A torchvision-layout vgg16 (1x1 head window) and our model with its imported weights."""
    reference = TorchvisionVGG("vgg16", window=1, num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    variables, _ = import_weights(path, "vgg16")
    return reference, imported_model("vgg16", variables), variables


def torch_activation(reference, images, name):
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        if name == "relu7":  # classifier: fc6, ReLU, dropout, fc7, ReLU
            return reference.classifier[:5](torch.flatten(reference.features(x), 1)).numpy()[:, None, None]
        return reference.features[:TORCH_VGG16_OUTPUTS[name]](x).permute(0, 2, 3, 1).numpy()


def test_features_equal_torch_activations(vgg16_pair):
    reference, model, variables = vgg16_pair
    images = input_images(32)
    names = ("relu1_2", "relu3_3", "pool5", "relu7")
    features = vgg_jax.jit(lambda v, x: extract_features(model, v, x, names))(variables, images)
    assert set(features) == set(names)
    for name in names:
        assert_float32_close(features[name], torch_activation(reference, images, name), terms=25088, layers=15)


def test_perceptual_loss_equals_torch_and_differentiates(vgg16_pair):
    reference, model, variables = vgg16_pair
    x, y = input_images(32, seed=1), input_images(32, seed=2)
    names, weights = ("relu1_2", "relu3_3"), (1.0, 0.5)
    expected = sum(w * np.mean((torch_activation(reference, x, n) - torch_activation(reference, y, n)) ** 2)
                   for n, w in zip(names, weights))
    loss = vgg_jax.jit(lambda a, b: perceptual_loss(model, variables, a, b, names, weights))
    np.testing.assert_allclose(loss(x, y), expected, rtol=1e-4)

    grad = vgg_jax.jit(jax.grad(lambda a, b: perceptual_loss(model, variables, a, b, names, weights)))
    g = grad(x, y)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
    # Identical images: zero up to rounding (XLA:CPU's convolution may round an image
    # differently at another position in the batch).
    assert float(loss(x, x)) <= 1e-9 * float(loss(x, y))
    assert float(jnp.max(jnp.abs(grad(x, x)))) <= 1e-6 * float(jnp.max(jnp.abs(g)))


@pytest.fixture(scope="module")
def small_net():
    """A narrow vgg11 with He-normal kernels and random biases."""
    model = vgg_jax.vgg11(width=0.125, image_size=32, num_classes=3)
    return model, he_normal_variables(model)


def manual_descriptor(model, variables, image):
    """fc6/fc7 by hand on each pool5 position (1x1 head window), averaged, with the mirror."""
    params = variables["params"]

    def pooled_relu7(x):
        pool5 = np.asarray(model.clone(include_top=False).apply(variables, x[None]))[0]
        h = np.maximum(pool5 @ np.asarray(params["fc6"]["kernel"]) + np.asarray(params["fc6"]["bias"]), 0)
        h = np.maximum(h @ np.asarray(params["fc7"]["kernel"]) + np.asarray(params["fc7"]["bias"]), 0)
        return h.mean(axis=(0, 1))

    descriptor = (pooled_relu7(image) + pooled_relu7(image[:, ::-1])) / 2
    return descriptor / np.linalg.norm(descriptor)


def test_descriptor_is_unit_norm_flip_invariant_and_the_appendix_b_recipe(small_net):
    model, variables = small_net
    images = np.asarray(jax.random.normal(jax.random.key(1), (2, 64, 96, 3)))
    describe = vgg_jax.jit(lambda x: image_descriptor(model, variables, x))
    descriptors = describe(images)
    assert descriptors.shape == (2, 512)
    np.testing.assert_allclose(jnp.linalg.norm(descriptors, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(describe(images[:, :, ::-1]), descriptors, atol=1e-5)
    for image, descriptor in zip(images, descriptors):
        np.testing.assert_allclose(descriptor, manual_descriptor(model, variables, image), atol=1e-5)


def test_features_accept_any_size_without_the_head(small_net):
    model, variables = small_net
    features = extract_features(model, variables, jnp.zeros((1, 48, 80, 3)), ("relu1_1", "pool5"))
    assert features["relu1_1"].shape == (1, 48, 80, 8) and features["pool5"].shape == (1, 1, 2, 64)


def test_bad_feature_requests_are_named(small_net):
    model, variables = small_net
    with pytest.raises(ValueError, match=r"unknown feature names \['relu9_9'\].*relu1_1"):
        extract_features(model, variables, jnp.zeros((1, 32, 32, 3)), ("relu9_9",))
    with pytest.raises(ValueError, match=r"\['relu7'\] need a model with include_top=True"):
        extract_features(model.clone(include_top=False), variables, jnp.zeros((1, 32, 32, 3)), ("relu7",))
    with pytest.raises(ValueError, match="2 weights for 1 feature names"):
        perceptual_loss(model, variables, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)), ("relu1_1",), (1, 2))
