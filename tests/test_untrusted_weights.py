"""Weight files crafted as an attacker would: each must be refused by `python -m vgg_jax.weights
import` with one `error:` line naming the file, the key and the reason, nothing written at
--out, and no more memory than a ceiling above a clean import (so a regression fails here
instead of exhausting the machine).

Every file is built here: torch.save pickles written opcode by opcode (torch.load checks that
the writer matches torch's format), zip archives (by hand where an entry must lie about its
size), compression bombs built by repetition, HDF5 files with h5py, and safetensors headers.
"""

import bz2
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import h5py
import numpy as np
import pytest

from vgg_jax.weights import pickle_check
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.pickle_check import MAX_DEPTH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torchvision's vgg11 `features` indices of its 8 convs and their (out, in) channels.
VGG11_CONVS = {0: (64, 3), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512),
               16: (512, 512), 18: (512, 512)}
# Keras' VGG16 convs (no top): (block, conv) -> (in, out).
KERAS_VGG16_CONVS = {(1, 1): (3, 64), (1, 2): (64, 64), (2, 1): (64, 128), (2, 2): (128, 128),
                     (3, 1): (128, 256), (3, 2): (256, 256), (3, 3): (256, 256), (4, 1): (256, 512),
                     (4, 2): (512, 512), (4, 3): (512, 512), (5, 1): (512, 512), (5, 2): (512, 512),
                     (5, 3): (512, 512)}
CEILING = 512 * 2**20  # address space allowed above what a clean import needed


# --- torch.save pickles, opcode by opcode ------------------------------------------------------

def unicode(text):
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(value):
    if -2**31 <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return (pickle.LONG1 + bytes([len(data)]) if len(data) < 256 else pickle.LONG4 + struct.pack("<I", len(data))) + data


def name(module, attribute):
    return pickle.GLOBAL + f"{module}\n{attribute}\n".encode()


def marked_tuple(*parts):
    return pickle.MARK + b"".join(parts) + pickle.TUPLE


def storage(type_name, key, numel, state=b""):
    """A persistent id as torch.save writes it, then optionally a BUILD giving it `state`."""
    pid = marked_tuple(unicode("storage"), name("torch", type_name), unicode(key), unicode("cpu"), integer(numel))
    return pid + pickle.BINPERSID + (state + pickle.BUILD if state else b"")


def tensor(storage_ops, offset, size, stride):
    empty_hooks = name("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    arguments = marked_tuple(storage_ops, integer(offset), marked_tuple(*map(integer, size)),
                             marked_tuple(*map(integer, stride)), pickle.NEWFALSE, empty_hooks)
    return name("torch._utils", "_rebuild_tensor_v2") + arguments + pickle.REDUCE


