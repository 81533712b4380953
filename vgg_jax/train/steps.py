"""The paper's optimisation (Sec. 3.1): train state, optimiser and the jitted steps.

SGD with momentum 0.9 and L2 5e-4 on weights, dropout 0.5 on fc6/fc7, learning rate 1e-2
divided by 10 when validation accuracy stops improving (the loop in `loop` does that by
`with_learning_rate`). One jitted train step over a data Mesh (batch sharded, state replicated
and donated); gradient accumulation by a scan over micro-batches so a batch of 256 fits small
devices.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vgg_jax.core import compilation, models, sharding
from vgg_jax.core.normalization import Normalization
from vgg_jax.data import augmentation, input_pipeline


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    dropout_key: jax.Array  # raw uint32 key: checkpointable as a plain array

    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def total_steps(train: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    return train.num_steps or int(train.num_epochs * steps_per_epoch)


def learning_rate_schedule(train: ml_collections.ConfigDict, steps_per_epoch: int):
    """A float for 'plateau' (the host divides it on plateaus), else an optax schedule."""
    if train.schedule == "plateau":
        return train.learning_rate
    if train.schedule == "step":
        boundaries = {int(epoch * steps_per_epoch): 0.1 for epoch in train.step_epochs}
        return optax.piecewise_constant_schedule(train.learning_rate, boundaries)
    if train.schedule == "cosine":
        return optax.cosine_decay_schedule(train.learning_rate, total_steps(train, steps_per_epoch))
    raise ValueError(f"unknown train.schedule {train.schedule!r}; choose plateau, step or cosine")


def is_weight(path, leaf) -> bool:
    """Conv and dense kernels: the only parameters L2 applies to unless biases are asked for."""
    return path[-1].key == "kernel"


def is_backbone(path, leaf) -> bool:
    return path[0].key != "fc8"


def make_optimizer(train: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    def sgd_with_l2(learning_rate):
        decay_mask = None if train.decay_biases_and_bn else (
            lambda params: jax.tree_util.tree_map_with_path(is_weight, params))
        backbone_mask = lambda params: jax.tree_util.tree_map_with_path(is_backbone, params)
        return optax.chain(
            optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
            # Transfer learning: the backbone learns at a fraction of the rate (0 freezes it).
            optax.masked(optax.scale(train.backbone_lr_multiplier), backbone_mask),
            optax.sgd(learning_rate, momentum=train.momentum),
        )
    return optax.inject_hyperparams(sgd_with_l2)(learning_rate=learning_rate_schedule(train, steps_per_epoch))


def current_learning_rate(state: TrainState) -> float:
    return float(state.opt_state.hyperparams["learning_rate"])


def with_learning_rate(state: TrainState, value: float) -> TrainState:
    hyperparams = {**state.opt_state.hyperparams, "learning_rate": jnp.asarray(value, jnp.float32)}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def create_train_state(model: models.VGG, tx: optax.GradientTransformation, seed: int,
                       variables: dict | None = None) -> TrainState:
    """A fresh state; `variables` (pre-initialised or imported) replace the random init."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    size = model.image_size
    if variables is None:
        variables = compilation.jit(model.init)(init_key, jnp.zeros((1, size, size, 3), jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      dropout_key=dropout_key)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """In float32 at least: bfloat16 logits are widened, float64 ones (exactness tests) kept."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def micro_batches(x: jax.Array, accum_steps: int) -> jax.Array:
    """(B, ...) -> (accum, B/accum, ...) taking every accum-th example, so each micro-batch keeps
    the batch's sharding over devices."""
    return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)


def train_step(state: TrainState, batch: dict, *, model: models.VGG, tx: optax.GradientTransformation,
               accum_steps: int = 1, frozen_backbone: bool = False, augment=None) -> tuple[TrainState, dict]:
    """One SGD step on the global batch, averaged over `accum_steps` sequential micro-batches.
    `augment(images, step)` turns the batch's uint8 pixels into the model's input
    (`augmentation.train_augmentation`); without it batch['image'] is that input already.
    `frozen_backbone`: train fc8 alone (see VGG), without computing the backbone's gradients."""
    step_key = jax.random.fold_in(state.dropout_key, state.step)

    def micro_loss(params, batch_stats, images, labels, key):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, updates = model.apply(variables, images, train=True, frozen_backbone=frozen_backbone,
                                      rngs={"dropout": key}, mutable=["batch_stats"])
        loss = cross_entropy(logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", batch_stats))

    def micro_step(carry, micro):
        grads, batch_stats, loss_sum, correct = carry
        index, images, labels = micro
        (loss, (logits, batch_stats)), micro_grads = jax.value_and_grad(micro_loss, has_aux=True)(
            state.params, batch_stats, images, labels, jax.random.fold_in(step_key, index))
        grads = jax.tree.map(jnp.add, grads, micro_grads)
        correct += jnp.sum(jnp.argmax(logits, -1) == labels)
        return (grads, batch_stats, loss_sum + loss, correct), None

    images = batch["image"] if augment is None else augment(batch["image"], state.step)
    images, labels = micro_batches(images, accum_steps), micro_batches(batch["label"], accum_steps)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, state.batch_stats, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    if accum_steps == 1:  # no loop: XLA:CPU runs the step ~20% faster outside a while loop
        (grads, batch_stats, loss_sum, correct), _ = micro_step(init, (0, images[0], labels[0]))
    else:
        (grads, batch_stats, loss_sum, correct), _ = jax.lax.scan(
            micro_step, init, (jnp.arange(accum_steps), images, labels))
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / accum_steps, "top1": correct / batch["label"].shape[0]}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics


def jitted_train_step(model: models.VGG, tx: optax.GradientTransformation, train: ml_collections.ConfigDict,
                      augment=None):
    """`train_step` as `train` configures it, jitted; it donates (updates in place) the state."""
    step = functools.partial(train_step, model=model, tx=tx, accum_steps=train.accum_steps,
                             frozen_backbone=train.backbone_lr_multiplier == 0, augment=augment)
    return compilation.jit(step, donate_argnums=0)


def eval_step(variables: dict, batch: dict, *, model: models.VGG, normalization: Normalization | None = None) -> dict:
    """Sums over the real (mask=True) examples: loss, top-1 and top-5 correct, count. With a
    `normalization`, batch['image'] holds uint8 pixels, normalised here on the device."""
    images = batch["image"] if normalization is None else augmentation.normalize(batch["image"], normalization)
    logits = model.apply(variables, images).astype(jnp.float32)
    mask = batch["mask"]
    labels = batch["label"]
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((top5[:, 0] == labels) & mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) & mask),
            "count": jnp.sum(mask)}


def validate(variables: dict, step, data: ml_collections.ConfigDict, *, batch_size: int, mesh) -> dict[str, float]:
    """Centre-crop top-1/top-5 accuracy and loss on the evaluation split; `step` is the jitted
    eval_step (with the run's normalisation), built once per run so evaluations do not re-trace it."""
    totals = None
    for batch in sharding.prefetch_to_mesh(input_pipeline.eval_batches(data, global_batch_size=batch_size), mesh):
        sums = step(variables, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count = float(totals["count"])
    return {"val_loss": float(totals["loss"]) / count, "val_top1": float(totals["top1"]) / count,
            "val_top5": float(totals["top5"]) / count, "val_count": int(count)}
