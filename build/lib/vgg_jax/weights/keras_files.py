"""Keras weight files (.h5): keras.applications' downloads (Keras 2 layout) and Keras 3's
`.weights.h5`.

HDF5 can make a dataset's values come from elsewhere: soft and external links and virtual
datasets name other objects or files, external storage reads raw files (/etc/passwd as a bias),
and a dataset declared but never written reads as its fill value, any size from nothing. So
every object is reached through hard links only, and a dataset is described (`FileTensor`) only
if its layout is compact, contiguous or chunked inside the file, fully written, and its dtype
numeric, and its chunks (which are decompressed whole) no larger than needed; its values are
read when asked.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import h5py
import numpy as np

from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.file_tensors import FileTensor, untrusted

MAX_NAMES_BYTES = 2**20  # the `layer_names` / `weight_names` attributes: VGG19 needs about 1 kB
MAX_CHUNK = 2**20  # elements; a chunk may exceed its dataset (h5py rounds up), not by gigabytes
NUMERIC_KINDS = "fiubc"  # compound, string, vlen, reference and opaque dtypes are refused


@contextlib.contextmanager
def open_keras(path: str) -> Iterator[dict[str, FileTensor]]:
    """Keras weights as '{layer}/kernel' and '{layer}/bias' (Conv2D and Dense list the kernel
    first, then the bias), from either layout Keras writes; the tensors are read while open."""
    with h5py.File(path, "r") as file:
        try:
            tensors = keras_tensors(file)
        except WeightsError as error:
            raise WeightsError(f"{path}: {error}") from None
        yield tensors


def keras_tensors(file: h5py.File) -> dict[str, FileTensor]:
    group = child(file, "model_weights") if has_link(file, "model_weights") else file  # a whole saved model
    if "layer_names" in group.attrs:
        layers = legacy_keras_layers(group)
    elif has_link(group, "layers"):
        layers = keras3_layers(child(group, "layers"))
    else:
        raise WeightsError("an HDF5 file but not a Keras weight file")
    tensors = {}
    for name, datasets in layers.items():
        labels = ("kernel", "bias") if len(datasets) == 2 else [str(i) for i in range(len(datasets))]
        tensors.update({f"{name}/{label}": dataset_tensor(dataset) for label, dataset in zip(labels, datasets)})
    return tensors


def legacy_keras_layers(group: h5py.Group) -> dict[str, list[h5py.Dataset]]:
    """keras.applications' downloads (Keras 2): `layer_names`, each layer's `weight_names` in order."""
    layers = {}
    for name in names_attribute(group, "layer_names"):
        layer = child(group, name)
        layers[name] = [child(layer, weight) for weight in names_attribute(layer, "weight_names")]
    return layers


def keras3_layers(group: h5py.Group) -> dict[str, list[h5py.Dataset]]:
    """Keras 3's `.weights.h5`: `layers/<class name>/vars/<i>`, the layer's name in an attribute."""
    layers = {}
    for key in group.keys():  # link names only: nothing is opened yet
        layer = child(group, key)
        if has_link(layer, "vars"):
            variables = child(layer, "vars")
            name = variables.attrs["name"] if "name" in variables.attrs else key
            layers[as_str(name)] = [child(variables, str(i)) for i in range(len(variables))]
    return layers


def has_link(group, name: str) -> bool:
    """Whether `group` has a link `name`, without following it (`name in group` would)."""
    return isinstance(group, h5py.Group) and group.get(name, getlink=True) is not None


def child(group, path: str):
    """`group[path]`, following hard links only: a soft or external link can lead to another file."""
    node = group
    for part in as_str(path).split("/"):
        if not part:
            continue
        link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
        if link is None:
            raise WeightsError(f"{untrusted(path)} is not in the file")
        if not isinstance(link, h5py.HardLink):
            raise WeightsError(f"{untrusted(node.name + '/' + part)} is a link ({type(link).__name__}) that HDF5 "
                               "would follow elsewhere; only hard links inside the file are followed")
        node = node[part]
    return node


def names_attribute(group: h5py.Group, attribute: str) -> list[str]:
    header = group.attrs.get_id(attribute)
    size = math.prod(header.shape or ()) * header.dtype.itemsize
    if size > MAX_NAMES_BYTES:
        raise WeightsError(f"the {attribute} of {untrusted(group.name)} takes {size} bytes, "
                           f"more than {MAX_NAMES_BYTES}")
    return [as_str(name) for name in np.atleast_1d(group.attrs[attribute])]


def written_in_full(dataset: h5py.Dataset, layout: int) -> bool:
    """Whether the file holds all of the dataset's values (unwritten parts read as fill values)."""
    if layout == h5py.h5d.COMPACT:
        return True
    if layout == h5py.h5d.CONTIGUOUS:
        return dataset.size == 0 or dataset.id.get_storage_size() == dataset.size * dataset.dtype.itemsize
    chunks = math.prod(-(-extent // chunk) for extent, chunk in zip(dataset.shape, dataset.chunks))
    return dataset.id.get_num_chunks() == chunks


def dataset_tensor(dataset) -> FileTensor:
    """The dataset, described, if its values come from this file and are numbers."""
    if not isinstance(dataset, h5py.Dataset):
        raise WeightsError(f"{untrusted(dataset.name)} is not a dataset")
    where = f"dataset {untrusted(dataset.name)}"
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise WeightsError(f"{where} is virtual (its values come from other datasets or files)")
    if plist.get_external_count():
        raise WeightsError(f"{where} keeps its values in external files")
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise WeightsError(f"{where} has an unknown storage layout {layout}")
    dtype = dataset.dtype
    if dtype.kind not in NUMERIC_KINDS or dtype.fields or dtype.subdtype or h5py.check_dtype(ref=dtype):
        raise WeightsError(f"{where} has dtype {untrusted(str(dtype))}, not numbers")
    if layout == h5py.h5d.CHUNKED and math.prod(dataset.chunks) > max(dataset.size, MAX_CHUNK):
        raise WeightsError(f"{where} has chunks of {dataset.chunks} for a {dataset.shape} dataset: reading "
                           "it would decompress a whole chunk")
    if not written_in_full(dataset, layout):
        raise WeightsError(f"{where} is declared {dataset.shape} but not all written: its values would "
                           "be fill values made from nothing")
    return FileTensor(tuple(dataset.shape), dtype, lambda: dataset[()])


def as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