def state_dict(entries):
    """An OrderedDict pickle of `key -> tensor opcodes`, protocol 2 as torch.save."""
    items = b"".join(unicode(key) + value for key, value in entries.items())
    return (pickle.PROTO + b"\x02" + name("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.MARK + items + pickle.SETITEMS + pickle.STOP)


def contiguous(size):
    strides, step = [], 1
    for extent in reversed(size):
        strides.insert(0, step)
        step *= extent
    return tuple(strides)


def vgg11_filler():
    """vgg11's features, every tensor a dense prefix of one shared float16 storage of zeros:
    a valid file of 4.7 MB, so that each attack below is the only thing wrong with its file."""
    entries = {}
    for index, (out, inputs) in VGG11_CONVS.items():
        for suffix, size in (("weight", (out, inputs, 3, 3)), ("bias", (out,))):
            entries[f"features.{index}.{suffix}"] = tensor(storage("HalfStorage", "filler", 512 * 512 * 9), 0,
                                                           size, contiguous(size))
    return entries, {"filler": bytes(2 * 512 * 512 * 9)}


def write_zip_pth(path, pickle_bytes, storages):
    """torch.save's zip layout (storages stored, not deflated, as torch writes them)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def deflated_zeros_entry(archive_path, key, nbytes):
    """Appends `nbytes` of zeros as a deflated storage entry (a zip bomb: about 1000:1)."""
    with zipfile.ZipFile(archive_path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(f"archive/data/{key}", "w", force_zip64=True) as entry:
            for start in range(0, nbytes, 2**24):
                entry.write(bytes(min(2**24, nbytes - start)))


def torch_attack(path, replace, extra_storages=None, bomb=None):
    """vgg11_filler with the entries of `replace` swapped in (and their storages added)."""
    entries, storages = vgg11_filler()
    entries.update(replace)
    write_zip_pth(path, state_dict(entries), {**storages, **(extra_storages or {})})
    if bomb:
        deflated_zeros_entry(path, *bomb)
    return path


def with_empty_entries(path, count):
    """The filler file with `count` empty entries more: 46 bytes and a name each in the central
    directory, which zipfile turns into a Python object of about 600 bytes each."""
    torch_attack(path, {})
    with zipfile.ZipFile(path, "a") as archive:
        for index in range(count):
            archive.writestr(f"archive/extra/{index}", b"")
    return path


def legacy_pth(path, entries, storages):
    """torch.save's legacy format: magic, protocol, system info and state dict pickles, the
    storage keys, then per storage an int64 element count and its bytes (`storages`: key ->
    (count written, bytes))."""
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            file.write(pickle.dumps(header, protocol=2))
        file.write(state_dict(entries))
        file.write(pickle.dumps(list(storages), protocol=2))
        for count, data in storages.values():
            file.write(struct.pack("<q", count) + data)
    return path


def nested_through_parameters(levels):
    """x = (); then x = _rebuild_parameter(((x,),)), which is (x,): one level deeper each time,
    behind a call whose result the pickle check cannot see into."""
    ops = pickle.EMPTY_TUPLE + pickle.BINPUT + bytes([0])
    for level in range(levels):
        ops += (pickle.POP + name("torch._utils", "_rebuild_parameter") + pickle.BINGET + bytes([level % 2])
                + pickle.TUPLE1 + pickle.TUPLE1 + pickle.REDUCE + pickle.BINPUT + bytes([(level + 1) % 2]))
    return ops


def raw_pickle(path, body):
    """A zip .pth whose data.pkl is `body` (protocol 2 header and STOP added)."""
    entries, storages = vgg11_filler()
    return write_zip_pth(path, pickle.PROTO + b"\x02" + body + pickle.STOP, storages)


def shared_tuples(depth):
    """t0 = (); t(i) = (t(i-1), t(i-1)) through the memo: 2**depth leaves in about 8*depth bytes."""
    ops = pickle.EMPTY_TUPLE + pickle.BINPUT + bytes([0])
    for level in range(1, depth + 1):
        ops += pickle.POP + pickle.BINGET + bytes([level - 1]) + pickle.BINGET + bytes([level - 1]) + pickle.TUPLE2
        ops += pickle.BINPUT + bytes([level])
    return ops


# --- compression bombs: a kilobyte that inflates to gigabytes ------------------------------------

def bzip2_zeros(nbytes):
    """A bzip2 stream of `nbytes` zeros (in 32 MiB blocks) of about 40 bytes a block, built in
    0.2 s where compressing 1 GiB takes 6: one block is compressed, then repeated bit by bit (bzip2
    blocks are not byte-aligned) with the stream's CRC recombined from the blocks' as bzip2 does."""
    one = bz2.compress(bytes(2**25))
    bits, total = int.from_bytes(one, "big"), 8 * len(one)

    def field(start, length):  # bits [start, start + length) of the one-block stream
        return (bits >> (total - start - length)) & ((1 << length) - 1)
    end_magic = 0x177245385090  # the end of stream: this, the stream's CRC, padding to a byte
    end = next(total - 80 - pad for pad in range(8) if field(total - 80 - pad, 48) == end_magic)
    block, block_bits, block_crc = field(32, end - 32), end - 32, field(80, 32)
    blocks = -(-nbytes // 2**25)
    stream, combined = field(0, 32), 0  # the header, "BZh9"
    for _ in range(blocks):
        stream = stream << block_bits | block
        combined = ((combined << 1 | combined >> 31) & 0xFFFFFFFF) ^ block_crc
    length = 32 + blocks * block_bits + 80
    stream = ((stream << 48 | end_magic) << 32 | combined) << (-length % 8)
    return stream.to_bytes((length + 7) // 8, "big")


def zlib_zeros(nbytes):
    """A zlib stream of `nbytes` zeros (whole MiBs) at deflate's limit of about 1:1000: one MiB
    compressed and fully flushed (byte-aligned, referring to nothing before it), repeated, then an
    empty final block and the Adler-32 of zeros."""
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler32 = (nbytes % 65521) << 16 | 1
    return first[:2] + first[2:] * (nbytes // 2**20) + b"\x03\x00" + adler32.to_bytes(4, "big")


def handmade_zip(path, entries):
    """A zip written byte by byte from (name, method, stored bytes, declared size, declared CRC)
    records, so that an entry can hold a compressed stream far longer than it declares."""
    local, central = b"", b""
    for name, method, data, size, crc in entries:
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(local))
        central += name.encode()
        local += b"PK\x03\x04" + fields + name.encode() + data
    end = struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    with open(path, "wb") as file:
        file.write(local + central + b"PK\x05\x06" + end)
    return path


def bzip2_bomb_pth(path, entry, nbytes=2**30):
    """The filler .pth with `entry` a bzip2 stream of `nbytes` zeros declaring 16 bytes (and the
    CRC of 16 zeros): zipfile inflates bzip2 and lzma without a limit and only then trims to the
    declared size, so the CRC passes; torch.save stores every entry."""
    entries, storages = vgg11_filler()
    contents = {"archive/data.pkl": state_dict(entries), "archive/byteorder": b"little", "archive/version": b"3\n",
                **{f"archive/data/{key}": data for key, data in storages.items()}}
    return handmade_zip(path, [(name, 12, bzip2_zeros(nbytes), 16, zlib.crc32(bytes(16))) if name == entry
                               else (name, 0, data, len(data), zlib.crc32(data)) for name, data in contents.items()])


def lzma_version_pth(path):
    """The filler .pth with its `version` entry compressed by zipfile's LZMA."""
    torch_attack(path, {})
    with zipfile.ZipFile(path) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data, zipfile.ZIP_LZMA if name.endswith("/version") else zipfile.ZIP_STORED)
    return path


def float32_storage(values):
    return np.asarray(values, "<f4").tobytes()


BIAS = "features.0.bias"
TORCH_ATTACKS = {
    # name: (builder(path), a regex the error line must match after the file and key)
    # 2 elements of 64 bytes: offset 1 skipped a row, stride 2 ran 63 rows on, into the heap
    "BUILD sets a storage's dtype (heap read)": (
        lambda path: torch_attack(path, {BIAS: tensor(storage("ByteStorage", "b", 2, state=(
            pickle.EMPTY_DICT + unicode("dtype") + unicode("(64,)u1") + pickle.SETITEM)), 1, (64,), (2,))},
            {"b": bytes(128)}),
        r"sets the state of a StorageRef"),
    "stride 0 declared (64, 3, 10000, 10000)": (
        lambda path: torch_attack(path, {"features.0.weight": tensor(storage("FloatStorage", "w", 1), 0,
                                                                      (64, 3, 10000, 10000), (0, 0, 0, 0))},
                                  {"w": bytes(4)}),
        r"'features\.0\.weight': strides \(0, 0, 0, 0\) .* repeat or skip elements"),
    "overlapping strides": (
        lambda path: torch_attack(path, {"features.0.weight": tensor(storage("FloatStorage", "w", 64 * 27), 0,
                                                                      (64, 3, 3, 3), (1, 1, 1, 1))},
                                  {"w": bytes(4 * 64 * 27)}),
        r"'features\.0\.weight': strides \(1, 1, 1, 1\) .* repeat or skip elements"),
    "zip bomb behind a 64-element storage": (
        lambda path: torch_attack(path, {BIAS: tensor(storage("FloatStorage", "bomb", 64), 0, (64,), (1,))},
                                  bomb=("bomb", 2**28)),
        r"refusing the zip: its entry 'archive/data/bomb' is compressed \(deflate\); torch\.save stores "),
    "wrong shape, 768 MB compressed into the file": (
        lambda path: torch_attack(path, {"features.0.weight": tensor(
            storage("FloatStorage", "big", 64 * 3 * 1000 * 1000), 0, (64, 3, 1000, 1000),
            contiguous((64, 3, 1000, 1000)))}, bomb=("big", 4 * 64 * 3 * 1000 * 1000)),
        r"its entry 'archive/data/big' is compressed \(deflate\)"),
    "bzip2 byteorder inflating to 1 GiB": (
        lambda path: bzip2_bomb_pth(path, "archive/byteorder"),
        r"refusing the zip: its entry 'archive/byteorder' is compressed \(bzip2\); torch\.save stores "),
    "bzip2 data.pkl inflating to 1 GiB": (
        lambda path: bzip2_bomb_pth(path, "archive/data.pkl"), r"its entry 'archive/data\.pkl' is compressed \(bzip2\)"),
    "lzma version entry": (lzma_version_pth, r"its entry 'archive/version' is compressed \(lzma\)"),
    "NaN and infinity in a bias": (
        lambda path: torch_attack(path, {BIAS: tensor(storage("FloatStorage", "b", 64), 0, (64,), (1,))},
                                  {"b": float32_storage([np.nan, -np.inf] + [0] * 62)}),
        r"features\.0\.bias: 2 of its 64 values are NaN or infinite"),
    "classifier.6.bias without classifier.6.weight": (
        lambda path: torch_attack(path, {"classifier.6.bias": tensor(storage("FloatStorage", "b", 1000), 0, (1000,),
                                                                     (1,))}, {"b": bytes(4000)}),
        r"missing keys \[.*'classifier\.6\.weight'\]"),
    "a 3.8 MB int as a tensor offset": (
        lambda path: torch_attack(path, {BIAS: tensor(storage("FloatStorage", "b", 64), 2**(8 * 3_800_000), (64,),
                                                      (1,))}, {"b": bytes(256)}),
        r"refusing the pickle at byte \d+: an int of 30400001 bits, more than 256"),
    "a central directory of 30,000 empty entries": (
        lambda path: with_empty_entries(path, 30_000),
        r"refusing the zip: its central directory is \d+ bytes, more than 1048576"),
    "legacy storage count past the end of the file": (
        lambda path: legacy_pth(path, {BIAS: tensor(storage("FloatStorage", "b", 64), 0, (64,), (1,))},
                                {"b": (2**40, bytes(256))}),
        r"cannot read .*: EOFError: storage 'b': 1099511627776 elements run past the end of the file"),
    "int64 tensor": (
        lambda path: torch_attack(path, {BIAS: tensor(storage("LongStorage", "i", 64), 0, (64,), (1,))},
                                  {"i": bytes(8 * 64)}),
        r"features\.0\.bias: a int64 tensor; weights must be floating point"),
    "0-d classifier.0.weight": (
        lambda path: torch_attack(path, {"classifier.0.weight": tensor(storage("FloatStorage", "s", 1), 0, (), ())},
                                  {"s": bytes(4)}),
        r"classifier\.0\.weight \(\): a 0-d tensor, not a linear or conv weight"),
    "shared tuples as a dict key (hash)": (
        lambda path: raw_pickle(path, pickle.EMPTY_DICT + shared_tuples(MAX_DEPTH - 2) + pickle.NONE + pickle.SETITEM),
        r"refusing the pickle at byte \d+: a dict key or set item that is a container"),
    "a million nested tuples as a dict key": (  # hashing it recursed in C until the stack overflowed
        lambda path: raw_pickle(path, pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 10**6
                                + pickle.NONE + pickle.SETITEM),
        rf"refusing the pickle at byte \d+: values nested more than {MAX_DEPTH} deep"),
    "nesting behind _rebuild_parameter calls": (
        lambda path: raw_pickle(path, nested_through_parameters(100)),
        rf"refusing the pickle at byte \d+: values nested more than {MAX_DEPTH} deep"),
    "a million empty sets": (
        lambda path: raw_pickle(path, pickle.MARK + pickle.EMPTY_SET * 10**6 + pickle.LIST),
        r"refusing the pickle at byte \d+: more than \d+ values or 65536 containers"),
    "LONG_BINPUT 2**27": (
        lambda path: raw_pickle(path, pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 2**27)),
        r"refusing the pickle at byte 3: memo index 134217728 skips ahead"),
    "persistent id with a 2**30-leaf repr": (
        lambda path: raw_pickle(path, shared_tuples(MAX_DEPTH - 2) + pickle.BINPERSID),
        r"unsupported storage record [(). ,]{10,100}$"),
}


