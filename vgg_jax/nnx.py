"""The VGG networks as Flax NNX modules, for NNX code (`nnx.jit`, `nnx.value_and_grad`, `nnx.Optimizer`).

The Linen `vgg_jax.VGG` behind flax's bridge (`nnx.bridge.ToNNX`): one implementation of the
network, and the same parameter names (conv1_1 .. fc8, bn1_1 .. with their batch statistics).

    model, spec = vgg_jax.nnx.load("models/vgg16")   # inputs normalised as spec.normalization
    logits = model(images)                           # model(images, train=True): dropout, BN statistics
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.bridge.variables import linen_vars_to_nnx_attrs

import vgg_jax
from vgg_jax.weights import loading, model_directory


class VGG(nnx.bridge.ToNNX):
    """A `vgg_jax.VGG` with its variables, called as the Linen module is:
    `model(images, train=False, dense=False, frozen_backbone=False)`. With `train=True` dropout
    draws keys from the module's rngs and batch norm updates its running statistics in place."""

    def __call__(self, images: jax.Array, train: bool = False, dense: bool = False,
                 frozen_backbone: bool = False) -> jax.Array:
        # Linen's BatchNorm writes its statistics in train mode; the bridge keeps what is mutable.
        mutable = ["batch_stats"] if train and self.to_nnx__module.batch_norm else False
        return super().__call__(images, train=train, dense=dense, frozen_backbone=frozen_backbone, mutable=mutable)


def from_linen(model: vgg_jax.VGG, variables: dict, rngs: nnx.Rngs | None = None) -> VGG:
    """`model` with `variables` as an NNX module; `rngs` gives the dropout keys (default
    `nnx.Rngs(dropout=0)`)."""
    module = VGG(model, rngs=nnx.Rngs(dropout=0) if rngs is None else rngs)
    # The bridge's own conversion (params -> nnx.Param, batch_stats -> nnx.BatchStat), without
    # the random initialisation that ToNNX.lazy_init would run first.
    for name, layer in linen_vars_to_nnx_attrs(jax.tree.map(jnp.asarray, variables)).items():
        setattr(module, name, layer)
    return module


def load(source: str | os.PathLike, arch: str | None = None,
         rngs: nnx.Rngs | None = None) -> tuple[VGG, model_directory.ModelSpec]:
    """(module, spec) from any source `vgg_jax.load` takes (a workdir, a model directory, a weight
    file with its `arch`, `pretrained:NAME` or NAME); `spec.preprocess(image, scale)` feeds it."""
    model, variables, spec = loading.load(source, arch)
    return from_linen(model, variables, rngs), spec
