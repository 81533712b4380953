"""The paper's training (Sec. 3.1): state, optimiser, the jitted steps, and the loop.

SGD with momentum 0.9 and L2 5e-4 on weights, dropout 0.5 on fc6/fc7, learning rate 1e-2
divided by 10 when validation accuracy stops improving. One jitted train step over a data
Mesh (batch sharded, state replicated and donated); gradient accumulation by a scan over
micro-batches so a batch of 256 fits small devices.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import vgg_jax
from vgg_jax import checkpoints, compilation, input_pipeline, sharding, weights
from vgg_jax.normalization import Normalization

log = logging.getLogger("vgg_jax.train")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    dropout_key: jax.Array  # raw uint32 key: checkpointable as a plain array

    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


# --- optimiser --------------------------------------------------------------------------------

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


# --- state ------------------------------------------------------------------------------------

def create_train_state(model: vgg_jax.VGG, tx: optax.GradientTransformation, seed: int,
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


# --- steps ------------------------------------------------------------------------------------

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def train_step(state: TrainState, batch: dict, *, model: vgg_jax.VGG, tx: optax.GradientTransformation,
               accum_steps: int = 1, frozen_backbone: bool = False) -> tuple[TrainState, dict]:
    """One SGD step on the global batch, averaged over `accum_steps` sequential micro-batches.
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

    # (B, ...) -> (accum, B/accum, ...) taking every accum-th example, so each micro-batch
    # keeps the batch's sharding over devices.
    split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)
    images, labels = split(batch["image"]), split(batch["label"])
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


def jitted_train_step(model: vgg_jax.VGG, tx: optax.GradientTransformation, train: ml_collections.ConfigDict):
    """`train_step` as `train` configures it, jitted; it donates (updates in place) the state."""
    step = functools.partial(train_step, model=model, tx=tx, accum_steps=train.accum_steps,
                             frozen_backbone=train.backbone_lr_multiplier == 0)
    return compilation.jit(step, donate_argnums=0)


def eval_step(variables: dict, batch: dict, *, model: vgg_jax.VGG) -> dict:
    """Sums over the real (mask=True) examples: loss, top-1 and top-5 correct, count."""
    logits = model.apply(variables, batch["image"]).astype(jnp.float32)
    mask = batch["mask"]
    labels = batch["label"]
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((top5[:, 0] == labels) & mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) & mask),
            "count": jnp.sum(mask)}