# --- HDF5 (Keras) ------------------------------------------------------------------------------

def sparse_zeros(group, name, shape):
    """A contiguous float32 dataset of zeros, as Keras writes one, whose file space is allocated
    but never written: a hole in a sparse file, so the 59 MB filler below takes no disk."""
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    group.create_dataset(name, shape, "f4", dcpl=plist)


def keras_vgg16(path, replace):
    """Keras 2's layout of VGG16 without top, every dataset contiguous zeros (a valid file);
    `replace[(layer, leaf)](group, dataset name, shape)` writes one dataset its own way."""
    with h5py.File(path, "w") as file:
        layers = [f"block{block}_conv{conv}" for block, conv in KERAS_VGG16_CONVS]
        file.attrs["layer_names"] = [layer.encode() for layer in layers]
        for layer, (inputs, out) in zip(layers, KERAS_VGG16_CONVS.values()):
            group = file.create_group(layer)
            names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            group.attrs["weight_names"] = [weight.encode() for weight in names]
            for leaf, weight, shape in zip(("kernel", "bias"), names, [(3, 3, inputs, out), (out,)]):
                if (layer, leaf) in replace:
                    replace[layer, leaf](group, weight, shape)
                else:
                    sparse_zeros(group, weight, shape)
    return path


def keras_aliases(path, aliases, copies=0):
    """The filler with `aliases` more layer names, each a hard link to block1_conv1's group, and
    with `copies` > 0 that group's weight_names `copies` times "w", a hard link to its bias (one
    byte each: 50,000 fit in the 64 kB an HDF5 attribute may take)."""
    keras_vgg16(path, {})
    with h5py.File(path, "a") as file:
        file.attrs["layer_names"] = [name.encode() for name in [*file.attrs["layer_names"], *aliases]]
        for alias in aliases:
            file[alias] = file["block1_conv1"]
        if copies:
            file["block1_conv1/w"] = file["block1_conv1/block1_conv1/bias:0"]
            file["block1_conv1"].attrs["weight_names"] = np.array([b"w"] * copies)
    return path


