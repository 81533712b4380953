"""Orbax checkpoints: one on-disk format for training runs, imported weights and transfer.

A model directory is an orbax CheckpointManager root whose steps hold two items:
- 'state': a pytree with at least 'params' (and 'batch_stats' for BN nets); training adds
  the optimiser state, the step and the dropout key;
- 'meta': JSON with the ModelSpec (architecture, model fields, class names, normalisation),
  plus, for a training run, its progress (best validation top-1 and plateau count, learning-rate
  drops, the newest validation metrics, why it stopped).
A training workdir keeps its model directory at `workdir/checkpoints`; every loader here
accepts either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import stat
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

import vgg_jax
from vgg_jax import directory_writes, spec_fields
from vgg_jax.normalization import Normalization

log = logging.getLogger("vgg_jax.checkpoints")

STATE, META = "state", "meta"
BEST_METRIC = "val_top1"  # the validation metric that ranks steps (higher is better)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model asked for."""


class UnreadableCheckpoint(CheckpointError):
    """A step whose files are damaged, truncated or missing."""


class CheckpointSaveError(RuntimeError):
    """The filesystem refused a checkpoint (no space, read-only, no permission)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it correctly."""

    arch: str
    model_kwargs: dict
    class_names: list[str] | None = None
    normalization: Normalization = Normalization()

    def build(self, **overrides) -> vgg_jax.VGG:
        return vgg_jax.create_model(self.arch, **{**self.model_kwargs, **overrides})

    def preprocess(self, image: np.ndarray | str | os.PathLike, scale: int | None = None) -> np.ndarray:
        """The evaluation preprocessing these weights need, in one call: an image file or a uint8
        HxWx3 array -> a float32 (1, h, w, 3) batch whose smallest side is `scale` (the test scale
        Q; default the model's image_size), normalised as the weights expect."""
        from vgg_jax import preprocessing  # TensorFlow: only for those who preprocess here

        return preprocessing.evaluation_input(image, scale or self.build().image_size, self.normalization)

    def to_dict(self) -> dict:
        return {"arch": self.arch, "model_kwargs": self.model_kwargs,
                "class_names": self.class_names, "normalization": self.normalization.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        """A spec read from a file, every field checked (`spec_fields`); a CheckpointError
        'spec.<field>: <value>: <reason>' otherwise."""
        if not isinstance(values, dict):
            raise CheckpointError("spec: not a JSON object")
        try:
            arch = spec_fields.check_arch(values.get("arch"))
            model = vgg_jax.create_model(arch, **spec_fields.check_model_arguments(values.get("model_kwargs", {})))
            names = spec_fields.check_class_names(values.get("class_names"), model.num_classes, model.include_top)
            return cls(arch, dict(values.get("model_kwargs", {})), names,
                       Normalization.from_dict(values.get("normalization")))
        except ValueError as error:
            raise CheckpointError(f"spec.{error}") from None


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
        manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}), metrics=metrics,
            force=True)


def finish_saving(manager: ocp.CheckpointManager) -> None:
    """Waits for pending asynchronous saves, raising CheckpointSaveError as `save` does."""
    with save_errors(manager.directory):
        manager.wait_until_finished()


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


def save_model(directory: str | os.PathLike, variables: dict, spec: ModelSpec, source: dict | None = None) -> None:
    """Writes `variables` ({'params', 'batch_stats'?}) as a model directory (imports, the cache).
    It is written beside `directory` and renamed into place (`directory_writes`): an existing
    `directory` is replaced only when empty or an earlier model directory of this kind, else a
    CheckpointError; orbax never saves into a folder that holds anything else. `source`
    (the cache's record of the file converted) is kept in the meta item with `content_digest`."""
    meta = {"spec": spec.to_dict()}
    if source is not None:
        meta["source"] = {**source, CONTENT_DIGEST: content_digest(variables, spec)}
    with occupied_errors():
        with directory_writes.replacing(directory, is_saved_model, MODEL_DIRECTORY) as temporary:
            manager = open_manager(temporary, keep=1, keep_best=False, async_save=False)
            save(manager, 0, dict(variables), meta)
            finish_saving(manager)
            manager.close()


