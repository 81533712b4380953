"""The NNX modules against the Linen VGG they bridge: logits, gradients, batch statistics, a
fine-tuning step."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from numerics import float32_tolerance
import vgg_jax
import vgg_jax.nnx
from vgg_jax.core import checkpoints
from vgg_jax.weights import model_directory



def random_variables(model, seed=0):
    """He-normal kernels, random biases, BN scales and statistics, drawn in numpy (compiling
    model.init's random ops would take longer than the tests)."""
    shapes = checkpoints.abstract_variables(model)
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=shape.shape) * np.sqrt(2 / np.prod(shape.shape[:-1]))
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape.shape)
        return rng.uniform(-0.1, 0.1, shape.shape)

    return jax.tree.map_with_path(lambda path, shape: leaf(path, shape).astype(np.float32), shapes)


def tolerance(variables, values):
    """float32 rounding of the widest sum (a layer's fan-in) over every layer, at the values' scale."""
    fan_in = max(np.prod(kernel.shape[:-1]) for kernel in jax.tree.leaves(variables["params"]) if kernel.ndim > 1)
    return float32_tolerance(values, int(fan_in), layers=len(variables["params"]))


@pytest.fixture(scope="module", params=["vgg11", "vgg11_bn"])
def linen_and_directory(request, tmp_path_factory):
    model = vgg_jax.create_model(request.param, width=1 / 16, image_size=32, num_classes=3)
    variables = random_variables(model)
    directory = tmp_path_factory.mktemp("nnx") / request.param
    spec = model_directory.ModelSpec(request.param, {"width": 1 / 16, "image_size": 32, "num_classes": 3})
    model_directory.save_model(directory, variables, spec)
    return model, variables, directory


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 32, 32, 3)).astype(np.float32), np.array([0, 1, 2, 0])


def test_nnx_module_has_the_linen_names_and_logits(linen_and_directory):
    model, variables, directory = linen_and_directory
    module, _ = vgg_jax.nnx.load(directory)
    assert set(nnx.state(module, nnx.Param)) == set(variables["params"])  # conv1_1 .. fc8, bn1_1 ..
    if model.batch_norm:
        assert set(nnx.state(module, nnx.BatchStat)) == set(variables["batch_stats"])
    images, _ = batch()
    expected = np.asarray(model.apply(variables, images))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(module, images), expected,
                               atol=tolerance(variables, expected), rtol=0)


@pytest.mark.slow
def test_nnx_fine_tuning_step_matches_linen_and_lowers_the_loss(linen_and_directory):
    model, variables, _ = linen_and_directory
    model = model.clone(dropout_rate=0.0)  # deterministic, so NNX and Linen see the same loss
    module = vgg_jax.nnx.from_linen(model, variables)
    optimizer = nnx.Optimizer(module, optax.sgd(0.01), wrt=nnx.Param)
    images, labels = batch()

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(images, train=True), labels).mean()

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss, grads

    def linen_loss(params):
        logits, state = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

    linen_step = jax.jit(jax.value_and_grad(linen_loss, has_aux=True))
    (expected_loss, linen_state), expected_grads = linen_step(variables["params"])
    loss, grads = step(module, optimizer)
    np.testing.assert_allclose(loss, expected_loss, atol=tolerance(variables, expected_loss), rtol=0)
    atol = tolerance(variables, np.concatenate([g.ravel() for g in jax.tree.leaves(expected_grads)]))
    for layer, values in expected_grads.items():  # (a BN net's conv biases have zero gradient: noise)
        for name, expected in values.items():
            np.testing.assert_allclose(grads[layer][name][...], expected, atol=atol, rtol=0)
    if model.batch_norm:  # train mode updated the running statistics as Linen does
        for layer, statistics in linen_state["batch_stats"].items():
            for name, expected in statistics.items():
                np.testing.assert_allclose(getattr(module, layer)[name][...], expected,
                                           atol=tolerance(variables, expected), rtol=0)
    loss_after, _ = step(module, optimizer)
    assert float(loss_after) < float(loss)


def test_nnx_dropout_draws_new_keys_each_call(linen_and_directory):
    model, variables, _ = linen_and_directory
    module = vgg_jax.nnx.from_linen(model, variables, rngs=nnx.Rngs(dropout=3))
    images, _ = batch()
    forward = nnx.jit(lambda m, x: m(x, train=True))
    first, second = forward(module, images), forward(module, images)
    assert not np.allclose(first, second)