def one_raw_chunk(data, **filters):
    """A bias stored chunked through `filters`, its one chunk the raw bytes `data` (written
    past HDF5's filters, as a crafted file would hold them)."""
    def write(group, name, shape, raw, other):
        dataset = group.create_dataset(name, shape, "f4", chunks=shape, **filters)
        dataset.id.write_direct_chunk((0,), data)
    return write


def secrets(directory):
    """A raw file and an HDF5 file of this machine that no weight file may read."""
    raw, other = os.path.join(directory, "secret.bin"), os.path.join(directory, "secret.h5")
    with open(raw, "wb") as file:
        file.write(b"SECRET!!" * 32)
    with h5py.File(other, "w") as file:
        file["secret"] = np.full(64, 7.0, np.float32)
    return raw, other


def keras_attack(replace_bias=None, replace_kernel=None):
    def build(path):
        raw, other = secrets(os.path.dirname(path))
        replace = {}
        if replace_bias:
            replace["block1_conv1", "bias"] = lambda group, name, shape: replace_bias(group, name, shape, raw, other)
        if replace_kernel:
            replace["block1_conv1", "kernel"] = replace_kernel
        return keras_vgg16(path, replace)
    return build


def virtual(group, name, shape, raw, other):
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[:] = h5py.VirtualSource(other, "secret", shape=shape)
    group.create_virtual_dataset(name, layout)