def check_output(directory: str | os.PathLike) -> None:
    """The CheckpointError save_model would raise for `directory`, before any work."""
    with occupied_errors():
        directory_writes.check_replaceable(os.path.abspath(os.fspath(directory)), is_saved_model, MODEL_DIRECTORY)


@contextlib.contextmanager
def occupied_errors():
    try:
        yield
    except directory_writes.OccupiedError as error:
        raise CheckpointError(str(error)) from None


MODEL_DIRECTORY = "a model directory"


def is_saved_model(directory: str) -> bool:
    """Whether `directory` is what save_model writes: one step, 0, that orbax committed."""
    return os.listdir(directory) == ["0"] and os.path.isfile(os.path.join(directory, "0", "_CHECKPOINT_METADATA"))


CONTENT_DIGEST = "content_sha256"


def content_digest(variables: dict, spec: ModelSpec) -> str:
    """SHA-256 of the spec and every array (name, dtype, shape and bytes, in name order): what
    the cache checks to tell its own directories from edited or planted ones."""
    hasher = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for name, value in sorted(traverse_util.flatten_dict(variables, sep="/").items()):
        value = np.ascontiguousarray(value)
        hasher.update(f"{name} {value.dtype.str} {value.shape}".encode())
        hasher.update(value)
    return hasher.hexdigest()


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


# --- model directories as untrusted input --------------------------------------------------------

MAX_ENTRIES = 10_000  # files and folders in a model directory (a training run's 4 steps hold ~100)
# The JSON files orbax reads whole, bounded before anything reads them. The meta item's
# 'metadata' holds the spec, whose 21843 class names of 256 characters at most take < 8 MiB.
JSON_FILE_BYTES = {"metadata": 8 << 20, "_METADATA": 1 << 20, "_CHECKPOINT_METADATA": 1 << 20,
                   ".zarray": 64 << 10, "commit_success.txt": 4 << 10}
MAX_VARIABLE_BYTES = 1 << 30  # vgg19_bn at 224 px with 21843 classes, the largest import: 0.92 GB
STORED_DTYPES = ("float16", "bfloat16", "float32", "float64")  # restored as the model's float32


def load_variables(path: str | os.PathLike, step: int | None = None) -> tuple[dict, ModelSpec, int]:
    """(variables, spec, step) of a workdir or model directory: its parameters and batch
    statistics only (the optimiser state is never read). Default step: `default_step`.

    The directory is untrusted: its files (`check_files`), its spec (`ModelSpec.from_dict`) and
    the stored shapes and dtypes (`check_stored_layout`, against the spec's model) are checked
    before any array is read, and only the arrays the model has are read, at its shapes. Any
    failure is a CheckpointError naming the directory, the field and the reason."""
    root, step, meta = open_model(path, step)
    spec = read_spec(meta, root, step)
    expected = expected_variables(spec.build(), root, step)
    check_stored_layout(root, step, expected)
    with read_errors(root, step):
        state = read_state(root, step, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
                           target=expected, collections=tuple(expected))
    variables = jax.tree.map(np.asarray, dict(state))
    check_finite(variables, root, step)
    return variables, spec, step


def open_model(path: str | os.PathLike, step: int | None = None) -> tuple[str, int, dict]:
    """(root, step, meta item) of a workdir or model directory whose files passed `check_files`."""
    root = model_root(path)
    if root != os.path.abspath(os.fspath(path)) and os.path.islink(root):
        raise CheckpointError(f"{root} is a symbolic link: a workdir must hold its own checkpoints")
    check_files(root)
    step = default_step(root) if step is None else step
    with read_errors(root, step):
        meta = read_meta(root, step)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{root} step {step}: meta: not a JSON object")
    return root, step, meta


def check_files(root: str) -> None:
    """Refuses symbolic links (a file outside the directory would be read as its own), anything
    but files and folders (reading a FIFO would block), over MAX_ENTRIES entries, and JSON files
    over their JSON_FILE_BYTES bound."""
    for entries, (path, info) in enumerate(directory_entries(root), start=1):
        where = f"{root}: {spec_fields.shown(os.path.relpath(path, root))}"
        if entries > MAX_ENTRIES:
            raise CheckpointError(f"{root} holds over {MAX_ENTRIES} files and folders: not a model directory")
        if stat.S_ISLNK(info.st_mode):
            raise CheckpointError(f"{where} is a symbolic link: a model directory must hold its own files")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise CheckpointError(f"{where} is neither a file nor a folder")
        limit = JSON_FILE_BYTES.get(os.path.basename(path))
        if limit is not None and info.st_size > limit:
            raise CheckpointError(f"{where} has {info.st_size} bytes, over the {limit} such a file may have")


