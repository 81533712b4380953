"""The paper's training (Sec. 3.1): state, optimiser, the jitted steps, and the loop.

SGD with momentum 0.9 and L2 5e-4 on weights, dropout 0.5 on fc6/fc7, learning rate 1e-2
divided by 10 when validation accuracy stops improving. One jitted train step over a data
Mesh (batch sharded, state replicated and donated); gradient accumulation by a scan over
micro-batches so a batch of 256 fits small devices. Batches arrive as uint8 pixels; the steps
flip, colour-shift and normalise them on the device (`vgg_jax.augmentation`), and the next
batches are already on the devices while a step runs (`sharding.prefetch_to_mesh`).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from clu import metric_writers

import vgg_jax
from vgg_jax import augmentation, checkpoints, compilation, configuration, input_pipeline, sharding, weights
from vgg_jax.normalization import Normalization

log = logging.getLogger("vgg_jax.train")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


# What a user can fix (config values, workdirs, disks, a diverging rate): the CLIs print these
# as one `error:` line; anything else is a bug and keeps its traceback. An OSError always names
# a file and what the system refused (a read-only workdir, a full disk for config.json).
USER_ERRORS = (configuration.ConfigError, checkpoints.CheckpointError, checkpoints.CheckpointSaveError,
               weights.WeightsError, NonFiniteLoss, OSError)


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
    """In float32 at least: bfloat16 logits are widened, float64 ones (exactness tests) kept."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch: dict, *, model: vgg_jax.VGG, tx: optax.GradientTransformation,
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

    # (B, ...) -> (accum, B/accum, ...) taking every accum-th example, so each micro-batch
    # keeps the batch's sharding over devices.
    split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)
    images = batch["image"] if augment is None else augment(batch["image"], state.step)
    images, labels = split(images), split(batch["label"])
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


def jitted_train_step(model: vgg_jax.VGG, tx: optax.GradientTransformation, train: ml_collections.ConfigDict,
                      augment=None):
    """`train_step` as `train` configures it, jitted; it donates (updates in place) the state."""
    step = functools.partial(train_step, model=model, tx=tx, accum_steps=train.accum_steps,
                             frozen_backbone=train.backbone_lr_multiplier == 0, augment=augment)
    return compilation.jit(step, donate_argnums=0)


def eval_step(variables: dict, batch: dict, *, model: vgg_jax.VGG, normalization: Normalization | None = None) -> dict:
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


def evaluate(variables: dict, step, data: ml_collections.ConfigDict, *, batch_size: int, mesh) -> dict[str, float]:
    """Centre-crop top-1/top-5 accuracy and loss on the evaluation split; `step` is the jitted
    eval_step (with the run's normalisation), built once per run so evaluations do not re-trace it."""
    totals = None
    for batch in sharding.prefetch_to_mesh(input_pipeline.eval_batches(data, global_batch_size=batch_size), mesh):
        sums = step(variables, batch)
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
            "dropout_rate": m.dropout_rate, "init_scheme": m.init_scheme, "dtype": m.dtype, "remat": m.remat,
            "conv_algorithm": m.conv_algorithm}


@dataclasses.dataclass
class Run:
    """What the phases of a training run share: built once from the config and workdir."""
    config: ml_collections.ConfigDict
    workdir: str
    model: vgg_jax.VGG
    tx: optax.GradientTransformation
    mesh: Any
    info: input_pipeline.DatasetInfo
    steps_per_epoch: int
    num_steps: int
    manager: Any

    @property
    def eval_every(self) -> int:
        return max(1, int(self.config.train.eval_every_epochs * self.steps_per_epoch))


@dataclasses.dataclass
class Progress:
    """The host-side record a checkpoint carries besides the state (its 'meta' item)."""
    spec: checkpoints.ModelSpec
    best_top1: float = -1.0  # plateau tracking: best validation top-1 so far
    evals_without_gain: int = 0
    lr_drops: list = dataclasses.field(default_factory=list)  # [{"step", "learning_rate"}]
    last_eval: dict = dataclasses.field(default_factory=dict)  # the newest validation metrics
    stopped: str | None = None  # why training ended before num_steps (paper's schedule)

    def meta(self) -> dict:
        return {**dataclasses.asdict(self), "spec": self.spec.to_dict()}

    def eval_metrics(self) -> dict:
        """The newest validation metrics, as orbax records them to rank checkpoints."""
        return {k: v for k, v in self.last_eval.items() if k.startswith("val_")}

    @classmethod
    def from_meta(cls, meta: dict) -> "Progress":
        fields = {k: v for k, v in meta.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**fields, "spec": checkpoints.ModelSpec.from_dict(meta["spec"])})


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


