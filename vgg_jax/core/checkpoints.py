"""Orbax checkpoints: one on-disk format for training runs, imported weights and transfer.

A checkpoint root (a model directory, or a workdir's `checkpoints`) is an orbax
CheckpointManager root whose steps hold two items:
- 'state': a pytree with at least 'params' (and 'batch_stats' for BN nets); training adds
  the optimiser state, the step and the dropout key;
- 'meta': JSON with the ModelSpec (architecture, model fields, class names, normalisation),
  plus, for a training run, its progress (best validation top-1 and plateau count, learning-rate
  drops, the newest validation metrics, why it stopped).
Here: saving and reading steps, and their errors. The spec and the untrusted-input checks of a
model directory are in `vgg_jax.weights.model_directory`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

from vgg_jax.core import models

log = logging.getLogger("vgg_jax.checkpoints")

STATE, META = "state", "meta"
BEST_METRIC = "val_top1"  # the validation metric that ranks steps (higher is better)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model asked for."""


class UnreadableCheckpoint(CheckpointError):
    """A step whose files are damaged, truncated or missing."""


class CheckpointSaveError(RuntimeError):
    """The filesystem refused a checkpoint (no space, read-only, no permission)."""


def model_root(path: str | os.PathLike) -> str:
    """The CheckpointManager root for a workdir or a model directory."""
    path = os.path.abspath(os.fspath(path))
    nested = os.path.join(path, "checkpoints")
    return nested if os.path.isdir(nested) else path


def open_manager(root: str, *, keep: int = 3, keep_best: bool = True,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """Keeps the last `keep` steps and, with `keep_best`, the one with the best 'val_top1'.

    orbax writes a step's metrics (and so can rank steps) only when `best_fn` is set; the
    preservation policy then keeps the best step through any number of resumes."""
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    if keep_best:
        policies.append(ocp.checkpoint_managers.BestN(
            get_metric_fn=best_metric, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_metric if keep_best else None, best_mode="max",
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(root, options=options, item_names=(STATE, META))


def best_metric(metrics: dict) -> float:
    return metrics[BEST_METRIC]


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         metrics: dict | None = None) -> None:
    """Saves (asynchronously where the manager is) and raises CheckpointSaveError naming the
    directory, the OS error and the newest step still readable there when the filesystem
    refuses (full, read-only, no permission): committed steps stay as they were."""
    with save_errors(manager.directory):
        wait_announced(manager)  # the previous step's write, which manager.save would await silently
        manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}), metrics=metrics,
            force=True)


def finish_saving(manager: ocp.CheckpointManager) -> None:
    """Waits for pending asynchronous saves, raising CheckpointSaveError as `save` does."""
    with save_errors(manager.directory):
        wait_announced(manager)


ANNOUNCE_AFTER_S = 2.0  # the quickstart's 13.5 MB step is written in 0.2-1.4 s on a local disk


def wait_announced(manager: ocp.CheckpointManager) -> None:
    """manager.wait_until_finished, with a line naming the step still being written once the
    wait passes ANNOUNCE_AFTER_S. Every file of a step is fsynced (tensorstore's default): a slow
    or busy disk (20 writes/s: 4-5 s for the quickstart's step) would otherwise be a silent pause
    after the final validation line."""
    announce = threading.Timer(ANNOUNCE_AFTER_S, log.info, (
        "waiting for the checkpoint of step %s to finish writing to %s", manager.latest_step(), manager.directory))
    announce.daemon = True
    announce.start()
    try:
        manager.wait_until_finished()
    finally:
        announce.cancel()


@contextlib.contextmanager
def save_errors(directory):
    """An asynchronous save fails at the next save or wait, so the message names the directory
    rather than a step, and then the newest step that was committed (a save in flight is lost)."""
    try:
        yield
    except CheckpointSaveError:
        raise
    except Exception as error:  # orbax and tensorstore wrap OS errors in their own types
        raise CheckpointSaveError(f"cannot save a checkpoint in {directory}: {os_error_text(error)}; "
                                  f"{newest_committed_text(directory)}") from error


def newest_committed_text(directory) -> str:
    try:
        step = newest_committed_step(directory)
    except OSError as error:
        return f"cannot list its steps: {os_error_text(error)}"
    return "no step there is readable" if step is None else f"the newest readable step there is {step}"


def newest_committed_step(directory) -> int | None:
    """Which step a resume would start from: orbax renames a step's directory into place only
    once all its files are written, so the finalized steps are the readable ones."""
    steps = ocp.step.checkpoint_steps(directory)
    return max(steps) if steps else None


