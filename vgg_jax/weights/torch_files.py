"""torch.save files (.pth) read without torch and without running code from the file.

torch.load runs whatever callable a pickle names; `TorchUnpickler` accepts only tensors,
parameters, ordered dicts and storage types, and hands the pickle stand-ins that take no state
(pickle's BUILD is refused). Every pickle is first bounded by `pickle_check` (size, memo, depth,
dict keys). A tensor is then only described (`FileTensor`): its storage type names its dtype,
its strides must be dense (no zeros, overlaps or gaps) and its bytes must lie inside its storage
and the file; they are read when asked, and only they. A zip's central directory is bounded
before zipfile reads it, and its entries must be stored as torch.save writes them, not
compressed (zipfile inflates bzip2 and lzma without a limit). Both
torch.save formats are read: the zip archive (torch >= 1.6) and the legacy pickle sequence that
torchvision's VGG downloads use.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import math
import os
import pickle
import zipfile
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np

from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.file_tensors import FileTensor, untrusted
from vgg_jax.weights.pickle_check import check_pickle, MAX_PICKLE_BYTES

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's format before torch 1.6 (a pickle sequence)
MAX_DIMS = 8
MAX_CENTRAL_DIRECTORY = 2**20  # bytes; a VGG state dict's is about 4 kB, a training checkpoint's tens of kB


class StandIn:
    """Base of what the unpickler hands the pickle. pickle's BUILD opcode would write the
    pickle's choice of attributes into an instance (a frozen dataclass does not stop it);
    __setstate__ is what BUILD calls, so it refuses."""

    def __setstate__(self, state):
        raise WeightsError(f"refusing to load: the pickle sets the state of a {type(self).__name__}, "
                           "which torch.save never does")


@dataclasses.dataclass(frozen=True)
class StorageRef(StandIn):
    key: str
    type_name: str  # a key of STORAGE_DTYPES, the only source of the storage's dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef(StandIn):
    """A tensor as the pickle describes it; its bytes are read once the pickle is parsed."""

    storage: StorageRef
    offset: int
    size: tuple
    stride: tuple


def is_index(value) -> bool:
    return type(value) is int and value >= 0


def rebuild_tensor(storage, offset, size, stride, *_unused) -> TensorRef:
    """Stands in for torch._utils._rebuild_tensor(_v2) (the rest: requires_grad, hooks, metadata)."""
    if not (isinstance(storage, StorageRef) and is_index(offset) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_DIMS
            and all(map(is_index, size)) and all(type(step) is int for step in stride)):
        raise WeightsError(f"malformed tensor record in the pickle: {untrusted((offset, size, stride))}")
    return TensorRef(storage, offset, size, stride)


def rebuild_parameter(data, *_unused):
    """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    return data


def ordered_dict(*args):
    """Stands in for collections.OrderedDict: torch.save builds one empty, then fills it; Python
    2's pickles pass a list of [key, value] pairs, whose keys must be strings (cheap to hash)."""
    if not args:
        return collections.OrderedDict()
    if len(args) == 1 and isinstance(args[0], list) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) for pair in args[0]):
        return collections.OrderedDict(args[0])
    raise WeightsError("refusing to load: the pickle builds an OrderedDict from other than string-keyed pairs")


class TorchUnpickler(pickle.Unpickler):
    """Unpickles a state dict into TensorRefs; refuses every global that is not on the allow-list.

    torch.load runs whatever callable the pickle names (os.system included); this reader only
    ever hands the pickle the harmless stand-ins below.
    """

    ALLOWED = {
        ("collections", "OrderedDict"): ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,  # torch < 0.4: the same four first arguments
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
            f"refusing to load: the file's pickle references {untrusted(module)[1:-1]}.{untrusted(name)[1:-1]}, "
            "which is not a tensor or a state dict (it could run code under torch.load). "
            "Save model.state_dict() instead.")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view]): a view only in legacy files.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], str) and pid[1] in STORAGE_DTYPES
                and isinstance(pid[2], str) and is_index(pid[4])):
            raise WeightsError(f"unsupported storage record {untrusted(pid)}")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError("storage views (torch < 0.4 files) are not supported")
        ref = StorageRef(pid[2], pid[1], pid[4])
        self.storages[ref.key] = ref
        return ref


def load_pickle(file) -> tuple[Any, TorchUnpickler]:
    """The pickle at the file's position, after `check_pickle` bounds it, and its unpickler (for
    the storages it met); the file is left just past it (legacy files hold several in a row)."""
    start = file.tell()
    data = file.read(MAX_PICKLE_BYTES + 1)
    end = check_pickle(data)
    file.seek(start + end)
    unpickler = TorchUnpickler(io.BytesIO(data[:end]))
    return unpickler.load(), unpickler


