"""Import pretrained VGG weights from torchvision / timm (.pth, .safetensors) and Keras (.h5) files.

`import_weights(path, arch)` returns `(variables, normalization)`: our Flax variables under the
Caffe layer names, and the input convention the weights were trained with. Every format is
turned into a table `file key -> (our variable, conversion)` built from the layout table
(`vgg_jax.models.LAYOUTS`), so one walk over the layout serves all eight torchvision variants.

Conversions: torch conv kernels are OIHW (ours HWIO); torch flattens pool5 in CHW order before
fc6 (ours NHWC), timm stores fc6 as a 7x7 conv; Keras kernels and flatten order are already ours.

.pth files are read without torch and without running code from the file: a restricted
unpickler accepts only tensors, parameters, ordered dicts and storage types (see TorchUnpickler).

CLI: python -m vgg_jax.weights import PATH --arch vgg16 --out DIR [--num-classes N]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import math
import os
import pickle
import zipfile
from typing import Any, Callable

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file as load_safetensors

import vgg_jax
from vgg_jax import checkpoints, normalization
from vgg_jax.models import BLOCK_WIDTHS, DOWNSAMPLING, FC_WIDTH, LAYOUTS, initializers

HEAD_LAYERS = ("fc6", "fc7", "fc8")
TORCHVISION_HEAD = ("classifier.0", "classifier.3", "classifier.6")
TIMM_HEAD = ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
KERAS_HEAD = ("fc1", "fc2", "predictions")
IGNORED_SUFFIXES = (".num_batches_tracked",)  # BN bookkeeping with no effect on inference


class WeightsError(ValueError):
    """A weight file that cannot be read safely, or does not fit the architecture asked for."""


# --- reading torch files without torch ---------------------------------------------------------

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's format before torch 1.6 (a pickle sequence)


@dataclasses.dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: Any
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor as the pickle describes it; its bytes are read once the pickle is parsed."""

    storage: StorageRef
    offset: int
    size: tuple
    stride: tuple


def rebuild_tensor(storage, offset, size, stride, *_unused) -> TensorRef:
    """Stands in for torch._utils._rebuild_tensor_v2 (the rest: requires_grad, hooks, metadata)."""
    if not isinstance(storage, StorageRef):
        raise WeightsError("malformed tensor record in the pickle")
    return TensorRef(storage, int(offset), tuple(size), tuple(stride))


