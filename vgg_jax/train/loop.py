"""The training loop and its phases: set up, restore or initialise, step, and every N steps
report, validate (with the paper's plateau schedule) and checkpoint; stop on a signal; finish.

The steps and the optimiser are in `steps`, the run's files and resume policy in `run_files`,
pre-initialisation in `preinit`, progress lines in `reporting`, signals and faults in `faults`.
Batches arrive as uint8 pixels; the steps flip, colour-shift and normalise them on the device
(`augmentation`), and the next batches are already on the devices while a step runs
(`sharding.prefetch_to_mesh`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vgg_jax import weights
from vgg_jax.core import checkpoints, compilation, models, sharding
from vgg_jax.core.normalization import Normalization
from vgg_jax.data import augmentation, input_pipeline
from vgg_jax.train import configuration, faults, preinit, reporting, run_files, steps
from vgg_jax.train.run_files import Progress
from vgg_jax.train.steps import TrainState
from vgg_jax.train.tensorboard_writer import ScalarWriter
from vgg_jax.weights import model_directory

log = logging.getLogger("vgg_jax.train")


# What a user can fix (config values, workdirs, disks, a diverging rate, the data): the CLIs
# print these as one `error:` line; anything else is a bug and keeps its traceback. An OSError
# always names a file and what the system refused (a read-only workdir, a full disk).
USER_ERRORS = (configuration.ConfigError, checkpoints.CheckpointError, checkpoints.CheckpointSaveError,
               weights.WeightsError, faults.Diverged, OSError, run_files.RunFileError, run_files.WorkdirInUse,
               input_pipeline.DatasetError)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.VGG:
    kwargs = model_kwargs(config, num_classes)
    return models.create_model(config.model.arch, **{**kwargs, "dtype": jnp.dtype(kwargs["dtype"])})


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
    model: models.VGG
    tx: optax.GradientTransformation
    mesh: Any
    info: input_pipeline.DatasetInfo
    steps_per_epoch: int
    num_steps: int
    manager: Any

    @property
    def eval_every(self) -> int:
        return max(1, int(self.config.train.eval_every_epochs * self.steps_per_epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per `config`, checkpointing into and resuming from `workdir`; returns the final
    metrics (also in workdir/results.json). A finished workdir is left as it is (its results.json
    rebuilt if it is missing). SIGTERM and Ctrl-C stop it at the next progress line, saved; once
    the last step is done they wait for the final save and results.json."""
    configuration.validate(config)
    workdir = os.path.abspath(workdir)
    with run_files.workdir_lock(workdir), faults.StopRequest() as stop:
        run = setup(config, workdir)
        with faults.closed_unless_lost(run.manager):
            state, progress = restore_or_initialise(run)
            if int(state.step) >= run.num_steps or progress.stopped:
                return finished_run_results(run, state, progress)
            return train(run, state, progress, stop)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    info = input_pipeline.dataset_info(config.data)
    model = build_model(config, config.model.num_classes or info.num_classes)
    steps_per_epoch = max(1, info.num_train // config.train.batch_size)
    return Run(config, workdir, model, steps.make_optimizer(config.train, steps_per_epoch), sharding.data_mesh(),
               info, steps_per_epoch, steps.total_steps(config.train, steps_per_epoch),
               checkpoints.open_manager(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints))


def train(run: Run, state: TrainState, progress: Progress, stop: faults.StopRequest) -> dict:
    """The loop, then the final save and results.json, all under `stop`'s signal handlers."""
    writer = ScalarWriter(run.workdir if jax.process_index() == 0 else None)  # TensorBoard events
    try:
        state, progress, signalled = train_loop(run, state, progress, writer, stop)
        checkpoints.finish_saving(run.manager)
        results = final_results(run, state, progress, signalled, skipped_files(run))
        run_files.write_results(run.workdir, results)
        return results
    finally:
        writer.close()


def finished_run_results(run: Run, state: TrainState, progress: Progress) -> dict:
    """results.json of a finished run; rebuilt from the newest checkpoint's record if the run
    ended (killed) between its final save and writing it. Steps that retention no longer keeps
    (left by such a kill) are deleted: every process sees the same steps, so their deletions'
    barriers match; the rest takes no collective (processes may differ on reading the file)."""
    log.info("%s has finished (step %d of %d%s); its results are in results.json. Raise train.num_steps or "
             "train.num_epochs to train further", run.workdir, int(state.step), run.num_steps,
             f", {progress.stopped}" if progress.stopped else "")
    stale = checkpoints.remove_stale_steps(run.manager, run.config.train.keep_checkpoints)
    if stale:
        log.warning("deleted steps %s of %s, which retention no longer keeps", stale, run.manager.directory)
    try:
        return run_files.read_results(run.workdir)
    except run_files.RunFileError as error:
        results = final_results(run, state, progress, signalled=None, skipped=None)  # skips: in the run's log
        run_files.write_results(run.workdir, results)
        log.warning("%s; rebuilt it from the checkpoints' stored metrics", error)
        return results


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
        return sharding.replicate(run_files.apply_config_changes(run.workdir, run.config, state), run.mesh), progress
    variables, normalization = preinit.initial_variables(config.train, config.model.arch, run.model)
    normalization = normalization or Normalization(tuple(config.data.mean_rgb), tuple(config.data.std_rgb))
    spec = model_directory.ModelSpec(config.model.arch, model_kwargs(config, run.model.num_classes),
                                 run.info.class_names, normalization)
    state = steps.create_train_state(run.model, run.tx, config.train.seed, variables)
    return sharding.replicate(state, run.mesh), Progress(spec)


def restore(run: Run, step: int) -> tuple[TrainState, Progress]:
    """Raises UnreadableCheckpoint for damaged files, CheckpointError for another model or a
    refused config change (which the user decides on)."""
    root = run.manager.directory
    with checkpoints.read_errors(root, step):
        meta = checkpoints.read_meta(root, step)
        progress = Progress.from_meta(meta)
    spec = model_directory.ModelSpec(run.config.model.arch, model_kwargs(run.config, run.model.num_classes))
    run_files.check_same_model(meta, spec, run.workdir)
    run_files.check_config_changes(run.workdir, run.config)
    template = jax.eval_shape(lambda v: steps.create_train_state(run.model, run.tx, run.config.train.seed, v),
                              checkpoints.abstract_variables(run.model))
    with checkpoints.read_errors(root, step):  # same model and optimiser: a failure here is damage
        state = checkpoints.read_state(root, step, sharding.replicated(run.mesh), target=template)
    return state, progress


def train_loop(run: Run, state: TrainState, progress: Progress, writer,
               stop: faults.StopRequest) -> tuple[TrainState, Progress, str | None]:
    """Steps until num_steps, a stop signal or the paper's schedule ends; returns the state,
    the progress record and the signal that stopped it, if any."""
    train = run.config.train
    normalization = progress.spec.normalization
    step_fn = steps.jitted_train_step(run.model, run.tx, train,
                                      augmentation.train_augmentation(run.config.data, normalization, train.seed))
    eval_fn = compilation.jit(functools.partial(steps.eval_step, model=run.model, normalization=normalization))
    batches = sharding.prefetch_to_mesh(input_pipeline.train_batches(
        run.config.data, global_batch_size=train.batch_size, seed=train.seed, start_step=int(state.step)), run.mesh)
    pending: list[tuple[int, dict]] = []  # device metrics, checked before anything is saved
    step = int(state.step)  # counted on the host from here: no device sync per step
    rate = reporting.Throughput(step, train.batch_size)
    while step < run.num_steps:
        state, step_metrics = step_fn(state, next(batches))
        step += 1
        pending.append((step, step_metrics))
        evaluate_now = step % run.eval_every == 0 or step == run.num_steps
        save_now = evaluate_now or (train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0)
        check_now = save_now or step % train.log_every == 0
        # Every process reaches the same check steps: there they agree on stopping.
        signalled = faults.agreed_stop(stop.signal) if (check_now or jax.process_count() == 1) else None
        if not (check_now or signalled):
            continue
        progress = checked_progress(run, progress, pending)
        pending.clear()
        log_progress(step, run, progress.recent_train[-1], state, rate, writer)
        with rate.paused():
            if evaluate_now:
                state, progress = evaluate_and_schedule(run, state, progress, step, eval_fn, writer)
            if save_now or signalled or progress.stopped:
                save(run, step, state, progress, evaluated=evaluate_now)
        if signalled:
            log.warning("%s received: saved step %d, exiting", signalled, step)
            return state, progress, signalled
        if progress.stopped:
            log.info("stopping at step %d: %s", step, progress.stopped)
            break
    return state, progress, None


def save(run: Run, step: int, state: TrainState, progress: Progress, evaluated: bool) -> None:
    """A checkpoint of `step`, and config.json with it: the settings of the newest saved step (a
    run that diverges before its first save leaves the previous run's)."""
    checkpoints.save(run.manager, step, state, progress.meta(), progress.eval_metrics() if evaluated else None)
    with checkpoints.save_errors(run.manager.directory):  # a full disk: named as for the checkpoint
        run_files.write_config(run.workdir, run.config)


def evaluate_and_schedule(run: Run, state: TrainState, progress: Progress, step: int, eval_fn,
                          writer) -> tuple[TrainState, Progress]:
    """Validation at `step`, recorded in `progress`; on a plateau, the paper's schedule."""
    train = run.config.train
    val = steps.validate(state.variables(), eval_fn, run.config.data, batch_size=train.eval_batch_size, mesh=run.mesh)
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
    rate = steps.current_learning_rate(state) * train.plateau_factor
    log.info("validation accuracy plateaued at %.4f: learning rate -> %g (drop %d of at most %d)",
             progress.best_top1, rate, len(progress.lr_drops) + 1, train.max_lr_drops)
    drops = [*progress.lr_drops, {"step": step, "learning_rate": rate}]
    return steps.with_learning_rate(state, rate), dataclasses.replace(progress, evals_without_gain=0, lr_drops=drops)


def final_results(run: Run, state: TrainState, progress: Progress, signalled: str | None,
                  skipped: dict | None) -> dict:
    """What results.json records: the run's last train and validation metrics, its best step,
    the schedule's drops, why it ended, and the unreadable files this run skipped."""
    best_step = checkpoints.default_step(run.manager.directory)
    metrics = checkpoints.step_metrics(run.manager.directory).get(best_step) or {}
    last_train = progress.recent_train[-1] if progress.recent_train else {}
    return {"step": int(state.step), **{f"train_{k}": v for k, v in last_train.items()},
            **progress.last_eval, "val_step": progress.last_eval.get("step"),
            "best_step": best_step, "best_val_top1": metrics.get(checkpoints.BEST_METRIC),
            "learning_rate": steps.current_learning_rate(state), "lr_drops": progress.lr_drops,
            "stopped": progress.stopped, "interrupted": signalled, "skipped_files": skipped}


def skipped_files(run: Run) -> dict[str, int]:
    """Unreadable files this run's streams skipped, per split (those of earlier runs are in their
    logs); a collective in a multi-process job."""
    data = run.config.data
    return {split: input_pipeline.skipped_count(data, split) for split in (data.train_split, data.eval_split)}


def checked_progress(run: Run, progress: Progress, pending: list[tuple[int, dict]]) -> Progress:
    """`progress` with the means of the pending step metrics (fetched in one transfer) as its
    newest progress line; raises faults.Diverged, before anything of these steps is saved, if their
    loss shows faults.divergence."""
    host = [(step, jax.tree.map(float, m)) for step, m in jax.device_get(pending)]
    problem = faults.divergence([m["loss"] for _, m in host], [line["loss"] for line in progress.recent_train],
                         run.model.num_classes)
    if problem is not None:
        index, reason = problem
        raise faults.Diverged(f"the training loss is {host[index][1]['loss']:.4g} at step {host[index][0]} ({reason}); "
                       f"stopped without saving it: {faults.newest_good_checkpoint(run.manager)}")
    return progress.with_train_line({key: float(np.mean([m[key] for _, m in host])) for key in host[0][1]})


def log_progress(step: int, run: Run, metrics: dict, state: TrainState, rate: reporting.Throughput, writer) -> None:
    """The progress line, and the same figures as TensorBoard scalars."""
    images_per_second = rate.images_per_second(step)
    eta = (run.num_steps - step) * run.config.train.batch_size / max(images_per_second, 1e-9)
    learning_rate = steps.current_learning_rate(state)
    log.info("step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  lr %.3g  %.1f img/s  ETA %s",
             step, run.num_steps, step / run.steps_per_epoch, metrics["loss"], metrics["top1"],
             learning_rate, images_per_second, reporting.format_duration(eta))
    writer.write_scalars(step, {f"train_{k}": v for k, v in metrics.items()} | {"learning_rate": learning_rate})