def agreed_stop(local_signal: str | None) -> str | None:
    """The stop decision every process takes together: a signal to any one process stops all
    of them at the same step (else the others would wait forever in the next all-reduce)."""
    if jax.process_count() == 1:
        return local_signal
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(local_signal is not None))
    if not np.any(flags):
        return None
    return local_signal or f"a signal to process {int(np.argmax(flags))}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per `config`, checkpointing into and resuming from `workdir`; returns the final
    metrics (also in workdir/results.json). A finished workdir is left as it is."""
    configuration.validate(config)
    run = setup(config, os.path.abspath(workdir))
    writer = None
    try:
        state, progress = restore_or_initialise(run)
        if int(state.step) >= run.num_steps or progress.stopped:
            log.info("%s has finished (step %d of %d%s); its results are in results.json. Raise "
                     "train.num_steps or train.num_epochs to train further", run.workdir, int(state.step),
                     run.num_steps, f", {progress.stopped}" if progress.stopped else "")
            return read_results(run.workdir)
        write_config(run)
        writer = metric_writers.create_default_writer(run.workdir, just_logging=jax.process_index() > 0)
        state, progress, outcome = train_loop(run, state, progress, writer)
        checkpoints.finish_saving(run.manager)
        return finish(run, state, progress, outcome)
    finally:
        if writer is not None:
            writer.close()
        close_quietly(run.manager)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    os.makedirs(workdir, exist_ok=True)
    info = input_pipeline.dataset_info(config.data)
    model = build_model(config, config.model.num_classes or info.num_classes)
    steps_per_epoch = max(1, info.num_train // config.train.batch_size)
    return Run(config, workdir, model, make_optimizer(config.train, steps_per_epoch), sharding.data_mesh(),
               info, steps_per_epoch, total_steps(config.train, steps_per_epoch),
               checkpoints.open_manager(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints))


def restore_or_initialise(run: Run) -> tuple[TrainState, Progress]:
    """The newest readable checkpoint of the workdir, else a fresh (or pre-initialised) state.
    Unreadable newer steps are logged, set aside and skipped."""
    config = run.config
    for step in sorted(run.manager.all_steps(), reverse=True):
        try:
            state, progress = restore(run, step)
        except checkpoints.UnreadableCheckpoint as error:  # damaged, truncated or partial files
            moved = checkpoints.set_aside(run.manager.directory, step)
            log.warning("%s; moved it to %s, trying the step before", error, moved)
            run.manager.reload()
            continue
        log.info("resumed from %s at step %d", run.workdir, step)
        return sharding.replicate(apply_config_changes(run, state), run.mesh), progress
    variables, normalization = initial_variables(config, run.model)
    normalization = normalization or Normalization(tuple(config.data.mean_rgb), tuple(config.data.std_rgb))
    spec = checkpoints.ModelSpec(config.model.arch, model_kwargs(config, run.model.num_classes),
                                 run.info.class_names, normalization)
    state = create_train_state(run.model, run.tx, config.train.seed, variables)
    return sharding.replicate(state, run.mesh), Progress(spec)


def restore(run: Run, step: int) -> tuple[TrainState, Progress]:
    """Raises UnreadableCheckpoint for damaged files, CheckpointError for another model or a
    refused config change (which the user decides on)."""
    root = run.manager.directory
    with checkpoints.read_errors(root, step):
        meta = checkpoints.read_meta(root, step)
        progress = Progress.from_meta(meta)
    spec = checkpoints.ModelSpec(run.config.model.arch, model_kwargs(run.config, run.model.num_classes))
    check_same_model(meta, spec, run.workdir)
    check_config_changes(run)
    template = jax.eval_shape(lambda v: create_train_state(run.model, run.tx, run.config.train.seed, v),
                              checkpoints.abstract_variables(run.model))
    with checkpoints.read_errors(root, step):  # same model and optimiser: a failure here is damage
        state = checkpoints.read_state(root, step, sharding.replicated(run.mesh), target=template)
    return state, progress


# Config fields whose change on resume would change which examples the run sees, or its schedule.
REFUSED_CHANGES = ("train.batch_size", "train.seed", "train.accum_steps", "train.schedule", "train.step_epochs",
                   "data.source", "data.data_dir", "data.train_split")


def check_config_changes(run: Run) -> None:
    """Refuses a resume whose config changes the example order or the schedule's kind; the
    learning rate may change (applied by apply_config_changes, and logged)."""
    previous = read_run_config(run.workdir)
    changed = [(field, old, new) for field, old, new in config_differences(previous, run.config)
               if field in REFUSED_CHANGES]
    if changed:
        listing = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in changed)
        raise checkpoints.CheckpointError(
            f"{run.workdir} was trained with another config ({listing}); resuming would change the "
            "examples or schedule it sees. Use the run's values or another --workdir")


def apply_config_changes(run: Run, state: TrainState) -> TrainState:
    """A changed train.learning_rate is applied from the resume step on (plateau schedule:
    it replaces the current, possibly divided, rate)."""
    previous = read_run_config(run.workdir)
    for field, old, new in config_differences(previous, run.config):
        if field == "train.learning_rate":
            log.warning("train.learning_rate changed from %g to %g since the last run: using %g from "
                        "step %d on", old, new, new, int(state.step))
            state = with_learning_rate(state, new) if run.config.train.schedule == "plateau" else state
    return state


def config_differences(previous: dict | None, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    if previous is None:
        return []
    current = json.loads(config.to_json_best_effort())
    fields = [*REFUSED_CHANGES, "train.learning_rate"]
    differences = []
    for field in fields:
        section, name = field.split(".")
        old, new = previous.get(section, {}).get(name), current[section][name]
        if old is not None and old != new:
            differences.append((field, old, new))
    return differences


def read_run_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_config(run: Run) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            f.write(run.config.to_json_best_effort(indent=2))


def initial_variables(config, model):
    """Pre-initialisation (init_from: a model directory or `pretrained:NAME`, fetched on first
    use) for a new run: (variables or None, normalisation or None)."""
    train = config.train
    if not train.init_from:
        return None, None
    try:
        source, source_spec, _ = checkpoints.load_variables(weights.resolve(train.init_from))
    except checkpoints.CheckpointError as error:
        raise checkpoints.CheckpointError(f"train.init_from={train.init_from!r}: {error}") from error
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


def train_loop(run: Run, state: TrainState, progress: Progress, writer) -> tuple[TrainState, Progress, dict]:
    """Steps until num_steps, a stop signal or the paper's schedule ends; returns the state,
    the progress record and the outcome (last train metrics, the signal if any)."""
    train = run.config.train
    normalization = progress.spec.normalization
    step_fn = jitted_train_step(run.model, run.tx, train,
                                augmentation.train_augmentation(run.config.data, normalization, train.seed))
    eval_fn = compilation.jit(functools.partial(eval_step, model=run.model, normalization=normalization))
    batches = sharding.prefetch_to_mesh(input_pipeline.train_batches(
        run.config.data, global_batch_size=train.batch_size, seed=train.seed, start_step=int(state.step)), run.mesh)
    pending: list[tuple[int, dict]] = []  # device metrics, checked before anything is saved
    step = int(state.step)  # counted on the host from here: no device sync per step
    rate = Throughput(step, train.batch_size)
    outcome = {"signal": None, "train": {}}
    with StopRequest() as stop:
        while step < run.num_steps:
            state, step_metrics = step_fn(state, next(batches))
            step += 1
            pending.append((step, step_metrics))
            evaluate_now = step % run.eval_every == 0 or step == run.num_steps
            save_now = evaluate_now or (train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0)
            check_now = save_now or step % train.log_every == 0
            # Every process reaches the same check steps: there they agree on stopping.
            signalled = agreed_stop(stop.signal) if (check_now or jax.process_count() == 1) else None
            if not (check_now or signalled):
                continue
            outcome["train"] = check_finite(pending)
            pending.clear()
            log_progress(step, run, outcome["train"], state, rate)
            writer.write_scalars(step, {f"train_{k}": v for k, v in outcome["train"].items()}
                                 | {"learning_rate": current_learning_rate(state)})
            with rate.paused():
                if evaluate_now:
                    state, progress = evaluate_and_schedule(run, state, progress, step, eval_fn, writer)
                if save_now or signalled or progress.stopped:
                    checkpoints.save(run.manager, step, state, progress.meta(),
                                     progress.eval_metrics() if evaluate_now else None)
            if signalled:
                log.warning("%s received: saved step %d, exiting", signalled, step)
                outcome["signal"] = signalled
                break
            if progress.stopped:
                log.info("stopping at step %d: %s", step, progress.stopped)
                break
    return state, progress, outcome


def evaluate_and_schedule(run: Run, state: TrainState, progress: Progress, step: int, eval_fn,
                          writer) -> tuple[TrainState, Progress]:
    """Validation at `step`, recorded in `progress`; on a plateau, the paper's schedule."""
    train = run.config.train
    val = evaluate(state.variables(), eval_fn, run.config.data, batch_size=train.eval_batch_size, mesh=run.mesh)
    writer.write_scalars(step, val)
    log.info("step %d  val top1 %.4f  top5 %.4f  loss %.4f", step, val["val_top1"], val["val_top5"], val["val_loss"])
    progress = dataclasses.replace(progress, last_eval={"step": step, **val})
    if train.schedule == "plateau":
        state, progress = on_plateau(state, progress, val["val_top1"], train, step)
    return state, progress