def remove_stale_steps(manager: ocp.CheckpointManager, keep: int) -> list[int]:
    """Deletes the steps `open_manager`'s retention (the last `keep` and the best) no longer
    keeps; returns them. orbax deletes them after committing the next step, so a run killed in
    between (after its final save) leaves them for no later save to clean up."""
    steps = sorted(manager.all_steps())
    kept = set(steps[-keep:]) | {manager.best_step()}
    stale = [step for step in steps if step not in kept]
    for step in stale:
        manager.delete(step)
    return stale


def os_error_text(error: BaseException) -> str:
    """The OS error behind `error` ('[Errno 28] No space left on device'), else its first line."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"[Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    code = re.search(r"os_error_code='(\d+)'", str(error))  # tensorstore's form
    if code:
        return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
    text = str(error).strip().splitlines()
    # tensorstore appends a dump of its whole spec to the first line: keep the sentence before it
    first = text[0].split(" See full TensorStore details")[0] if text else type(error).__name__
    return first if len(first) <= 300 else first[:300] + "..."


def reader(root: str) -> ocp.CheckpointManager:
    """A manager for reading: it knows both items' handlers and ranks steps by BEST_METRIC. It
    never saves, so it deletes nothing (orbax's read_only flag would log three warnings a call)."""
    return ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
        create=False, best_fn=best_metric, best_mode="max", enable_async_checkpointing=False),
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()})


def read_meta(root: str, step: int) -> dict:
    with reader(root) as manager:
        return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def read_state(root: str, step: int, sharding: jax.sharding.Sharding, target=None,
               collections: Iterable[str] | None = None) -> Any:
    """The 'state' item placed with `sharding`, whatever devices it was saved from (a pod's
    checkpoint restores on one CPU). `target` fixes the tree structure (a TrainState);
    `collections` reads only those top-level entries (the weights without the optimiser)."""
    with reader(root) as manager:
        layout = manager.item_metadata(step)[STATE] if target is None else target
        if collections is not None:
            layout = {name: layout[name] for name in collections if name in layout}
        abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), layout)
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract)
        return manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            abstract, restore_args=restore_args, partial_restore=collections is not None)}))[STATE]


def default_step(root: str) -> int:
    """The best step by validation accuracy where one was recorded, else the latest."""
    if not os.path.isdir(root):
        raise CheckpointError(f"no checkpoint directory at {root}")
    with reader(root) as manager:
        if manager.latest_step() is None:
            raise CheckpointError(f"{root} holds no checkpoint steps")
        best = manager.best_step()  # None when no step has metrics
        return manager.latest_step() if best is None else best


def step_metrics(root: str) -> dict[int, dict | None]:
    """Each step's recorded validation metrics (None for steps saved between evaluations)."""
    with reader(root) as manager:
        return {step: manager.metrics(step) for step in manager.all_steps()}


@contextlib.contextmanager
def read_errors(root, step):
    """Turns whatever orbax and tensorstore raise for missing, damaged or truncated files
    into one UnreadableCheckpoint naming the step and the reason."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - they raise many types
        raise UnreadableCheckpoint(f"cannot read the checkpoint at {root} step {step}: "
                                   f"{os_error_text(error)}") from error


def set_aside(root: str, step: int) -> str:
    """Moves an unreadable step out of the manager's sight (to `damaged-<step>`), so that it
    neither counts for retention nor blocks a new save of the same step; returns the new path."""
    source = os.path.join(root, str(step))
    target = os.path.join(root, f"damaged-{step}")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(source, target)
    return target


def abstract_variables(model: models.VGG) -> dict:
    """The model's variables as ShapeDtypeStructs: nothing is allocated, the input included."""
    size = model.image_size
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), np.float32))


def shape_mismatches(expected: dict, actual: dict, layers: Iterable[str] | None = None) -> list[str]:
    """Layers (of `layers`, default all expected) whose parameters are missing or shaped differently."""
    problems = []
    for layer in (expected if layers is None else layers):
        want = jax.tree.map(np.shape, expected.get(layer))
        have = jax.tree.map(np.shape, actual.get(layer)) if layer in actual else None
        if want != have:
            problems.append(f"{layer}: expected {want}, found {have}")
    return problems


def check_fits(model: models.VGG, variables: dict, source: str) -> None:
    """A clear error when `variables` are not this model's (other architecture or class count)."""
    expected = abstract_variables(model)
    problems = []
    for collection in ("params", "batch_stats"):
        problems += shape_mismatches(expected.get(collection, {}), variables.get(collection, {}))
    extra = set(variables.get("params", {})) - set(expected["params"])
    problems += [f"{layer}: not in this model" for layer in sorted(extra)]
    if problems:
        raise CheckpointError(f"the checkpoint at {source} does not fit this model: " + "; ".join(problems))


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