def external_link(group, name, shape, raw, other):
    group[name] = h5py.ExternalLink(other, "/secret")


DATASET = r"dataset '/block1_conv1/block1_conv1/{}:0'"
KERAS_ATTACKS = {
    "external storage (a raw local file)": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, shape, "f4", external=[(raw, 0, 256)])),
        DATASET.format("bias") + " keeps its values in external files"),
    "external link (another HDF5 file)": (
        keras_attack(external_link),
        r"'/block1_conv1/block1_conv1/bias:0' is a link \(ExternalLink\)"),
    "virtual dataset (another HDF5 file)": (
        keras_attack(virtual), DATASET.format("bias") + " is virtual"),
    "chunked 1 GiB, never written": (
        keras_attack(replace_kernel=lambda group, name, shape: group.create_dataset(
            name, (2**18, 2**10), "f4", chunks=(2**10, 2**10))),
        DATASET.format("kernel") + r" is declared \(262144, 1024\) but not all written"),
    "a 1 GiB chunk around a 64-element bias": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, data=np.zeros(shape, np.float32), maxshape=(None,), chunks=(2**28,), compression="gzip",
            compression_opts=1)),
        DATASET.format("bias") + r" has chunks of \(268435456,\) for a \(64,\) dataset"),
    "compound dtype": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, shape, [("a", "f4"), ("b", "f4")])),
        DATASET.format("bias") + r" has dtype .*, not numbers"),
    "object reference dtype": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(name, shape, h5py.ref_dtype)),
        DATASET.format("bias") + r" has dtype .*, not numbers"),
    "vlen dtype": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, shape, h5py.vlen_dtype(np.float32))),
        DATASET.format("bias") + r" has dtype .*, not numbers"),
    "a gzip chunk of a 64-float bias inflating to 1 GiB": (
        keras_attack(one_raw_chunk(zlib_zeros(2**30), compression="gzip")),
        DATASET.format("bias") + r" is stored through HDF5 filters \(gzip\)"),
    "shuffle and fletcher32 filters": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, data=np.zeros(shape, np.float32), shuffle=True, fletcher32=True)),
        DATASET.format("bias") + r" is stored through HDF5 filters \(shuffle, fletcher32\)"),
    "an unknown filter id (HDF5 would search its plugin directory)": (
        keras_attack(one_raw_chunk(bytes(256), compression=40000, allow_unknown_filter=True)),
        DATASET.format("bias") + r" is stored through HDF5 filters \(unknown filter 40000\)"),
    "5,000 weight names under 20 hard-linked layer names": (
        lambda path: keras_aliases(path, [f"alias{index}" for index in range(20)], 5_000),
        r"the weight_names of '/block1_conv1' list 5000 names, more than 4"),
    "100 layer names": (
        lambda path: keras_aliases(path, [f"alias{index}" for index in range(87)]),
        r"the layer_names of '/' list 100 names, more than 64"),
    "a layer group hard-linked under a second layer name": (
        lambda path: keras_aliases(path, ["alias"]),
        r"'alias/kernel' is 'block1_conv1/kernel' under another name \(a hard link\)"),
    "complex tensor": (
        keras_attack(lambda group, name, shape, raw, other: group.create_dataset(
            name, data=np.full(shape, 1 + 2j, np.complex64))),
        r"block1_conv1/bias: a complex64 tensor; weights must be floating point"),
}