def on_plateau(state: TrainState, progress: Progress, accuracy: float, train, step: int) -> tuple[TrainState, Progress]:
    """Divide the learning rate by 10 when validation accuracy stops improving, at most
    `train.max_lr_drops` times; at the plateau after the last drop, stop (Sec. 3.1)."""
    if accuracy > progress.best_top1 + train.plateau_min_delta:
        return state, dataclasses.replace(progress, best_top1=accuracy, evals_without_gain=0)
    waited = progress.evals_without_gain + 1
    if waited < train.plateau_patience:
        return state, dataclasses.replace(progress, evals_without_gain=waited)
    if len(progress.lr_drops) >= train.max_lr_drops:
        return state, dataclasses.replace(progress, evals_without_gain=waited, stopped=(
            f"validation accuracy plateaued at {progress.best_top1:.4f} after {len(progress.lr_drops)} "
            "learning-rate drops"))
    rate = current_learning_rate(state) * train.plateau_factor
    log.info("validation accuracy plateaued at %.4f: learning rate -> %g (drop %d of at most %d)",
             progress.best_top1, rate, len(progress.lr_drops) + 1, train.max_lr_drops)
    drops = [*progress.lr_drops, {"step": step, "learning_rate": rate}]
    return with_learning_rate(state, rate), dataclasses.replace(progress, evals_without_gain=0, lr_drops=drops)