def rebuild_parameter(data, *_unused):
    """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    return data


class TorchUnpickler(pickle.Unpickler):
    """Unpickles a state dict into TensorRefs; refuses every global that is not on the allow-list.

    torch.load runs whatever callable the pickle names (os.system included); this reader only
    ever hands the pickle the harmless stand-ins below.
    """

    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    }

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, StorageRef] = {}  # every storage the pickle refers to, by key

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return name  # a storage type only names its element type
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise WeightsError(
            f"refusing to load: the file's pickle references {module}.{name}, which is not a tensor "
            "or a state dict (it could run code under torch.load). Save model.state_dict() instead.")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view]): a view only in legacy files.
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], str) and pid[1] in STORAGE_DTYPES):
            raise WeightsError(f"unsupported storage record {pid!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError("storage views (torch < 0.4 files) are not supported")
        ref = StorageRef(str(pid[2]), STORAGE_DTYPES[pid[1]], int(pid[4]))
        self.storages[ref.key] = ref
        return ref


def tensor_array(ref: TensorRef, storage: np.ndarray) -> np.ndarray:
    """The strided view `ref` describes, after checking that it stays inside its storage."""
    if 0 in ref.size:
        return np.zeros(ref.size, storage.dtype)
    end = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or end >= storage.size:
        raise WeightsError("a tensor in the file points outside its storage")
    strides = [s * storage.itemsize for s in ref.stride]
    return np.lib.stride_tricks.as_strided(storage[ref.offset:], ref.size, strides, writeable=False)


def storage_array(data: bytes, ref: StorageRef, little_endian: bool) -> np.ndarray:
    dtype = np.dtype(ref.dtype).newbyteorder("<" if little_endian else ">")
    return np.frombuffer(data, dtype, count=ref.numel)


def read_zip_pth(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """torch.save's zip: <prefix>/data.pkl with storages in <prefix>/data/<key>."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl")]
        if not pickles:
            raise WeightsError(f"{path} is a zip file but not a torch.save archive (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as file:
            unpickler = TorchUnpickler(file)
            contents = unpickler.load()
        order = f"{prefix}byteorder"
        little = order not in names or archive.read(order).strip() == b"little"
        storages = {key: storage_array(archive.read(f"{prefix}data/{key}"), ref, little)
                    for key, ref in unpickler.storages.items()}
    return contents, storages


def read_legacy_pth(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The pre-1.6 format (torchvision's VGG downloads): magic, protocol, sys info, the state
    dict pickle, the list of storage keys, then per key an int64 element count and the bytes."""
    with open(path, "rb") as file:
        try:
            magic = TorchUnpickler(file).load()
        except WeightsError:
            raise
        except Exception as error:  # not a pickle at all
            raise WeightsError(f"{path} is not a torch, safetensors or Keras weight file: {error}") from error
        if magic != LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a torch.save file")
        TorchUnpickler(file).load()  # protocol version
        little = TorchUnpickler(file).load().get("little_endian", True)
        unpickler = TorchUnpickler(file)
        contents = unpickler.load()
        storages = {}
        for key in TorchUnpickler(file).load():
            numel = int.from_bytes(file.read(8), "little" if little else "big")
            ref = dataclasses.replace(unpickler.storages[key], numel=numel)
            storages[key] = storage_array(file.read(numel * np.dtype(ref.dtype).itemsize), ref, little)
    return contents, storages


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A torch state dict (zip or legacy format) as numpy arrays; `{'state_dict': ...}` is unwrapped."""
    contents, storages = (read_zip_pth if zipfile.is_zipfile(path) else read_legacy_pth)(path)
    if isinstance(contents, dict) and "state_dict" in contents:
        contents = contents["state_dict"]
    if not isinstance(contents, dict):
        raise WeightsError(f"{path} holds a {type(contents).__name__}, not a state dict")
    not_tensors = [key for key, value in contents.items() if not isinstance(value, TensorRef)]
    if not_tensors:
        raise WeightsError(f"{path}: state dict entries that are not tensors: {not_tensors}")
    return {key: tensor_array(ref, storages[ref.storage.key]) for key, ref in contents.items()}


# --- reading Keras files -----------------------------------------------------------------------

def read_keras(path: str) -> dict[str, np.ndarray]:
    """Keras weights as '{layer}/kernel' and '{layer}/bias' arrays (Conv2D and Dense list the
    kernel first, then the bias), from either layout Keras writes."""
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file  # a whole saved model
        if "layer_names" in group.attrs:
            layers = legacy_keras_layers(group)
        elif "layers" in group:
            layers = keras3_layers(group["layers"])
        else:
            raise WeightsError(f"{path} is an HDF5 file but not a Keras weight file")
    tensors = {}
    for name, arrays in layers.items():
        labels = ("kernel", "bias") if len(arrays) == 2 else [str(i) for i in range(len(arrays))]
        tensors.update({f"{name}/{label}": array for label, array in zip(labels, arrays)})
    return tensors


def legacy_keras_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    """keras.applications' downloads (Keras 2): `layer_names`, each layer's `weight_names` in order."""
    layers = {}
    for name in map(as_str, group.attrs["layer_names"]):
        layers[name] = [np.asarray(group[name][as_str(weight)]) for weight in group[name].attrs["weight_names"]]
    return layers


def keras3_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    """Keras 3's `.weights.h5`: `layers/<class name>/vars/<i>`, the layer's name in an attribute."""
    return {as_str(layer["vars"].attrs.get("name", key)): [np.asarray(layer["vars"][str(i)])
                                                           for i in range(len(layer["vars"]))]
            for key, layer in group.items() if "vars" in layer}


def as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- key tables: file key -> (our variable path, conversion) ------------------------------------

Target = tuple[str, str, str]  # (collection, layer, leaf), e.g. ('params', 'conv1_1', 'kernel')
KeyMap = dict[str, tuple[Target, Callable[[np.ndarray], np.ndarray]]]


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch OIHW -> flax HWIO."""
    return weight.transpose(2, 3, 1, 0)


def dense_kernel(weight: np.ndarray, channels: int) -> np.ndarray:
    """A torch linear weight (out, C*w*w) flattened CHW, or a timm conv weight (out, C, w, w),
    -> our (w*w*C, out) kernel, whose rows follow the NHWC flatten of a w x w window."""
    out = weight.shape[0]
    window = math.isqrt(weight.size // max(out * channels, 1))
    if weight.size != out * channels * window * window:
        raise ValueError(f"not a square window over {channels} input channels")
    return weight.reshape(out, channels, window, window).transpose(2, 3, 1, 0).reshape(-1, out)


def conv_positions(model: vgg_jax.VGG) -> list[list[str]]:
    """Per block, the positions of its convs: [['1_1', '1_2'], ['2_1', '2_2'], ...]."""
    return [[f"{block}_{index}" for index in range(1, len(kernels) + 1)]
            for block, kernels in enumerate(LAYOUTS[model.layout], start=1)]


def torch_feature_names(model: vgg_jax.VGG) -> dict[int, str]:
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


def torch_key_map(model: vgg_jax.VGG, head: tuple[str, str, str]) -> KeyMap:
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


def keras_key_map(model: vgg_jax.VGG) -> KeyMap:
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

def head_fields(params: dict, model: vgg_jax.VGG) -> dict:
    """The VGG fields that imported weights fix: include_top, and with a head its window
    (as image_size) and num_classes."""
    if not any(layer in params for layer in HEAD_LAYERS):
        return {"include_top": False}
    fields: dict[str, Any] = {"include_top": True}
    if "fc6" in params:
        window = math.isqrt(params["fc6"]["kernel"].shape[0] // model.scaled(BLOCK_WIDTHS[-1]))
        fields["image_size"] = max(window, 1) * DOWNSAMPLING
    if "fc8" in params:
        fields["num_classes"] = params["fc8"]["kernel"].shape[-1]
    return fields


def convert(tensors: dict[str, np.ndarray], keys: KeyMap, model: vgg_jax.VGG, source: str) -> dict:
    """Our variables from the file's tensors; one error naming every missing, unexpected or
    misshapen key when they do not fit the model."""
    problems, converted, failed = [], {}, set()
    sources = {target: key for key, (target, _) in keys.items()}
    for key, (target, conversion) in keys.items():
        if key in tensors:
            try:
                converted[target] = np.ascontiguousarray(conversion(tensors[key]), np.float32)
            except ValueError as error:
                problems.append(f"{key} {tensors[key].shape}: {error}")
                failed.add(target)
    variables = traverse_util.unflatten_dict(converted)
    expected = traverse_util.flatten_dict(checkpoints.abstract_variables(
        model.clone(**head_fields(variables.get("params", {}), model))))
    missing = [sources[target] for target in expected if target not in converted and target not in failed]
    unexpected = [key for key in tensors if key not in keys and not key.endswith(IGNORED_SUFFIXES)]
    unexpected += [sources[target] for target in converted if target not in expected]
    problems += [f"{sources[target]} {tensors[sources[target]].shape} -> {'/'.join(target[1:])} "
                 f"{value.shape}, the model needs {expected[target].shape}"
                 for target, value in converted.items()
                 if target in expected and value.shape != expected[target].shape]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if problems:
        raise WeightsError(f"{source} does not fit: " + "; ".join(problems))
    return variables


def read_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
    """The file's tensors by key, and its family: 'keras' (.h5) or 'torch' (.safetensors, else pickle)."""
    if not os.path.isfile(path):
        raise WeightsError(f"no weight file at {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".h5", ".hdf5"):
        return read_keras(path), "keras"
    if suffix == ".safetensors":
        return load_safetensors(path), "torch"
    return read_torch(path), "torch"


def import_weights(path: str | os.PathLike, arch: str) -> tuple[dict, normalization.Normalization]:
    """(variables, normalization) for `vgg_jax.create_model(arch, **head_fields(...))`.

    torchvision and timm weights take RGB images normalised by ImageNet mean/std (TORCHVISION);
    Keras' take BGR with the mean subtracted on 0-255 (CAFFE_BGR). A file without a classifier
    gives variables without fc6..fc8, for include_top=False.
    """
    path = os.fspath(path)
    model = vgg_jax.create_model(arch)
    tensors, family = read_weights(path)
    if family == "keras":
        keys, convention = keras_key_map(model), normalization.CAFFE_BGR
    else:
        head = TIMM_HEAD if any(key.startswith("pre_logits.") for key in tensors) else TORCHVISION_HEAD
        keys, convention = torch_key_map(model, head), normalization.TORCHVISION
    return convert(tensors, keys, model, source=f"{path} as {arch}"), convention


# --- CLI ---------------------------------------------------------------------------------------

def new_classifier(model: vgg_jax.VGG, num_classes: int, seed: int = 0) -> dict:
    """A freshly initialised fc8 for `num_classes` (transfer learning), under the model's init scheme."""
    _, dense_init = initializers(model.init_scheme)
    inputs = jnp.zeros((1, model.scaled(FC_WIDTH)))
    return nn.Dense(num_classes, **dense_init).init(jax.random.key(seed), inputs)["params"]


def import_to_checkpoint(path: str, arch: str, out: str, num_classes: int | None = None) -> checkpoints.ModelSpec:
    """Imports `path` and writes it as a model directory; `num_classes` other than the file's
    replaces fc8 by a fresh one."""
    variables, convention = import_weights(path, arch)
    model = vgg_jax.create_model(arch)
    fields = head_fields(variables["params"], model)
    if num_classes is not None and num_classes != fields.get("num_classes"):
        if not fields["include_top"]:
            raise WeightsError(f"{path} has no classifier to resize: drop --num-classes")
        params = {**variables["params"], "fc8": new_classifier(model, num_classes)}
        variables, fields = {**variables, "params": params}, {**fields, "num_classes": num_classes}
    spec = checkpoints.ModelSpec(arch, fields, None, convention)
    checkpoints.save_model(out, variables, spec)
    return spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vgg_jax.weights", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="convert a torchvision/timm/Keras file to a model directory")
    command.add_argument("path", help=".pth/.pt/.bin (torch), .safetensors (timm) or .h5 (Keras)")
    command.add_argument("--arch", required=True, choices=sorted(vgg_jax.ARCHITECTURES))
    command.add_argument("--out", required=True, help="model directory to write")
    command.add_argument("--num-classes", type=int, help="a new class count: fc8 starts afresh")
    args = parser.parse_args(argv)
    try:
        spec = import_to_checkpoint(args.path, args.arch, args.out, args.num_classes)
    except WeightsError as error:
        parser.exit(1, f"error: {error}\n")
    print(f"wrote {args.out}: {spec.arch} {spec.model_kwargs}, input {spec.normalization}")


if __name__ == "__main__":
    main()