def directory_entries(root: str):
    """(path, lstat) of everything under `root`, links not followed."""
    for parent, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(parent, name)
            yield path, os.lstat(path)


def read_spec(meta: dict, root: str, step: int) -> ModelSpec:
    try:
        return ModelSpec.from_dict(meta.get("spec"))
    except CheckpointError as error:
        raise CheckpointError(f"{root} step {step}: {error}") from None


def expected_variables(model: vgg_jax.VGG, root: str, step: int) -> dict:
    """The model's variables as shapes (no arrays), within MAX_VARIABLE_BYTES."""
    expected = abstract_variables(model)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(expected))
    if size > MAX_VARIABLE_BYTES:
        raise CheckpointError(f"{root} step {step}: spec: its model's variables would take {size / 1e9:.2f} GB, "
                              f"over the {MAX_VARIABLE_BYTES / 1e9:.2f} GB of the largest VGG")
    return expected


def check_stored_layout(root: str, step: int, expected: dict) -> None:
    """Compares what the 'state' item's metadata declares (no array is read) with `expected`."""
    with read_errors(root, step), reader(root) as manager:
        stored = manager.item_metadata(step)[STATE]
        stored = {name: dict(stored[name]) for name in expected if name in stored}
    problems = layout_problems(traverse_util.flatten_dict(expected, sep="/"),
                               traverse_util.flatten_dict(stored, sep="/"))
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"the checkpoint at {root} step {step} does not fit this model (its spec's): "
                              + "; ".join(problems[:3]) + more)


def layout_problems(expected: dict, stored: dict) -> list[str]:
    """Per array (flat names): missing, not in the model, not an array, another shape, a dtype
    that is not a float, or chunks larger than the array (tensorstore decodes whole chunks)."""
    problems = [f"{name}: missing" for name in expected if name not in stored]
    problems += [f"{spec_fields.shown(name)}: not in this model" for name in stored if name not in expected]
    for name in expected.keys() & stored.keys():
        want, have = expected[name], stored[name]
        if not isinstance(have, ocp.metadata.ArrayMetadata):
            problems.append(f"{name}: not an array")
        elif tuple(have.shape) != want.shape:
            problems.append(f"{name}: stored shape {tuple(have.shape)}, the model's {want.shape}")
        elif np.dtype(have.dtype).name not in STORED_DTYPES:
            problems.append(f"{name}: stored as {np.dtype(have.dtype).name}; parameters must be one of "
                            f"{', '.join(STORED_DTYPES)}")
        elif have.storage and have.storage.chunk_shape and any(
                chunk > max(size, 1) for chunk, size in zip(have.storage.chunk_shape, want.shape)):
            problems.append(f"{name}: chunks {tuple(have.storage.chunk_shape)} larger than its shape {want.shape}")
    return problems


def check_finite(variables: dict, root: str, step: int) -> None:
    """NaN or infinite parameters make every score NaN: refused, naming the arrays. min and max
    propagate NaN and show infinities without a temporary the size of the array."""
    bad = [name for name, value in traverse_util.flatten_dict(variables, sep="/").items()
           if value.size and not (np.isfinite(value.min()) and np.isfinite(value.max()))]
    if bad:
        raise CheckpointError(f"{root} step {step}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: "
                              "NaN or infinite values")


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


def load_model(path: str | os.PathLike, step: int | None = None, **overrides):
    """(model, variables, spec) ready for `model.apply(variables, images)`."""
    variables, spec, _ = load_variables(path, step)
    model = spec.build(**overrides)
    check_fits(model, variables, source=str(path))
    return model, variables, spec


def abstract_variables(model: vgg_jax.VGG) -> dict:
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


def check_fits(model: vgg_jax.VGG, variables: dict, source: str) -> None:
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
