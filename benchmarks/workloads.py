"""The vgg_jax workloads the benchmarks time: forward pass and train step, and their FLOPs.

Kept free of torch so benchmarks/device_check.sh needs only jax.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import vgg_jax
from configs import default as default_config
from vgg_jax.core.models import BLOCK_WIDTHS, FC_WIDTH, LAYOUTS
from vgg_jax.train import steps

ARCHS = {"vgg11": "A", "vgg16": "D", "vgg19": "E"}


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function; in each round every function is called twice
    in a row and the second call is timed."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            times[name].append(time_call(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


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


def train_setup(arch: str, **model_kwargs):
    """(model, optimiser, train config) of the benchmarks: the quickstart config's optimiser
    (SGD momentum 0.9, L2 5e-4 on kernels)."""
    model = vgg_jax.create_model(arch, **model_kwargs)
    train = default_config.get_config().train
    return model, steps.make_optimizer(train, steps_per_epoch=1), train


def jax_functions(arch: str, dtype, images, labels, plain_jit: bool = False, **model_kwargs):
    """(forward, train step) closures for one network: the library's `jitted_train_step`, the
    state donated and updated in place. `plain_jit`: both under a plain `jax.jit`, without
    vgg_jax.COMPILER_OPTIONS, as a user's own jit would compile them."""
    model, tx, train = train_setup(arch, dtype=dtype, **model_kwargs)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    state = [steps.create_train_state(model, tx, seed=0)]
    train_step = steps.jitted_train_step(model, tx, train)
    jit = vgg_jax.jit
    if plain_jit:
        train_step = jax.jit(train_step.__wrapped__, donate_argnums=0)
        jit = jax.jit
    forward = jit(lambda variables, x: model.apply(variables, x))

    def run_train():
        state[0], metrics = train_step(state[0], batch)
        metrics["loss"].block_until_ready()

    def run_forward():
        forward(state[0].variables(), batch["image"]).block_until_ready()

    return run_forward, run_train
