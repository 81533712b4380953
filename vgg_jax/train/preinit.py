"""Pre-initialisation: a new net starts from layers of another (Sec. 3.1).

The paper trains net A from random weights, then starts the deeper nets from its first four
conv layers and three fc layers (the rest random). The same copy serves a run at a new training
scale (all layers) and transfer learning (all but the head).
"""

from __future__ import annotations

import logging
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax.core import compilation
from vgg_jax.core.checkpoints import CheckpointError, shape_mismatches
from vgg_jax.weights import loading

log = logging.getLogger("vgg_jax.train")


# The paper (Sec. 3.1): deeper nets start from net A's first four convs and three FC layers.
NET_A_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


def copy_layers(target: dict, source: dict, layers: Iterable[str]) -> tuple[dict, list[str]]:
    """`target` variables with `layers` (params and BN statistics) taken from `source`.

    Used for the paper's pre-initialisation from net A, for continuing a same-config run at a
    new training scale, and for transfer learning (all but the head). Raises naming every
    layer whose shapes differ.
    """
    layers = list(layers)
    missing = [layer for layer in layers if layer not in source["params"]]
    if missing:
        raise CheckpointError(f"layers not in the source checkpoint: {missing}")
    problems = shape_mismatches(target["params"], source["params"], layers)
    if problems:
        raise CheckpointError("incompatible shapes for pre-initialisation: " + "; ".join(problems))
    result = {collection: dict(values) for collection, values in target.items()}
    for layer in layers:
        # A conv of a BN net travels with its BN layer (scale, bias and running statistics).
        names = (layer, layer.replace("conv", "bn")) if layer.startswith("conv") else (layer,)
        for name in names:
            for collection in ("params", "batch_stats"):
                if name in source.get(collection, {}) and name in result.get(collection, {}):
                    result[collection][name] = source[collection][name]
    return result, layers


def layers_to_copy(selection: str, target_params: dict) -> list[str]:
    """'net_a' (the paper's rule), 'all', 'backbone' (all but fc8), or a comma-separated list."""
    weight_layers = [name for name in target_params if not name.startswith("bn")]
    if selection == "net_a":
        return [name for name in NET_A_LAYERS if name in target_params]
    if selection == "all":
        return weight_layers
    if selection == "backbone":
        return [name for name in weight_layers if name != "fc8"]
    return [name.strip() for name in selection.split(",") if name.strip()]


def layer_table(target_params: dict, copied: Iterable[str], source: str) -> str:
    """A log table: each weight layer and whether it came from `source` or is random."""
    copied = set(copied)
    rows = [f"{name:<8} {'copied from ' + source if name in copied else 'random init'}"
            for name in target_params if not name.startswith("bn")]
    return "\n".join(["layer    origin", *rows])


def initial_variables(train, arch: str, model):
    """Pre-initialisation for a new run of `arch` from the train section's init_from, any source
    `vgg_jax.load` takes (a weight file is read as `arch`'s): (variables or None, normalisation or None)."""
    if not train.init_from:
        return None, None
    try:
        source, source_spec, _ = loading.load_variables(train.init_from, arch=arch)
    except ValueError as error:  # CheckpointError and WeightsError are ValueErrors
        raise CheckpointError(f"train.init_from={train.init_from!r}: {error}") from error
    target = compilation.jit(model.init)(jax.random.PRNGKey(train.seed),
                                         jnp.zeros((1, model.image_size, model.image_size, 3)))
    target = jax.tree.map(np.asarray, target)
    layers = layers_to_copy(train.init_layers, target["params"])
    variables, copied = copy_layers(target, source, layers)
    log.info("pre-initialised from %s:\n%s", train.init_from,
             layer_table(target["params"], copied, train.init_from))
    return variables, source_spec.normalization