# --- safetensors --------------------------------------------------------------------------------

def safetensors_file(path, header):
    """A .safetensors file of `header` (JSON) and no data."""
    data = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(data)) + data)
    return path


SAFETENSORS_ATTACKS = {
    "an 18 MB header of 300,000 empty entries": (
        lambda path: safetensors_file(path, {f"t{index}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                                             for index in range(300_000)}),
        r"refusing the safetensors header: 1\d{7} bytes, more than 1048576"),
}
ATTACKS = {**TORCH_ATTACKS, **KERAS_ATTACKS, **SAFETENSORS_ATTACKS}
SUFFIXES = {**dict.fromkeys(KERAS_ATTACKS, ".h5"), **dict.fromkeys(SAFETENSORS_ATTACKS, ".safetensors"),
            "clean keras": ".h5"}


# --- running the importer under a memory ceiling -----------------------------------------------

DRIVER = r"""
import contextlib, io, json, os, resource, sys, time
from vgg_jax.weights import cli

def run(path, arch, out):
    err, start = io.StringIO(), time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main(["import", path, "--arch", arch, "--out", out])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    except BaseException as error:
        code, err = "raised", io.StringIO(f"{type(error).__name__}: {str(error)[:500]}")
    return {"code": code, "stderr": err.getvalue()[:2000], "wrote": os.path.exists(out),
            "seconds": round(time.perf_counter() - start, 1)}

cases = json.load(sys.stdin)
results = {name: run(*cases.pop(name)) for name in ("clean torch", "clean keras")}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
limit = int(status["VmPeak"].split()[0]) * 1024 + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results.update({name: run(*case) for name, case in cases.items()})
print(json.dumps(results))
"""


PLUGIN = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {  /* runs when HDF5 dlopen()s the library */
    const char *marker = getenv("PLUGIN_MARKER");
    if (marker) close(open(marker, O_CREAT | O_WRONLY, 0600));
}
"""


@pytest.fixture(scope="module")
def hdf5_plugin(tmp_path_factory):
    """The environment of a directory for HDF5_PLUGIN_PATH whose one library leaves a marker
    file when it is loaded (HDF5 loads every library there while it looks for an unknown
    filter), and that marker's path; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    directory = tmp_path_factory.mktemp("hdf5_plugins")
    (directory / "marker.c").write_text(PLUGIN)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(directory / "libmarker.so"), str(directory / "marker.c")],
                   check=True)
    marker = directory.parent / "plugin_loaded"
    return {"HDF5_PLUGIN_PATH": str(directory), "PLUGIN_MARKER": str(marker)}, marker


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, hdf5_plugin):
    """Every attack's import, in one subprocess whose address space is capped at CEILING above
    what the two clean imports (the filler files alone) needed (and HDF5's plugin directory is
    the marker plugin's)."""
    directory = tmp_path_factory.mktemp("untrusted")
    builders = {**{attack: build for attack, (build, _) in ATTACKS.items()},
                "clean torch": lambda path: torch_attack(path, {}), "clean keras": keras_attack()}
    cases = {}
    for number, (attack, build) in enumerate(builders.items()):
        suffix = SUFFIXES.get(attack, ".pth")
        os.makedirs(directory / str(number))
        path = str(build(str(directory / str(number) / f"weights{suffix}")))
        cases[attack] = (path, "vgg16" if suffix == ".h5" else "vgg11", str(directory / str(number) / "out"))
    environment = {**os.environ, **(hdf5_plugin[0] if hdf5_plugin else {})}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(CEILING)], input=json.dumps(cases), cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return cases, json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_filler_files_alone_import(outcomes):
    """Catches attack files that are refused for something else than their attack: without it,
    the files import (so each refusal below is the attack's)."""
    cases, results = outcomes
    for clean in ("clean torch", "clean keras"):
        assert (results[clean]["code"], results[clean]["stderr"], results[clean]["wrote"]) == (0, "", True), results[clean]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_crafted_file_is_refused_in_one_line_and_nothing_is_written(attack, outcomes):
    """Catches each attack of issues 21 and 25 getting through (an import, a traceback, a crash,
    or memory past the ceiling: MemoryError's line would not match the reason)."""
    cases, results = outcomes
    path = cases[attack][0]
    reason = ATTACKS[attack][1]
    result = results[attack]
    assert result["code"] == 1 and not result["wrote"], result
    line = result["stderr"]
    assert line.count("\n") == 1 and line.startswith("error: ") and path in line, result
    assert re.search(reason, line), line
    assert len(line) < 1000  # nothing from the file at length


