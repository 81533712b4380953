"""The vgg_jax workloads the benchmarks time: forward pass and train step, and their FLOPs.

Kept free of torch so benchmarks/gpu_check.sh needs only jax.
"""

from __future__ import annotations

import jax.numpy as jnp

import vgg_jax
from configs import default as default_config
from vgg_jax import training
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


def jax_functions(arch: str, dtype, images, labels):
    """(forward, train step) closures for one network: the library's `jitted_train_step` with the
    quickstart config's optimiser (SGD momentum 0.9, L2 5e-4 on kernels), the state donated
    and updated in place."""
    model = vgg_jax.create_model(arch, dtype=dtype)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    train = default_config.get_config().train
    tx = training.make_optimizer(train, steps_per_epoch=1)
    state = [training.create_train_state(model, tx, seed=0)]
    train_step = training.jitted_train_step(model, tx, train)
    forward = vgg_jax.jit(lambda variables, x: model.apply(variables, x))

    def run_train():
        state[0], metrics = train_step(state[0], batch)
        metrics["loss"].block_until_ready()

    def run_forward():
        forward(state[0].variables(), batch["image"]).block_until_ready()

    return run_forward, run_train
