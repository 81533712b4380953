"""torchvision / timm / Keras tensors -> our Flax variables, and model directories from files.

Every format is turned into a table `file key -> (our variable, conversion)` built from the
layout table (`vgg_jax.core.models.LAYOUTS`), so one walk over the layout serves all eight
torchvision variants.

Conversions: torch conv kernels are OIHW (ours HWIO); torch flattens pool5 in CHW order before
fc6 (ours NHWC), timm stores fc6 as a 7x7 conv; Keras kernels and flatten order are already ours.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from vgg_jax.core import checkpoints, models, normalization
from vgg_jax.core.models import BLOCK_WIDTHS, DOWNSAMPLING, FC_WIDTH, initializers, LAYOUTS
from vgg_jax.weights import model_directory, spec_fields
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.file_tensors import file_errors, FileTensor, FLOAT_DTYPES, is_float, untrusted
from vgg_jax.weights.keras_files import open_keras
from vgg_jax.weights.torch_files import open_torch

HEAD_LAYERS = ("fc6", "fc7", "fc8")
TORCHVISION_HEAD = ("classifier.0", "classifier.3", "classifier.6")
TIMM_HEAD = ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
KERAS_HEAD = ("fc1", "fc2", "predictions")
IGNORED_SUFFIXES = (".num_batches_tracked",)  # BN bookkeeping with no effect on inference
# The head's size comes from the file; bounded so that no file asks for more than the
# architecture at its 224 px input (a 7x7 fc6 window) with this many classes (ImageNet-21k's,
# the bound model directories have too).
MAX_CLASSES = spec_fields.MAX_CLASSES
# safetensors parses its JSON header whole (18 MB of empty entries took 547 MB); timm's
# VGG19-BN header takes about 12 kB.
MAX_SAFETENSORS_HEADER = 2**20
SAFETENSORS_DTYPES = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


# --- key tables: file key -> (our variable path, conversion) ------------------------------------

Target = tuple[str, str, str]  # (collection, layer, leaf), e.g. ('params', 'conv1_1', 'kernel')
KeyMap = dict[str, tuple[Target, Callable[[np.ndarray], np.ndarray]]]


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch OIHW -> flax HWIO."""
    return weight.transpose(2, 3, 1, 0)