def dense_axes(size: tuple, stride: tuple) -> list[int] | None:
    """The axes from outermost to innermost if the strides lay the tensor's elements out once
    each, consecutively (torch's "non-overlapping and dense", as saved parameters are); None
    for a stride of 0, overlapping or negative strides, or gaps."""
    moving = sorted((axis for axis in range(len(size)) if size[axis] != 1), key=lambda axis: stride[axis])
    step = 1
    for axis in moving:
        if stride[axis] != step:
            return None
        step *= size[axis]
    return [axis for axis in range(len(size)) if size[axis] == 1] + moving[::-1]


@dataclasses.dataclass(frozen=True)
class Storage:
    """Where a storage's bytes lie in the file: `read(start, count)` returns exactly those bytes."""

    nbytes: int  # what the file holds for it
    read: Callable[[int, int], bytes]


def file_tensor(key: str, ref: TensorRef, storage: Storage | None, little_endian: bool) -> FileTensor:
    """The tensor `ref` describes, checked against its storage in bytes before anything is read."""
    def refuse(reason):
        return WeightsError(f"{untrusted(key)}: {reason}")

    if storage is None:
        raise refuse(f"its storage {untrusted(ref.storage.key)} is not in the file")
    dtype = np.dtype(STORAGE_DTYPES[ref.storage.type_name])
    dtype = dtype if little_endian else dtype.newbyteorder(">")
    numel = math.prod(ref.size)
    axes = list(range(len(ref.size))) if numel == 0 else dense_axes(ref.size, ref.stride)
    if axes is None:
        raise refuse(f"strides {untrusted(ref.stride)} for size {untrusted(ref.size)} repeat or skip elements "
                     "(a stride of 0, overlapping or gapped); saved tensors are dense")
    start, nbytes = ref.offset * dtype.itemsize, numel * dtype.itemsize
    if ref.offset + numel > ref.storage.numel or start + nbytes > storage.nbytes:
        raise refuse(f"{numel} elements from offset {ref.offset} reach past its storage "
                     f"({ref.storage.numel} declared, {storage.nbytes // dtype.itemsize} in the file)")
    layout = [ref.size[axis] for axis in axes]

    def read() -> np.ndarray:
        data = storage.read(start, nbytes)
        if len(data) != nbytes:
            raise EOFError(f"{untrusted(key)}: the file ends inside its storage")
        return np.frombuffer(data, dtype).reshape(layout).transpose(np.argsort(axes))

    return FileTensor(tuple(ref.size), dtype, read)


def zip_storages(archive: zipfile.ZipFile, prefix: str, refs: dict[str, StorageRef]) -> dict[str, Storage]:
    """Each storage's zip entry, which must hold exactly the bytes the pickle declares (as
    torch.save writes it)."""
    storages, names = {}, set(archive.namelist())
    for key, ref in refs.items():
        if f"{prefix}data/{key}" not in names:
            continue
        info = archive.getinfo(f"{prefix}data/{key}")
        expected = ref.numel * np.dtype(STORAGE_DTYPES[ref.type_name]).itemsize
        if info.file_size != expected:
            raise WeightsError(f"storage {untrusted(key)}: its zip entry holds {info.file_size} bytes, "
                               f"the pickle declares {expected}")

        def read(start, count, info=info):
            with archive.open(info) as entry:
                entry.seek(start)
                return entry.read(count)
        storages[key] = Storage(info.file_size, read)
    return storages


def open_zip(path: str) -> zipfile.ZipFile:
    """The archive, once its central directory is known to be small: zipfile reads it whole and
    builds a Python object of about 600 bytes per 46-byte entry (a 120 MB file of a million
    empty entries took 600 MB more)."""
    with open(path, "rb") as file:
        end = zipfile._EndRecData(file)  # the end record (zip64 too) that ZipFile itself reads first
    if end[zipfile._ECD_SIZE] > MAX_CENTRAL_DIRECTORY:
        raise WeightsError(f"refusing the zip: its central directory is {end[zipfile._ECD_SIZE]} bytes, "
                           f"more than {MAX_CENTRAL_DIRECTORY}")
    return zipfile.ZipFile(path)


