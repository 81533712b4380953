"""The vgg_jax workloads the benchmarks time: forward pass and train step, and their FLOPs.

Kept free of torch so benchmarks/gpu_check.sh needs only jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import vgg_jax
from vgg_jax.models import BLOCK_WIDTHS, FC_WIDTH, LAYOUTS

ARCHS = {"vgg11": "A", "vgg16": "D", "vgg19": "E"}


def forward_flops(layout: str, size: int = 224, num_classes: int = 1000) -> int:
    """Multiply-adds x 2 of one forward pass on a size x size image (convs and the fc head)."""
    flops, channels, side = 0, 3, size
    for width, kernels in zip(BLOCK_WIDTHS, LAYOUTS[layout]):
        for kernel in kernels:
            flops += 2 * side * side * channels * width * kernel * kernel
            channels = width
        side //= 2
    widths = (side * side * channels, FC_WIDTH, FC_WIDTH, num_classes)
    return flops + sum(2 * a * b for a, b in zip(widths, widths[1:]))


def sgd_l2(learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """The paper's optimiser: SGD momentum 0.9, L2 5e-4 on the weights."""
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(learning_rate, momentum=0.9))


def make_jax_train_step(model, optimizer):
    """The library's kind of step: softmax cross-entropy, dropout, jitted, the state donated."""
    def loss_fn(params, images, labels, rng):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

    def train_step(state, images, labels):
        params, opt_state, rng = state
        rng, step_rng = jax.random.split(rng)
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, step_rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), loss

    return jax.jit(train_step, donate_argnums=0)


def jax_functions(arch: str, dtype, images, labels):
    """(forward, train step) closures for one network; the train state is updated in place."""
    model = vgg_jax.create_model(arch, dtype=dtype)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1])["params"]
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    optimizer = sgd_l2()
    train_step = make_jax_train_step(model, optimizer)
    state = [(params, optimizer.init(params), jax.random.PRNGKey(1))]

    def run_train():
        state[0], loss = train_step(state[0], images, labels)
        loss.block_until_ready()

    def run_forward():
        forward(state[0][0], images).block_until_ready()

    return run_forward, run_train