def dense_kernel(weight: np.ndarray, channels: int) -> np.ndarray:
    """A torch linear weight (out, C*w*w) flattened CHW, or a timm conv weight (out, C, w, w),
    -> our (w*w*C, out) kernel, whose rows follow the NHWC flatten of a w x w window."""
    if weight.ndim not in (2, 4):
        raise ValueError(f"a {weight.ndim}-d tensor, not a linear or conv weight")
    out = weight.shape[0]
    window = math.isqrt(weight.size // max(out * channels, 1))
    if weight.size != out * channels * window * window:
        raise ValueError(f"not a square window over {channels} input channels")
    return weight.reshape(out, channels, window, window).transpose(2, 3, 1, 0).reshape(-1, out)


def conv_positions(model: models.VGG) -> list[list[str]]:
    """Per block, the positions of its convs: [['1_1', '1_2'], ['2_1', '2_2'], ...]."""
    return [[f"{block}_{index}" for index in range(1, len(kernels) + 1)]
            for block, kernels in enumerate(LAYOUTS[model.layout], start=1)]


def torch_feature_names(model: models.VGG) -> dict[int, str]:
    """`features.N` index -> our layer name, numbering modules as torchvision's nn.Sequential does."""
    names, index = {}, 0
    for block in conv_positions(model):
        for position in block:
            names[index] = f"conv{position}"
            if model.batch_norm:
                names[index + 1] = f"bn{position}"
            index += 3 if model.batch_norm else 2  # conv, [BN,] ReLU
            if model.lrn and position == "1_1":
                index += 1  # LocalResponseNorm
        index += 1  # MaxPool
    return names


def kernel_and_bias(kernel_key: str, bias_key: str, layer: str, conversion) -> KeyMap:
    return {kernel_key: (("params", layer, "kernel"), conversion), bias_key: (("params", layer, "bias"), np.asarray)}


def torch_key_map(model: models.VGG, head: tuple[str, str, str]) -> KeyMap:
    keys: KeyMap = {}
    for index, layer in torch_feature_names(model).items():
        prefix = f"features.{index}"
        if layer.startswith("conv"):
            keys.update(kernel_and_bias(f"{prefix}.weight", f"{prefix}.bias", layer, conv_kernel))
        else:
            keys[f"{prefix}.weight"] = (("params", layer, "scale"), np.asarray)
            keys[f"{prefix}.bias"] = (("params", layer, "bias"), np.asarray)
            keys[f"{prefix}.running_mean"] = (("batch_stats", layer, "mean"), np.asarray)
            keys[f"{prefix}.running_var"] = (("batch_stats", layer, "var"), np.asarray)
    inputs = (model.scaled(BLOCK_WIDTHS[-1]), model.scaled(FC_WIDTH), model.scaled(FC_WIDTH))
    for name, layer, channels in zip(head, HEAD_LAYERS, inputs):
        conversion = functools.partial(dense_kernel, channels=channels)
        keys.update(kernel_and_bias(f"{name}.weight", f"{name}.bias", layer, conversion))
    return keys


def keras_key_map(model: models.VGG) -> KeyMap:
    if model.batch_norm or model.lrn:
        raise WeightsError("Keras has VGG16 and VGG19 only: choose vgg16 or vgg19 for a Keras file")
    keys: KeyMap = {}
    for block in conv_positions(model):
        for position in block:
            name = "block{}_conv{}".format(*position.split("_"))
            keys.update(kernel_and_bias(f"{name}/kernel", f"{name}/bias", f"conv{position}", np.asarray))
    for name, layer in zip(KERAS_HEAD, HEAD_LAYERS):
        keys.update(kernel_and_bias(f"{name}/kernel", f"{name}/bias", layer, np.asarray))
    return keys


# --- assembling and checking -------------------------------------------------------------------

def head_fields(params: dict, model: models.VGG) -> dict:
    """The VGG fields that imported weights fix: include_top, and with a head its window
    (as image_size) and num_classes."""
    if not any(layer in params for layer in HEAD_LAYERS):
        return {"include_top": False}
    fields: dict[str, Any] = {"include_top": True}
    if "kernel" in params.get("fc6", {}):  # a file may hold a bias without its kernel: reported as missing
        window = math.isqrt(params["fc6"]["kernel"].shape[0] // model.scaled(BLOCK_WIDTHS[-1]))
        fields["image_size"] = max(window, 1) * DOWNSAMPLING
    if "kernel" in params.get("fc8", {}):
        fields["num_classes"] = params["fc8"]["kernel"].shape[-1]
    return fields


def converted_shape(conversion: Callable[[np.ndarray], np.ndarray], shape: tuple) -> tuple:
    """The shape `conversion` gives a tensor of `shape`, found on a stand-in whose strides are
    all 0: transposes and reshapes of it are views, so no shape costs memory."""
    return conversion(np.broadcast_to(np.zeros((), np.float32), shape)).shape


def head_bounds(fields: dict, model: models.VGG, keys: KeyMap) -> list[str]:
    """The file's head sizes over what the architecture allows (see MAX_CLASSES)."""
    sources = {target[1:]: key for key, (target, _) in keys.items()}
    problems = []
    if fields.get("image_size", 0) > model.image_size:
        problems.append(f"{sources['fc6', 'kernel']}: a {fields['image_size'] // DOWNSAMPLING}-wide fc6 window, "
                        f"wider than the {model.head_window} of a {model.image_size} px input")
    if fields.get("num_classes", 0) > MAX_CLASSES:
        problems.append(f"{sources['fc8', 'kernel']}: {fields['num_classes']} classes, more than {MAX_CLASSES}")
    return problems


def read_float32(path: str, key: str, tensor: FileTensor) -> np.ndarray:
    """The tensor's values as float32 (floats only: see FLOAT_DTYPES), read now; NaN and
    infinities are refused (a trained network has none, and they would spread silently)."""
    if not is_float(tensor.dtype):
        raise WeightsError(f"{path}: {key}: {not_float(tensor)}")
    with file_errors(path, key), np.errstate(over="ignore"):  # float64 past float32's range: inf, refused
        values = tensor.read().astype(np.float32)
    if not np.isfinite(values.sum(dtype=np.float64)):  # one pass, no mask: float64 cannot overflow here
        raise WeightsError(f"{path}: {key}: {np.count_nonzero(~np.isfinite(values))} of its {values.size} "
                           "values are NaN or infinite (as float32); a trained network has none")
    return values


def not_float(tensor: FileTensor) -> str:
    return (f"a {tensor.dtype} tensor; weights must be floating point "
            f"({', '.join(map(str, FLOAT_DTYPES))}), which are read as float32")


def convert(tensors: dict[str, FileTensor], keys: KeyMap, model: models.VGG, path: str, source: str) -> dict:
    """Our variables from the file's tensors; one error naming every missing, unexpected,
    misshapen or non-float key when they do not fit the model. Shapes and dtypes are checked
    from the file's header, so nothing is read from a file that does not fit."""
    problems, shapes, failed = [], {}, set()
    sources = {target: key for key, (target, _) in keys.items()}
    for key, (target, conversion) in keys.items():
        if key in tensors:
            if not is_float(tensors[key].dtype):
                problems.append(f"{key}: {not_float(tensors[key])}")
            try:
                shapes[target] = jax.ShapeDtypeStruct(converted_shape(conversion, tensors[key].shape), np.float32)
            except ValueError as error:
                problems.append(f"{key} {tensors[key].shape}: {error}")
                failed.add(target)
    fields = head_fields(traverse_util.unflatten_dict(shapes).get("params", {}), model)
    too_large = head_bounds(fields, model, keys)
    if too_large:  # refused before the model is built at the file's size
        raise WeightsError(f"{source} does not fit: " + "; ".join(problems + too_large))
    expected = traverse_util.flatten_dict(checkpoints.abstract_variables(model.clone(**fields)))
    missing = [sources[target] for target in expected if target not in shapes and target not in failed]
    unexpected = [key for key in tensors if key not in keys and not key.endswith(IGNORED_SUFFIXES)]
    unexpected += [sources[target] for target in shapes if target not in expected]
    problems += [f"{sources[target]} {tensors[sources[target]].shape} -> {'/'.join(target[1:])} "
                 f"{value.shape}, the model needs {expected[target].shape}"
                 for target, value in shapes.items()
                 if target in expected and value.shape != expected[target].shape]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {untrusted(unexpected)}")
    if problems:
        raise WeightsError(f"{source} does not fit: " + "; ".join(problems))
    converted = {target: np.ascontiguousarray(conversion(read_float32(path, key, tensors[key])))
                 for key, (target, conversion) in keys.items() if target in shapes}
    return traverse_util.unflatten_dict(converted)


@contextlib.contextmanager
def safetensors_tensors(path: str) -> Iterator[dict[str, FileTensor]]:
    """A .safetensors file (timm), described from its JSON header, once the header (its first 8
    bytes give its length) is known to be small; the tensors are read while open."""
    with open(path, "rb") as file:
        header_bytes = int.from_bytes(file.read(8), "little")
    if MAX_SAFETENSORS_HEADER < header_bytes < os.path.getsize(path):  # past the end: damage, safetensors says
        raise WeightsError(f"{path}: refusing the safetensors header: {header_bytes} bytes, "
                           f"more than {MAX_SAFETENSORS_HEADER}")
    with safe_open(path, framework="np") as file:
        tensors = {}
        for key in file.keys():
            header = file.get_slice(key)
            if header.get_dtype() not in SAFETENSORS_DTYPES:
                raise WeightsError(f"{path}: {untrusted(key)}: unsupported dtype {untrusted(header.get_dtype())}")
            tensors[key] = FileTensor(tuple(header.get_shape()), np.dtype(SAFETENSORS_DTYPES[header.get_dtype()]),
                                      functools.partial(file.get_tensor, key))
        yield tensors


@contextlib.contextmanager
def open_weights(path: str) -> Iterator[tuple[dict[str, FileTensor], str]]:
    """The file's tensors by key, described (read them while the file is open), and its family:
    'keras' (.h5) or 'torch' (.safetensors, else pickle). Refusals name the file."""
    if not os.path.isfile(path):
        raise WeightsError(f"no weight file at {path}")
    suffix = os.path.splitext(path)[1].lower()
    opener, family = {".h5": (open_keras, "keras"), ".hdf5": (open_keras, "keras"),
                      ".safetensors": (safetensors_tensors, "torch")}.get(suffix, (open_torch, "torch"))
    with contextlib.ExitStack() as stack:
        with file_errors(path):
            tensors = stack.enter_context(opener(path))
        yield tensors, family


def import_weights(path: str | os.PathLike, arch: str) -> tuple[dict, normalization.Normalization]:
    """(variables, normalization) for `vgg_jax.create_model(arch, **head_fields(...))`.

    torchvision and timm weights take RGB images normalised by ImageNet mean/std (TORCHVISION);
    Keras' take BGR with the mean subtracted on 0-255 (CAFFE_BGR). A file without a classifier
    gives variables without fc6..fc8, for include_top=False.
    """
    path = os.fspath(path)
    model = models.create_model(arch)
    with open_weights(path) as (tensors, family):
        if family == "keras":
            keys, convention = keras_key_map(model), normalization.CAFFE_BGR
        else:
            head = TIMM_HEAD if any(key.startswith("pre_logits.") for key in tensors) else TORCHVISION_HEAD
            keys, convention = torch_key_map(model, head), normalization.TORCHVISION
        return convert(tensors, keys, model, path, source=f"{path} as {arch}"), convention


# --- model directories -------------------------------------------------------------------------

def new_classifier(model: models.VGG, num_classes: int, seed: int = 0) -> dict:
    """A freshly initialised fc8 for `num_classes` (transfer learning), under the model's init scheme."""
    _, dense_init = initializers(model.init_scheme)
    inputs = jnp.zeros((1, model.scaled(FC_WIDTH)))
    return nn.Dense(num_classes, **dense_init).init(jax.random.key(seed), inputs)["params"]


def import_to_checkpoint(path: str, arch: str, out: str, num_classes: int | None = None,
                         class_names: list[str] | None = None, source: dict | None = None) -> model_directory.ModelSpec:
    """Imports `path` and writes it as a model directory; `num_classes` other than the file's
    replaces fc8 by a fresh one. `class_names` go into the spec for predict and users; `source`
    (the cache's record of the file) into its meta item. An existing `out` that is not an
    earlier model directory is refused before the file is read (`model_directory.save_model`)."""
    model_directory.check_output(out)
    variables, convention = import_weights(path, arch)
    model = models.create_model(arch)
    fields = head_fields(variables["params"], model)
    if num_classes is not None and num_classes != fields.get("num_classes"):
        if not fields["include_top"]:
            raise WeightsError(f"{path} has no classifier to resize: drop --num_classes")
        params = {**variables["params"], "fc8": new_classifier(model, num_classes)}
        variables, fields = {**variables, "params": params}, {**fields, "num_classes": num_classes}
    spec = model_directory.ModelSpec(arch, fields, class_names, convention)
    try:
        model_directory.save_model(out, variables, spec, source)
    except (OSError, checkpoints.CheckpointSaveError) as error:
        raise WeightsError(f"cannot write the model directory {out}: {checkpoints.os_error_text(error)}") from error
    return spec