@pytest.mark.slow
def test_hdf5_never_looks_for_a_plugin(outcomes, hdf5_plugin):
    """Catches an unknown filter id reaching HDF5's read, which loads every library in its
    plugin directory (code from wherever HDF5_PLUGIN_PATH or its default points) to find it."""
    if hdf5_plugin is None:
        pytest.skip("no C compiler to build the marker plugin")
    assert not hdf5_plugin[1].exists()


def test_the_hand_written_pickles_are_torch_save_files(tmp_path):
    """Catches a writer above that drifted from torch's format (then the attacks would test
    nothing torch writes): torch.load reads the filler file as the tensors it describes."""
    torch = pytest.importorskip("torch")
    state = torch.load(torch_attack(tmp_path / "filler.pth", {}), weights_only=True)
    assert list(state) == [f"features.{index}.{leaf}" for index in VGG11_CONVS for leaf in ("weight", "bias")]
    assert state["features.3.weight"].shape == (128, 64, 3, 3) and state["features.3.weight"].dtype == torch.float16
    assert not any(value.any() for value in state.values())


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("zip_format", [True, False])
def test_the_checks_accept_what_torch_save_writes(protocol, zip_format, tmp_path):
    """Catches checks that refuse honest files: every pickle protocol, both formats, a training
    checkpoint (optimizer state with int keys, a Parameter), and tensors that are transposed,
    views at an offset, float16 or bfloat16 are read as torch reads them."""
    torch = pytest.importorskip("torch")
    from vgg_jax.weights.torch_files import open_torch

    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 5, 5, generator=generator)).sum().backward()
    optimizer.step()
    state = {**net.state_dict(), "transposed": torch.randn(3, 4, generator=generator).t(),
             "view": torch.randn(10, generator=generator)[3:7], "half": torch.randn(5, generator=generator).half(),
             "bfloat16": torch.randn(5, generator=generator).bfloat16()}
    checkpoint = {"state_dict": state, "optimizer": optimizer.state_dict(), "epoch": 3,
                  "parameter": torch.nn.Parameter(torch.ones(2))}
    torch.save(checkpoint, tmp_path / "w.pth", pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    with open_torch(str(tmp_path / "w.pth")) as tensors:
        assert list(tensors) == list(state)
        for key, value in state.items():
            np.testing.assert_array_equal(tensors[key].read().astype(np.float32), value.float().numpy())


@pytest.mark.parametrize("fc6_window, classes, reason", [
    (8, 10, r"classifier\.0\.weight: a 8-wide fc6 window, wider than the 7 of a 224 px input"),
    (10**5, 10, r"a 100000-wide fc6 window"),  # a model built at that size would need 10**14 floats
    (7, 21844, r"classifier\.6\.weight: 21844 classes, more than 21843"),
])
def test_a_head_larger_than_the_architecture_is_refused_from_its_shape(fc6_window, classes, reason):
    """Catches a head sized by the file (fc6's window, fc8's classes) that is read, or that the
    model is built at, before the bound is checked: no tensor may be read here."""
    import vgg_jax
    from vgg_jax.weights import conversion, WeightsError
    from vgg_jax.weights.file_tensors import FileTensor

    def never_read():
        raise AssertionError("a tensor was read before its shape was checked")
    shapes = {"classifier.0.weight": (4096, 512 * fc6_window**2), "classifier.0.bias": (4096,),
              "classifier.6.weight": (classes, 4096), "classifier.6.bias": (classes,)}
    tensors = {key: FileTensor(shape, np.dtype(np.float32), never_read) for key, shape in shapes.items()}
    model = vgg_jax.create_model("vgg11")
    keys = conversion.torch_key_map(model, conversion.TORCHVISION_HEAD)
    with pytest.raises(WeightsError, match=reason):
        conversion.convert(tensors, keys, model, "w.pth", "w.pth as vgg11")


def test_nesting_is_bounded_near_what_torch_save_writes():
    """Catches the nesting bound raised far above a checkpoint's ~6 levels (e.g. 32 -> 200, where
    Python's C code recursion on hashing or repr of deep values gets close): 40 levels are refused
    before anything is built, 30 pass."""
    def nested(levels):
        value = ()
        for _ in range(levels):
            value = (value,)
        return pickle.dumps(value, protocol=2)
    pickle_check.check_pickle(nested(30))
    with pytest.raises(WeightsError, match="nested more than 32 deep"):
        pickle_check.check_pickle(nested(40))
