"""VGG(remat=True): the same variables and results, and a compiled step that really recomputes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import vgg_jax
from configs import default as default_config
from numerics import assert_float32_close
from vgg_jax.train import configuration

# Config A with BN and LRN: every kind of layer a conv block holds.
SMALL = dict(layout="A", batch_norm=True, lrn=True, width=1 / 16, image_size=32, num_classes=5)


def loss_and_grads(model, variables, images, labels):
    """Loss, updated batch statistics and parameter gradients of one train-mode step."""
    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
        loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
        return loss, updates
    return vgg_jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])


@pytest.mark.slow
def test_remat_keeps_variable_names_and_results():
    plain, remat = vgg_jax.VGG(**SMALL), vgg_jax.VGG(**SMALL, remat=True)
    images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 4])
    variables = plain.init(jax.random.key(0), images)
    remat_variables = remat.init(jax.random.key(0), images)
    # Same tree, same initial values: checkpoints and imported weights fit either model.
    assert jax.tree.structure(remat_variables) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, remat_variables, variables)
    expected = loss_and_grads(plain, variables, images, labels)
    actual = loss_and_grads(remat, variables, images, labels)
    # The recomputed forward pass is the same arithmetic; only XLA's fusion may reorder sums.
    fan_in = 9 * plain.scaled(512)
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert_float32_close(got, want, terms=fan_in, layers=len(variables["params"]))


@pytest.mark.slow
def test_remat_recomputes_each_block_and_needs_less_memory():
    # XLA:CPU would merge the recomputation back into the forward pass (CSE) were the barriers
    # expanded first; vgg_jax.jit keeps them (vgg_jax.core.compilation).
    def compiled(model):
        images = jax.ShapeDtypeStruct((16, 64, 64, 3), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        loss = lambda params, x: jnp.sum(model.apply({"params": params}, x) ** 2)
        return vgg_jax.jit(jax.grad(loss)).lower(variables["params"], images).compile()

    config = dict(layout="A", width=1 / 8, image_size=64, num_classes=5)
    plain, remat = compiled(vgg_jax.VGG(**config)), compiled(vgg_jax.VGG(**config, remat=True))
    convs = sum(len(kernels) for kernels in vgg_jax.LAYOUTS["A"])
    count = lambda program: program.as_text().count(" convolution(")
    assert count(plain) == 3 * convs - 1  # forward, input and kernel gradients (none for the image)
    assert count(remat) == count(plain) + convs  # plus every conv's forward, recomputed
    assert remat.memory_analysis().temp_size_in_bytes < plain.memory_analysis().temp_size_in_bytes


def test_config_remat_and_conv_algorithm_are_checked():
    model = default_config.get_config().model
    assert not configuration.model_problems(model)
    for field, typo in [("remat", "yes"), ("conv_algorithm", "winnograd")]:
        wrong = ml_collections.ConfigDict({**model.to_dict(), field: typo})  # e.g. a config file's typo
        assert any(f"model.{field}" in problem for problem in configuration.model_problems(wrong))
