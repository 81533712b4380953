"""Winograd F(m x m, 3 x 3) convolution against the direct one: exact in float64, and within a
tolerance that follows from its transforms in a float32 model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vgg_jax
from numerics import float32_tolerance
from vgg_jax.core import winograd


def direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def error_growth(m: int) -> float:
    """How much larger than the direct convolution's rounding Winograd's can be: per spatial
    dimension, an output sums |A^T| (|G| |g|) (|B^T| |d|) over the transformed domain, against
    the direct sum of 3 terms |g| |d|; squared for two dimensions. (F(2x2): 7; F(4x4): 256.)"""
    b_t, g, a_t = (np.abs(t) for t in winograd.TRANSFORMS[m])
    per_dimension = np.max(a_t @ (g.sum(axis=1) * b_t.sum(axis=1))) / 3
    return float(per_dimension**2)


def value_and_pullback(conv, x, kernel, upstream):
    y, pullback = jax.vjp(conv, x, kernel)
    return (y, *pullback(upstream))


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_and_its_gradients_equal_direct_convolution_in_float64(m):
    shape = (2, 7, 9, 5)  # sides that are not multiples of the tile
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x, kernel = jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.normal(size=(3, 3, shape[-1], 6)))
        upstream = jnp.asarray(rng.normal(size=shape[:3] + (6,)))
        expected = jax.jit(value_and_pullback, static_argnums=0)(direct, x, kernel, upstream)
        actual = jax.jit(value_and_pullback, static_argnums=0)(
            lambda x, k: winograd.conv3x3(x, k, m), x, kernel, upstream)
        # float64 rounding of sums over 9 * C taps, grown by the transforms: ~1e-13 of the scale.
        terms = 9 * shape[-1] * shape[0] * shape[1] * shape[2]  # the kernel gradient's sums
        for got, want in zip(actual, expected):
            scale = float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(np.float64).eps * np.sqrt(terms)
                                       * error_growth(m) * scale)


@pytest.mark.slow
def test_winograd_vgg_matches_direct_within_its_rounding(monkeypatch):
    # A small vgg11 with every 3x3 layer on Winograd (the size thresholds are for VGG's real
    # widths). Worst relative errors measured: logits ~1e-6, gradients ~1e-5 of their scale.
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_SIDE", 1)
    config = dict(layout="A", width=1 / 16, image_size=32, num_classes=5, init_scheme="kaiming")
    plain, fast = vgg_jax.VGG(**config), vgg_jax.VGG(**config, conv_algorithm="winograd")
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = plain.init(jax.random.key(0), images)
    assert jax.tree.structure(jax.eval_shape(fast.init, jax.random.key(0), images)) == jax.tree.structure(variables)

    def logits_and_grads(model):
        def loss(params):
            logits = model.apply({"params": params}, images)
            return jnp.sum(logits**2), logits
        return vgg_jax.jit(jax.grad(loss, has_aux=True)).lower(variables["params"]).compile()

    fast_step = logits_and_grads(fast)
    assert " convolution(" not in fast_step.as_text()  # forward and backward
    expected, actual = logits_and_grads(plain)(variables["params"]), fast_step(variables["params"])
    layers = len(variables["params"])
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        tolerance = float32_tolerance(want, terms=9 * plain.scaled(512), layers=layers) * error_growth(winograd.TILE)
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)


def test_winograd_is_used_only_where_it_pays():
    model = vgg_jax.vgg16(conv_algorithm="winograd")
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    program = vgg_jax.jit(model.apply).lower(variables, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    # conv1_x (224x224, <= 64 channels), conv2_1 (64 channels) and conv5_x (14x14) stay direct.
    assert program.as_text().count("convolution") == 2 + 1 + 3


def test_bad_conv_algorithm_and_convolutions_winograd_cannot_do_are_refused():
    with pytest.raises(ValueError, match="conv_algorithm"):
        vgg_jax.vgg11(conv_algorithm="fft")
    x, kernel = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="stride-1"):
        winograd.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