def evaluate(variables: dict, step, data: ml_collections.ConfigDict, *,
             batch_size: int, normalization: Normalization, mesh) -> dict[str, float]:
    """Centre-crop top-1/top-5 accuracy and loss on the evaluation split; `step` is the jitted
    eval_step, built once per run so that evaluations do not re-trace it."""
    totals = None
    for local in input_pipeline.eval_batches(data, global_batch_size=batch_size,
                                             normalization=normalization):
        sums = step(variables, sharding.global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count = float(totals["count"])
    return {"val_loss": float(totals["loss"]) / count, "val_top1": float(totals["top1"]) / count,
            "val_top5": float(totals["top5"]) / count, "val_count": int(count)}


# --- the loop ---------------------------------------------------------------------------------

def total_steps(train: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    return train.num_steps or int(train.num_epochs * steps_per_epoch)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> vgg_jax.VGG:
    kwargs = model_kwargs(config, num_classes)
    return vgg_jax.create_model(config.model.arch, **{**kwargs, "dtype": jnp.dtype(kwargs["dtype"])})


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """The JSON-able VGG fields a checkpoint records."""
    m = config.model
    return {"num_classes": num_classes, "width": m.width, "image_size": m.image_size,
            "dropout_rate": m.dropout_rate, "init_scheme": m.init_scheme, "dtype": m.dtype}


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def initial_variables(config, model, workdir_has_checkpoint: bool):
    """Pre-initialisation (init_from: a model directory or `pretrained:NAME`, fetched on first
    use) for a new run: (variables or None, normalisation or None)."""
    train = config.train
    if not train.init_from or workdir_has_checkpoint:
        return None, None
    source, source_spec, _ = checkpoints.load_variables(weights.resolve(train.init_from))
    target = compilation.jit(model.init)(jax.random.PRNGKey(train.seed),
                                         jnp.zeros((1, model.image_size, model.image_size, 3)))
    target = jax.tree.map(np.asarray, target)
    layers = checkpoints.layers_to_copy(train.init_layers, target["params"])
    variables, copied = checkpoints.copy_layers(target, source, layers)
    log.info("pre-initialised from %s:\n%s", train.init_from,
             checkpoints.layer_table(target["params"], copied, train.init_from))
    return variables, source_spec.normalization


def check_same_model(meta: dict, spec: checkpoints.ModelSpec, workdir: str) -> None:
    found = checkpoints.ModelSpec.from_dict(meta["spec"])
    ours = (spec.arch, spec.model_kwargs["num_classes"], spec.model_kwargs["width"], spec.model_kwargs["image_size"])
    theirs = (found.arch, found.model_kwargs["num_classes"], found.model_kwargs["width"], found.model_kwargs["image_size"])
    if ours != theirs:
        raise checkpoints.CheckpointError(
            f"{workdir} holds a checkpoint of a different model (arch, classes, width, image_size) "
            f"= {theirs}, but the config asks for {ours}; use another --workdir")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per `config`, checkpointing into and resuming from `workdir`; returns final metrics."""
    train = config.train
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    info = input_pipeline.dataset_info(config.data)
    num_classes = config.model.num_classes or info.num_classes
    model = build_model(config, num_classes)
    mesh = sharding.data_mesh()
    sharding.check_global_batch(train.batch_size, mesh)
    if train.batch_size % train.accum_steps:
        raise ValueError(f"train.batch_size {train.batch_size} is not divisible by train.accum_steps {train.accum_steps}")
    steps_per_epoch = max(1, info.num_train // train.batch_size)
    num_steps = total_steps(train, steps_per_epoch)
    tx = make_optimizer(train, steps_per_epoch)

    manager = checkpoints.open_manager(os.path.join(workdir, "checkpoints"), keep=train.keep_checkpoints)
    resume_step = manager.latest_step()
    variables, normalization = initial_variables(config, model, resume_step is not None)
    normalization = normalization or Normalization(tuple(config.data.mean_rgb), tuple(config.data.std_rgb))
    spec = checkpoints.ModelSpec(config.model.arch, model_kwargs(config, num_classes), info.class_names, normalization)
    state = create_train_state(model, tx, train.seed, variables)
    plateau = {"best": -1.0, "evals_without_gain": 0, "drops": 0}
    if resume_step is not None:
        state, plateau, spec = restore(manager, resume_step, state, spec, workdir, mesh)
        log.info("resumed from %s at step %d", workdir, resume_step)
    state = sharding.replicate(state, mesh)

    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    step_fn = jitted_train_step(model, tx, train)
    eval_fn = compilation.jit(functools.partial(eval_step, model=model))
    batches = input_pipeline.train_batches(config.data, global_batch_size=train.batch_size,
                                           normalization=spec.normalization, seed=train.seed,
                                           start_step=int(state.step))
    writer = SummaryWriter(workdir)
    eval_every = max(1, int(train.eval_every_epochs * steps_per_epoch))
    pending: list[tuple[int, dict]] = []  # device metrics, checked before anything is saved
    step = int(state.step)  # counted on the host from here: no device sync per step
    last = {"time": time.time(), "step": step}
    metrics = {}
    with StopRequest() as stop:
        while step < num_steps:
            state, step_metrics = step_fn(state, sharding.global_batch(next(batches), mesh))
            step += 1
            pending.append((step, step_metrics))
            evaluate_now = step % eval_every == 0 or step == num_steps
            save_now = evaluate_now or stop.signal or (
                train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0)
            if not (save_now or step % train.log_every == 0):
                continue
            train_metrics = check_finite(pending)
            pending.clear()
            log_progress(step, num_steps, steps_per_epoch, train_metrics, state, last, train.batch_size)
            writer.scalars(step, {f"train_{k}": v for k, v in train_metrics.items()}
                           | {"learning_rate": current_learning_rate(state)})
            metrics = {"step": step, "train_loss": train_metrics["loss"], "train_top1": train_metrics["top1"]}
            if evaluate_now:
                val = evaluate(state.variables(), eval_fn, config.data, batch_size=train.eval_batch_size,
                               normalization=spec.normalization, mesh=mesh)
                metrics |= val
                writer.scalars(step, val)
                log.info("step %d  val top1 %.4f  top5 %.4f  loss %.4f", step, val["val_top1"],
                         val["val_top5"], val["val_loss"])
                if train.schedule == "plateau":
                    state, plateau = on_plateau(state, plateau, val["val_top1"], train)
                checkpoints.save(manager, step, state, {"spec": spec.to_dict(), "plateau": plateau},
                                 {"val_top1": val["val_top1"]})
            elif save_now:
                checkpoints.save(manager, step, state, {"spec": spec.to_dict(), "plateau": plateau})
            if stop.signal:
                log.warning("%s received: saved step %d, exiting", stop.signal, step)
                break
    manager.wait_until_finished()
    manager.close()
    writer.close()
    results = {**metrics, "learning_rate": current_learning_rate(state), "interrupted": stop.signal}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def restore(manager, step: int, state: TrainState, spec, workdir: str, mesh):
    meta = checkpoints.read_meta(manager.directory, step)
    check_same_model(meta, spec, workdir)
    try:
        restored = checkpoints.read_state(manager.directory, step, sharding.replicated(mesh), target=state)
    except (ValueError, KeyError) as error:
        raise checkpoints.CheckpointError(
            f"the checkpoint at {workdir} step {step} does not fit this config's model or optimiser: {error}") from error
    return restored, meta["plateau"], checkpoints.ModelSpec.from_dict(meta["spec"])


def on_plateau(state: TrainState, plateau: dict, accuracy: float, train) -> tuple[TrainState, dict]:
    """Divide the learning rate by 10 when validation accuracy stops improving (Sec. 3.1)."""
    if accuracy > plateau["best"] + train.plateau_min_delta:
        return state, {**plateau, "best": accuracy, "evals_without_gain": 0}
    waited = plateau["evals_without_gain"] + 1
    if waited < train.plateau_patience:
        return state, {**plateau, "evals_without_gain": waited}
    rate = current_learning_rate(state) * train.plateau_factor
    log.info("validation accuracy plateaued at %.4f: learning rate -> %g", plateau["best"], rate)
    return with_learning_rate(state, rate), {**plateau, "evals_without_gain": 0, "drops": plateau["drops"] + 1}


def check_finite(pending: list[tuple[int, dict]]) -> dict[str, float]:
    """Means of the pending step metrics; raises naming the first step whose loss is NaN/Inf."""
    host = [(step, jax.tree.map(float, m)) for step, m in pending]
    for step, metrics in host:
        if not np.isfinite(metrics["loss"]):
            raise NonFiniteLoss(f"the training loss is {metrics['loss']} at step {step}; "
                                "stopped without saving, the last good checkpoint is intact")
    return {key: float(np.mean([m[key] for _, m in host])) for key in host[0][1]}


def log_progress(step, num_steps, steps_per_epoch, metrics, state, last, batch_size) -> None:
    now = time.time()
    rate = (step - last["step"]) * batch_size / max(now - last["time"], 1e-9)
    eta = (num_steps - step) * batch_size / max(rate, 1e-9)
    log.info("step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  lr %.3g  %.1f img/s  ETA %s",
             step, num_steps, step / steps_per_epoch, metrics["loss"], metrics["top1"],
             current_learning_rate(state), rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
    last.update(time=now, step=step)


class SummaryWriter:
    """TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: str):
        import tensorflow as tf  # already loaded by the input pipeline; CPU only

        self.tf = tf
        self.writer = tf.summary.create_file_writer(workdir) if jax.process_index() == 0 else None

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                self.tf.summary.scalar(name, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
