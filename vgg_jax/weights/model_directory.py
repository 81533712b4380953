"""Model directories: the spec that rebuilds and feeds a model, written once (imports, the cache)
and read as untrusted input (any directory or training run given as a model source).

A model directory is a checkpoint root (`core.checkpoints`) whose one step holds the 'state'
item (params, and batch_stats for BN nets) and the 'meta' item with the ModelSpec; a training
workdir holds the same at `workdir/checkpoints`, with more steps: every reader here accepts either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from vgg_jax.core import checkpoints, directory_writes, models
from vgg_jax.core.checkpoints import CheckpointError, read_errors
from vgg_jax.core.normalization import Normalization
from vgg_jax.weights import spec_fields


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it correctly."""

    arch: str
    model_kwargs: dict
    class_names: list[str] | None = None
    normalization: Normalization = Normalization()

    def build(self, **overrides) -> models.VGG:
        return models.create_model(self.arch, **{**self.model_kwargs, **overrides})

    def preprocess(self, image: np.ndarray | str | os.PathLike, scale: int | None = None) -> np.ndarray:
        """The evaluation preprocessing these weights need, in one call: an image file or a uint8
        HxWx3 array -> a float32 (1, h, w, 3) batch whose smallest side is `scale` (the test scale
        Q; default the model's image_size), normalised as the weights expect."""
        from vgg_jax.data import preprocessing  # OpenCV and the decoders: only for those who preprocess here

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
            model = models.create_model(arch, **spec_fields.check_model_arguments(values.get("model_kwargs", {})))
            names = spec_fields.check_class_names(values.get("class_names"), model.num_classes, model.include_top)
            return cls(arch, dict(values.get("model_kwargs", {})), names,
                       Normalization.from_dict(values.get("normalization")))
        except ValueError as error:
            raise CheckpointError(f"spec.{error}") from None


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
            manager = checkpoints.open_manager(temporary, keep=1, keep_best=False, async_save=False)
            checkpoints.save(manager, 0, dict(variables), meta)
            checkpoints.finish_saving(manager)
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
        state = checkpoints.read_state(root, step, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
                           target=expected, collections=tuple(expected))
    variables = jax.tree.map(np.asarray, dict(state))
    check_finite(variables, root, step)
    return variables, spec, step


def open_model(path: str | os.PathLike, step: int | None = None) -> tuple[str, int, dict]:
    """(root, step, meta item) of a workdir or model directory whose files passed `check_files`."""
    root = checkpoints.model_root(path)
    if root != os.path.abspath(os.fspath(path)) and os.path.islink(root):
        raise CheckpointError(f"{root} is a symbolic link: a workdir must hold its own checkpoints")
    check_files(root)
    step = checkpoints.default_step(root) if step is None else step
    with read_errors(root, step):
        meta = checkpoints.read_meta(root, step)
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


def expected_variables(model: models.VGG, root: str, step: int) -> dict:
    """The model's variables as shapes (no arrays), within MAX_VARIABLE_BYTES."""
    expected = checkpoints.abstract_variables(model)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(expected))
    if size > MAX_VARIABLE_BYTES:
        raise CheckpointError(f"{root} step {step}: spec: its model's variables would take {size / 1e9:.2f} GB, "
                              f"over the {MAX_VARIABLE_BYTES / 1e9:.2f} GB of the largest VGG")
    return expected


def check_stored_layout(root: str, step: int, expected: dict) -> None:
    """Compares what the 'state' item's metadata declares (no array is read) with `expected`."""
    with read_errors(root, step), checkpoints.reader(root) as manager:
        stored = manager.item_metadata(step)[checkpoints.STATE]
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


def load_model(path: str | os.PathLike, step: int | None = None, **overrides):
    """(model, variables, spec) ready for `model.apply(variables, images)`."""
    variables, spec, _ = load_variables(path, step)
    model = spec.build(**overrides)
    checkpoints.check_fits(model, variables, source=str(path))
    return model, variables, spec