def refuse_compressed(archive: zipfile.ZipFile) -> None:
    """torch.save stores every entry as is. zipfile inflates a bzip2 or lzma entry whole and only
    then cuts it to its declared size, so the CRC still passes (a 3 kB `byteorder` entry took
    6.6 GB): no compressed or encrypted entry is opened, whatever it holds."""
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise WeightsError(f"refusing the zip: its entry {untrusted(info.filename)} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
            raise WeightsError(f"refusing the zip: its entry {untrusted(info.filename)} is compressed ({method}); "
                               "torch.save stores every entry as is")


def zip_contents(archive: zipfile.ZipFile) -> tuple[Any, dict[str, Storage], bool]:
    """torch.save's zip: <prefix>/data.pkl with storages in <prefix>/data/<key>."""
    refuse_compressed(archive)
    pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
    if not pickles:
        raise WeightsError("a zip file but not a torch.save archive (no data.pkl)")
    if pickles[0].file_size > MAX_PICKLE_BYTES:
        raise WeightsError(f"refusing the pickle: {pickles[0].file_size} bytes, more than {MAX_PICKLE_BYTES}")
    prefix = pickles[0].filename[: -len("data.pkl")]
    with archive.open(pickles[0]) as file:
        contents, unpickler = load_pickle(io.BytesIO(file.read(MAX_PICKLE_BYTES + 1)))
    order = f"{prefix}byteorder"
    little = order not in archive.namelist() or archive.open(order).read(16).strip() == b"little"
    return contents, zip_storages(archive, prefix, unpickler.storages), little


def legacy_contents(file) -> tuple[Any, dict[str, Storage], bool]:
    """The pre-1.6 format (torchvision's VGG downloads): magic, protocol, sys info, the state
    dict pickle, the list of storage keys, then per key an int64 element count and the bytes."""
    try:
        magic = load_pickle(file)[0]
    except WeightsError as error:
        raise WeightsError(f"not a torch, safetensors or Keras weight file ({error})") from None
    if magic != LEGACY_MAGIC:
        raise WeightsError("not a torch.save file")
    load_pickle(file)  # protocol version
    info = load_pickle(file)[0]
    little = info.get("little_endian", True) if isinstance(info, dict) else True
    contents, unpickler = load_pickle(file)
    keys = load_pickle(file)[0]
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise WeightsError("the legacy storage list is not a list of keys")
    file_size = os.fstat(file.fileno()).st_size
    storages = {}
    for key in keys:
        if key not in unpickler.storages:
            raise WeightsError(f"storage {untrusted(key)} is in the file but no tensor names it")
        numel = int.from_bytes(file.read(8), "little" if little else "big", signed=True)
        start = file.tell()
        nbytes = numel * np.dtype(STORAGE_DTYPES[unpickler.storages[key].type_name]).itemsize
        if numel < 0 or start + nbytes > file_size:
            raise EOFError(f"storage {untrusted(key)}: {numel} elements run past the end of the file")

        def read(offset, count, start=start):
            file.seek(start + offset)
            return file.read(count)
        storages[key] = Storage(nbytes, read)
        file.seek(start + nbytes)
    return contents, storages, little


def state_dict_tensors(contents, storages: dict[str, Storage], little_endian: bool) -> dict[str, FileTensor]:
    """The state dict's tensors (a checkpoint's `{'state_dict': ...}` unwrapped), described."""
    if isinstance(contents, dict) and "state_dict" in contents:
        contents = contents["state_dict"]
    if not isinstance(contents, dict):
        raise WeightsError(f"holds a {type(contents).__name__}, not a state dict")
    not_keys = [key for key in contents if not isinstance(key, str)]
    if not_keys:
        raise WeightsError(f"state dict keys that are not strings: {untrusted(not_keys)}")
    not_tensors = [key for key, value in contents.items() if not isinstance(value, TensorRef)]
    if not_tensors:
        raise WeightsError(f"state dict entries that are not tensors: {untrusted(not_tensors)}")
    return {key: file_tensor(key, ref, storages.get(ref.storage.key), little_endian)
            for key, ref in contents.items()}


@contextlib.contextmanager
def open_torch(path: str) -> Iterator[dict[str, FileTensor]]:
    """A torch state dict (zip or legacy format), described; the tensors are read while open."""
    with contextlib.ExitStack() as stack:
        try:
            if zipfile.is_zipfile(path):
                contents, storages, little = zip_contents(stack.enter_context(open_zip(path)))
            else:
                contents, storages, little = legacy_contents(stack.enter_context(open(path, "rb")))
            tensors = state_dict_tensors(contents, storages, little)
        except WeightsError as error:
            raise WeightsError(f"{path}: {error}") from None
        yield tensors
