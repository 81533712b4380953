"""torch.save files (.pth) read without torch and without running code from the file.

torch.load runs whatever callable a pickle names; `TorchUnpickler` accepts only tensors,
parameters, ordered dicts and storage types, and hands the pickle harmless stand-ins. Both
torch.save formats are read: the zip archive (torch >= 1.6) and the legacy pickle sequence that
torchvision's VGG downloads use.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from vgg_jax.weights.errors import WeightsError


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