def finish(run: Run, state: TrainState, progress: Progress, outcome: dict) -> dict:
    """results.json (process 0): the run's last train and validation metrics, its best step,
    the schedule's drops, and why it ended."""
    best_step = checkpoints.default_step(run.manager.directory)
    metrics = checkpoints.step_metrics(run.manager.directory).get(best_step) or {}
    results = {"step": int(state.step), **{f"train_{k}": v for k, v in outcome["train"].items()},
               **progress.last_eval, "val_step": progress.last_eval.get("step"),
               "best_step": best_step, "best_val_top1": metrics.get(checkpoints.BEST_METRIC),
               "learning_rate": current_learning_rate(state), "lr_drops": progress.lr_drops,
               "stopped": progress.stopped, "interrupted": outcome["signal"],
               # unreadable files this run's streams skipped (those of earlier runs are in their logs)
               "skipped_files": {split: input_pipeline.skipped_count(run.config.data, split)
                                 for split in (run.config.data.train_split, run.config.data.eval_split)}}
    if jax.process_index() == 0:
        with open(os.path.join(run.workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def read_results(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def without_orbax_tracebacks(record: logging.LogRecord) -> bool:
    """A logging filter: orbax's background save threads log a failed write with a long
    traceback before the error reaches the loop, which then reports it as one line. Keep
    their message, drop the traceback."""
    if "orbax" in record.pathname and record.exc_info:
        record.exc_info, record.exc_text = None, None
    return True


def close_quietly(manager) -> None:
    """Closes the checkpoint manager on every exit path; a failed pending save has already
    been reported by the error that ended the run."""
    try:
        manager.close()
    except Exception as error:  # noqa: BLE001 - the original error is the one worth raising
        log.debug("closing the checkpoint manager: %s", error)


def check_finite(pending: list[tuple[int, dict]]) -> dict[str, float]:
    """Means of the pending step metrics; raises naming the first step whose loss is NaN/Inf."""
    host = [(step, jax.tree.map(float, m)) for step, m in pending]
    for step, metrics in host:
        if not np.isfinite(metrics["loss"]):
            raise NonFiniteLoss(f"the training loss is {metrics['loss']} at step {step}; "
                                "stopped without saving, the last good checkpoint is intact")
    return {key: float(np.mean([m[key] for _, m in host])) for key in host[0][1]}


class Throughput:
    """Training images per second between progress lines, over train-step time only:
    evaluation and checkpointing run inside `paused()` and are left out."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size, self.step, self.since, self.excluded = batch_size, step, time.monotonic(), 0.0

    @contextlib.contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - start

    def images_per_second(self, step: int) -> float:
        now = time.monotonic()
        seconds = max(now - self.since - self.excluded, 1e-9)
        rate = (step - self.step) * self.batch_size / seconds
        self.step, self.since, self.excluded = step, now, 0.0
        return rate


def format_duration(seconds: float) -> str:
    """'3d 04:05:06' for long runs, '04:05:06' within a day."""
    days, rest = divmod(int(round(seconds)), 86_400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def log_progress(step: int, run: Run, metrics: dict, state: TrainState, rate: Throughput) -> None:
    images_per_second = rate.images_per_second(step)
    eta = (run.num_steps - step) * run.config.train.batch_size / max(images_per_second, 1e-9)
    log.info("step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  lr %.3g  %.1f img/s  ETA %s",
             step, run.num_steps, step / run.steps_per_epoch, metrics["loss"], metrics["top1"],
             current_learning_rate(state), images_per_second, format_duration(eta))
