"""Input pipeline: tfds datasets, image folders and the offline digits -> numpy batches.

Every tf.data source yields (encoded image bytes, label) and goes through the same decode and
preprocessing ops; TensorFlow is imported when one is first built (`vgg_jax.lazy_tensorflow`).
Sources:
  'digits'        scikit-learn's handwritten digits (offline; `vgg_jax.digits`)
  'synthetic[:C]' generated class patterns (`vgg_jax.synthetic`): numpy alone, no TensorFlow
  'folder:PATH'   PATH/<class>/<image>, split by PATH/train and PATH/val folders when present,
                  else by a seeded per-class fraction `val_fraction` held out for evaluation
  any other name  a tfds image-classification dataset ('imagenet2012', 'tf_flowers', ...)

Order: each process reads only its shard. The train example at stream position p of a process
is a pure function of (config, seed, process, p), and a run restarted at step k starts at
p = k * batch in time independent of k:
- digits and folders are read by index: epoch e = p // n is a stateless permutation of the n
  examples keyed on (seed, e);
- tfds (TFRecord shards) is read by seeking: epoch e reads the process's shards in an order
  keyed on (seed, e), cut into windows of `shuffle_window` records, each window permuted with a
  key on (seed, e, window). A restart opens the shard holding its window's first record, skips
  inside it (at most one shard) and reads one window: the same work as a fresh start.
Crop scale and placement draw from stateless RNGs keyed on (seed, process, p).

Folder files are listed at start-up (every process lists; each reads only its shard's files),
never decoded before training: a file that cannot be decoded is found when it is read, replaced
in the stream by the next file of the epoch's order (so positions, and hence restarts, stay
exact), counted in `skipped_files` and reported as each epoch starts. Split sizes come from tfds
metadata or the listing, read once: no per-step work touches the dataset's files or metadata.

What the host yields (any source feeding the jitted steps yields the same): pixels only.
  train_batches   {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]}, b = global batch / processes
  eval_batches    the same plus 'mask': bool [b] (False on padding and on unreadable files)
  eval_images     (uint8 [H, W, 3] with min(H, W) = Q, int label), one image at a time
The host decodes, cuts the crop window (scale and place drawn from (seed, process, position))
and resizes, then rounds to uint8. Flip, colour shift and normalisation are arithmetic: they
run on the device inside the jitted steps (`vgg_jax.augmentation`), keyed on (seed, step, index
in the global batch), so a source needs no keys of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Callable, Iterator

import jax
import numpy as np

from vgg_jax import digits, synthetic
from vgg_jax import preprocessing as pp
from vgg_jax.lazy_tensorflow import tf, tfds  # imported when a tf.data source is first built

FOLDER_PREFIX = "folder:"
TRAIN_ATTEMPTS = 8  # an unreadable train file is replaced by the next of up to 7 following files
MAX_LOGGED_PATHS = 10
FILL_CHUNK = 64  # folder train streams: examples checked for unreadable files at a time


class DatasetError(ValueError):
    """A dataset that cannot train: a missing, empty or unreadable folder or class; the message names it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: list[str]
    num_train: int
    num_eval: int


@dataclasses.dataclass
class SkippedFiles:
    """Files of a split found unreadable so far in this process: left out, counted and reported."""

    found: set[str] = dataclasses.field(default_factory=set)

    @property
    def paths(self) -> list[str]:
        return sorted(self.found)

    @property
    def count(self) -> int:
        return len(self.found)

    def report(self, when: str) -> None:
        if self.found:
            shown = self.paths[:MAX_LOGGED_PATHS]
            more = f" and {self.count - len(shown)} more" if self.count > len(shown) else ""
            logging.warning("%s: skipped %d unreadable image files so far: %s%s", when, self.count, shown, more)


def check_config(data_config) -> None:
    """ValueError naming the field for scales that cannot give the configured crops."""
    c = data_config
    if c.scale_min > c.scale_max:
        raise ValueError(f"data.scale_min ({c.scale_min}) exceeds data.scale_max ({c.scale_max})")
    if c.crop_size > c.scale_min:
        raise ValueError(f"data.crop_size ({c.crop_size}) exceeds data.scale_min ({c.scale_min})")
    if c.crop_size > c.eval_scale:
        raise ValueError(f"data.crop_size ({c.crop_size}) exceeds data.eval_scale ({c.eval_scale})")
    if c.shuffle_window < 1:
        raise ValueError(f"data.shuffle_window ({c.shuffle_window}) must be >= 1")


def _placeholder(spec):
    """Zeros of a dataset's element structure (unknown dimensions 0)."""
    return tf.nest.map_structure(lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype), spec)


def _first_readable(candidates: tf.Tensor, read: Callable) -> tf.data.Dataset:
    """One example: `read(index)` of the first of `candidates` (int64 [K]) that decodes, with
    'failed' the indices tried before it (-1 padded) and 'mask' True; if none decodes, zeros with
    'mask' False. Decoding errors are caught by tf.data, not raised."""
    count = tf.size(candidates, out_type=tf.int64)
    attempts = tf.data.Dataset.from_tensor_slices((tf.range(count), candidates))
    readable = attempts.map(lambda n, index: (n, read(index))).ignore_errors()
    none = tf.data.Dataset.from_tensors((count, _placeholder(readable.element_spec[1])))
    return readable.concatenate(none).take(1).map(lambda n, example: {
        **example, "mask": n < count,
        "failed": tf.ensure_shape(tf.where(tf.range(count) < n, candidates, -1), candidates.shape)})


def _in_chunks(start, first_try: Callable, example: Callable) -> tf.data.Dataset:
    """The examples at positions `start`, start + 1, ... read FILL_CHUNK at a time: a parallel map
    of `first_try(position)` (the position's own file, with 'position') whose errors are dropped,
    then each dropped position filled in its place by `example(position)`, the per-file fallback
    (with 'mask' and 'failed'). The common case costs one parallel map and a few datasets per
    chunk; nested per-file datasets are built only where a file failed."""
    def chunk(first):
        span = tf.range(first, first + FILL_CHUNK)
        readable = tf.data.Dataset.from_tensor_slices(span).map(
            first_try, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(FILL_CHUNK)
        none = tf.data.Dataset.from_tensors(_placeholder(readable.element_spec))  # every file failed
        return readable.concatenate(none).take(1).flat_map(lambda read: fill(span, read))

    def fill(span, read):
        positions = read.pop("position")
        dropped = tf.logical_not(tf.reduce_any(span[:, None] == positions[None, :], axis=1))
        count = tf.shape(positions)[0]
        read = tf.data.Dataset.from_tensor_slices(
            {**read, "mask": tf.ones([count], tf.bool), "failed": -tf.ones([count, TRAIN_ATTEMPTS], tf.int64)})
        replaced = tf.data.Dataset.from_tensor_slices(tf.boolean_mask(span, dropped)).flat_map(example)
        return tf.data.Dataset.choose_from_datasets([read, replaced],
                                                    tf.data.Dataset.from_tensor_slices(tf.cast(dropped, tf.int64)))

    # Every chunk yields exactly FILL_CHUNK examples, so blocks of that length keep the order.
    return tf.data.Dataset.range(start, np.iinfo(np.int64).max, FILL_CHUNK).interleave(
        chunk, cycle_length=2, block_length=FILL_CHUNK, num_parallel_calls=2, deterministic=True)


def _in_order(indices: tf.data.Dataset, one_example: Callable) -> tf.data.Dataset:
    """`one_example(index)` (a one-element dataset) for each index, in parallel, in order."""
    return indices.interleave(one_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _shuffled(values: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """`values` [n] in the order of the stateless permutation keyed on `key` [2]."""
    n = tf.size(values, out_type=tf.int64)
    return tf.gather(values, tf.random.experimental.index_shuffle(tf.range(n), key, n - 1))


def _seek(files, skips, takes, begin):
    """The runs of records (files, skips, takes) from record `begin` of their concatenation on:
    the run holding that record starts there, skipping the records before it (at most one shard)."""
    ends = tf.cumsum(takes)
    piece = tf.searchsorted(ends, begin[None], side="right")[0]
    inside = begin - (ends[piece] - takes[piece])
    return (files[piece:], tf.tensor_scatter_nd_add(skips, [[piece]], [inside])[piece:],
            tf.tensor_scatter_nd_sub(takes, [[piece]], [inside])[piece:])


# Splits. An indexed split holds its examples as strings (encoded bytes or file paths) and is
# read by index; a tfds split is read by seeking in its TFRecord shards.


@dataclasses.dataclass(frozen=True)
class _IndexedSplit:
    data: np.ndarray  # object array of encoded images, or of their file paths
    labels: np.ndarray
    class_names: list[str]
    from_files: bool
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return str(self.data[index])

    def _read(self, index):
        image = tf.constant(self.data)[index]
        return tf.io.read_file(image) if self.from_files else image, tf.constant(self.labels)[index]

    def train_stream(self, seed, start, process_index, process_count, window, preprocess):
        """{'image', 'label'} from position `start` on, with 'mask' and 'failed' for files; `window`
        is unused (a full permutation per epoch). An unreadable file is replaced by the next one."""
        del window
        shard = tf.constant(np.arange(self.num_examples)[process_index::process_count])
        size = tf.size(shard, out_type=tf.int64)

        def shard_index(position):  # epoch e = position // size is permuted with seed (seed, e)
            permuted = tf.random.experimental.index_shuffle(
                position % size, tf.stack([tf.cast(seed, tf.int64), position // size]), size - 1)
            return shard[permuted]

        def example(position):
            candidates = tf.stack([shard_index(position + k) for k in range(TRAIN_ATTEMPTS)])
            return _first_readable(candidates, lambda index: preprocess(position, *self._read(index)))

        def first_try(position):
            return {**preprocess(position, *self._read(shard_index(position))), "position": position}

        positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
        if not self.from_files:  # images encoded in memory (digits, mock tfds) always decode
            return positions.map(lambda p: preprocess(p, *self._read(shard_index(p))), num_parallel_calls=tf.data.AUTOTUNE)
        return _in_chunks(start, first_try, example)

    def eval_stream(self, process_index, process_count, preprocess):
        """{'image', 'label', 'mask', 'failed'} of this process's shard; unreadable files: mask False."""
        indices = tf.data.Dataset.range(self.num_examples).shard(process_count, process_index)
        return _in_order(indices, lambda i: _first_readable(i[None], lambda j: preprocess(*self._read(j))))


@dataclasses.dataclass(frozen=True)
class _TfdsSplit:
    builder: tfds.core.DatasetBuilder
    split: str
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)  # tfds data is pre-validated

    @property
    def class_names(self) -> list[str]:
        return list(self.builder.info.features["label"].names)

    @functools.cached_property
    def num_examples(self) -> int:
        return self.builder.info.splits[self.split].num_examples  # metadata: no file is opened

    def _pieces(self, process_index, process_count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(files, skips, takes): this process's records, as runs of records of the split's shards."""
        split = tfds.even_splits(self.split, n=process_count, drop_remainder=False)[process_index]
        pieces = [piece for piece in self.builder.info.splits[split].file_instructions if piece.take]
        return (np.array([os.fspath(piece.filename) for piece in pieces]),
                np.array([piece.skip for piece in pieces], np.int64), np.array([piece.take for piece in pieces], np.int64))

    def _parse(self, record):
        example = self.builder.info.features.deserialize_example(
            record, decoders={"image": tfds.decode.SkipDecoding()})
        return example["image"], tf.cast(example["label"], tf.int32)

    @staticmethod
    def _records(files, skips, takes) -> tf.data.Dataset:
        pieces = tf.data.Dataset.from_tensor_slices((files, skips, takes))
        return pieces.flat_map(lambda f, skip, take: tf.data.TFRecordDataset(f, buffer_size=1 << 22).skip(skip).take(take))

    def train_stream(self, seed, start, process_index, process_count, window, preprocess):
        """{'image', 'label'} from position `start` on, seeking to it (see the module's docstring)."""
        files, skips, takes = self._pieces(process_index, process_count)
        epoch_size = int(takes.sum())
        window = max(1, min(window, epoch_size))
        first_epoch, offset = divmod(start, epoch_size)
        first_window, in_window = divmod(offset, window)

        def epoch_records(epoch):
            """The epoch's records from the start of its window `first_window` (first epoch) or 0:
            shards in an order keyed on (seed, epoch), each window shuffled with a key of its own."""
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = _shuffled(tf.range(len(files), dtype=tf.int64), key)
            begin_window = tf.where(epoch == first_epoch, tf.constant(first_window, tf.int64), 0)
            pieces = _seek(tf.gather(files, order), tf.gather(skips, order), tf.gather(takes, order),
                           begin_window * window)
            windows = self._records(*pieces).batch(window).enumerate(begin_window)
            shuffled = windows.map(lambda w, records: _shuffled(records, tf.random.experimental.stateless_fold_in(key, w)))
            return shuffled.prefetch(1).unbatch()  # the next window is read ahead

        records = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_records).skip(in_window)
        positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
        return tf.data.Dataset.zip(positions, records).map(
            lambda p, record: preprocess(p, *self._parse(record)), num_parallel_calls=tf.data.AUTOTUNE)

    def eval_stream(self, process_index, process_count, preprocess):
        """{'image', 'label', 'mask'} of this process's shard, in the split's order."""
        records = self._records(*self._pieces(process_index, process_count))
        return records.map(lambda record: {**preprocess(*self._parse(record)), "mask": True},
                           num_parallel_calls=tf.data.AUTOTUNE)


@functools.lru_cache(maxsize=None)
def _digits_split(split: str) -> _IndexedSplit:
    images, labels = digits.load(split)
    encoded = np.array([tf.io.encode_png(image).numpy() for image in images], dtype=object)
    return _IndexedSplit(encoded, labels, digits.CLASS_NAMES, from_files=False)


def _class_files(root: str, class_names: list[str] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Class names (sorted sub-folders unless given) and each class's files, hidden ones aside."""
    if class_names is None:
        class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(class_names) < 2:
        raise DatasetError(f"folder dataset {root} needs at least two class sub-folders, found {class_names}")
    return class_names, {name: _class_folder_files(os.path.join(root, name)) for name in class_names}


# The formats tf.io.decode_image recognises, by their first bytes (it looks at nothing else).
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"\xff\x0a", b"\0\0\0\x0cJXL ")  # + WebP below


def _looks_like_an_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _class_folder_files(folder: str) -> list[str]:
    """The files of one class folder; DatasetError if it has none, or none that the decoder could
    read (checked by signature until one passes: one file per class in a sound dataset; damaged
    files of a readable class are skipped and counted as they are read)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"class folder {folder} does not exist")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise DatasetError(f"class folder {folder} is empty: every class needs images")
    if not any(_looks_like_an_image(path) for path in files):
        raise DatasetError(f"class folder {folder}: none of its {len(files)} files is an image "
                           "(JPEG, PNG, GIF, BMP, WebP or JPEG XL) or readable")
    return files


def _folder_split(files: dict[str, list[str]], class_names: list[str]) -> _IndexedSplit:
    """The listed files and their labels; nothing is opened (unreadable files are found as read)."""
    paths = [path for name in class_names for path in files[name]]
    labels = np.array([label for label, name in enumerate(class_names) for _ in files[name]], np.int32)
    return _IndexedSplit(np.array(paths, dtype=object), labels, class_names, True)


@functools.lru_cache(maxsize=None)
def _load_folder_split(root: str, split: str, train_split: str, val_fraction: float) -> _IndexedSplit:
    if not os.path.isdir(root):
        raise DatasetError(f"folder dataset {root} does not exist: give data.source='folder:PATH' with "
                         "PATH holding one sub-folder per class (or train/ and val/ holding them)")
    if os.path.isdir(os.path.join(root, train_split)):  # PATH/train, PATH/val, ... hold the classes
        class_names, _ = _class_files(os.path.join(root, train_split))
        if not os.path.isdir(os.path.join(root, split)):
            raise DatasetError(f"folder dataset {root} has no {split}/ sub-folder")
        _, files = _class_files(os.path.join(root, split), class_names)
        return _folder_split(files, class_names)
    class_names, files = _class_files(root)
    held_out = {}
    for name in class_names:  # a per-class fraction, the same for every run
        order = np.random.default_rng(0).permutation(len(files[name]))
        num_held_out = min(round(val_fraction * len(order)), len(order) - 1)
        held_out[name] = set(order[:num_held_out])
    is_train = split == train_split
    files = {name: [f for i, f in enumerate(files[name]) if (i in held_out[name]) != is_train] for name in class_names}
    return _folder_split(files, class_names)


@dataclasses.dataclass(frozen=True)
class _SyntheticSplit:
    """A split of the synthetic source: generated, so no file is ever skipped."""
    generator: synthetic.Split
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)

    @property
    def class_names(self) -> list[str]:
        return self.generator.class_names

    @property
    def num_examples(self) -> int:
        return self.generator.num_examples


@functools.lru_cache(maxsize=None)
def _synthetic_split(classes: int, train: bool) -> _SyntheticSplit:
    return _SyntheticSplit(synthetic.Split(classes, train))


def _load_split(data_config, split: str):
    source = data_config.source
    if synthetic.num_classes(source):
        return _synthetic_split(synthetic.num_classes(source), split == data_config.train_split)
    if source == "digits":
        return _digits_split(split)
    if source.startswith(FOLDER_PREFIX):
        root = os.path.expanduser(source[len(FOLDER_PREFIX):])
        return _load_folder_split(root, split, data_config.train_split, data_config.val_fraction)
    return _tfds_split(source, data_config.data_dir, split)


@functools.lru_cache(maxsize=None)
def _tfds_split(name: str, data_dir: str | None, split: str) -> _TfdsSplit:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"unknown dataset {name!r}: give a tfds name, 'digits' or 'folder:PATH' "
                         f"as data.source ({str(error).splitlines()[0]})") from None
    try:
        builder.info.splits[split]
    except (KeyError, ValueError):
        return _in_memory_tfds_split(builder, split)
    return _TfdsSplit(builder, split)


def _in_memory_tfds_split(builder: tfds.core.DatasetBuilder, split: str) -> _IndexedSplit:
    """A split without files, read by tfds into memory: what `tfds.testing.mock_data` provides."""
    try:
        examples = builder.as_dataset(split=split, shuffle_files=False,
                                      decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator()
        images, labels = zip(*((example["image"], example["label"]) for example in examples))
    except (AssertionError, KeyError, ValueError):
        raise ValueError(f"tfds dataset {builder.name} has no prepared split {split!r} under {builder.data_dir} "
                         f"(prepared: {sorted(builder.info.splits)}): prepare it with `tfds build {builder.name} "
                         f"--data_dir=...` or fix data.train_split/eval_split") from None
    class_names = list(builder.info.features["label"].names)
    return _IndexedSplit(np.array(images, dtype=object), np.array(labels, np.int32), class_names, from_files=False)


# The public interface.


def dataset_info(data_config) -> DatasetInfo:
    train = _load_split(data_config, data_config.train_split)
    num_eval = _load_split(data_config, data_config.eval_split).num_examples
    return DatasetInfo(len(train.class_names), train.class_names, train.num_examples, num_eval)


def split_info(data_config, split: str | None = None) -> tuple[list[str], int]:
    """(class names, number of examples) of one split (default: the eval split), from metadata
    or a listing; for evaluating a split alone (e.g. only ImageNet's validation is prepared)."""
    source = _load_split(data_config, split or data_config.eval_split)
    return source.class_names, source.num_examples


def skipped_files(data_config, split: str | None = None) -> SkippedFiles:
    """The files of a split (default: the eval split) found unreadable so far by this process's
    streams; the count grows as the files are read. Other processes count their own shards."""
    return _load_split(data_config, split or data_config.eval_split).skipped


def skipped_count(data_config, split: str | None = None) -> int:
    """skipped_files(...).count summed over every process (a collective: all must call it)."""
    count = skipped_files(data_config, split).count
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        count = int(multihost_utils.process_allgather(np.array(count)).sum())
    return count


def _processes(process_index, process_count) -> tuple[int, int]:
    if process_count is None:
        process_count = jax.process_count()
    if process_index is None:
        process_index = jax.process_index()
    return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
    return global_batch_size // process_count


def preprocess_train(position, data, label, *, data_config, key):
    """The train example at stream `position`: scale S in [Smin, Smax], a random crop window,
    decoded and resized to uint8 (flip and colour shift follow on the device)."""
    seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, position), 2)
    c = data_config
    scale = tf.random.stateless_uniform([], seeds[0], c.scale_min, c.scale_max + 1, dtype=tf.int32)
    image = pp.decode_crop(data, scale, c.crop_size, tf.random.stateless_uniform([2], seeds[1]))
    return {"image": pp.to_pixels(image), "label": label}


def train_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index=None, process_count=None) -> Iterator[dict]:
    """Endless {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]} of this process's shard,
    b = global_batch_size / process_count; the batch at step k depends only on (config, seed, k)."""
    check_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    split = _load_split(data_config, data_config.train_split)
    if isinstance(split, _SyntheticSplit):
        return split.generator.train_batches(data_config, local_batch=local_batch, seed=seed,
                                             start_step=start_step, process_index=process_index)
    preprocess = functools.partial(preprocess_train, data_config=data_config,
                                   key=tf.constant([seed, process_index], tf.int64))
    stream = split.train_stream(seed, start_step * local_batch, process_index, process_count,
                                data_config.shuffle_window, preprocess)
    batches = stream.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _report_epochs(batches.as_numpy_iterator(), split, start_step, global_batch_size)


def _record_failures(batch: dict, split) -> dict:
    """The batch without its 'failed' indices, which go to the split's skipped files."""
    failed = batch.pop("failed", None)
    if failed is not None and (failed >= 0).any():
        split.skipped.found.update(split.path(index) for index in np.unique(failed[failed >= 0]))
    return batch


def _report_epochs(batches: Iterator[dict], split, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """The train batches, reporting the split's skipped files as each epoch starts. The epoch
    comes from the split's size, read once: no per-step work touches the dataset's metadata."""
    num_examples = split.num_examples
    epoch = -1
    for step, batch in enumerate(batches, start_step):
        batch = _record_failures(batch, split)
        if not batch.pop("mask", np.True_).all():
            raise DatasetError(f"{TRAIN_ATTEMPTS} files in a row of the training order are unreadable "
                             f"(e.g. {split.skipped.paths[:3]}): check the dataset's files")
        if step * global_batch_size // num_examples > epoch:
            epoch = step * global_batch_size // num_examples
            split.skipped.report(f"epoch {epoch}")
        yield batch


def eval_batches(data_config, *, split: str | None = None, global_batch_size: int,
                 process_index=None, process_count=None) -> Iterator[dict]:
    """The whole split once across processes: rescaled to eval_scale, centre crop, uint8. Every process
    gets the same number of batches; 'mask' is False on the padding that fills the last ones and
    on unreadable files (counted in `skipped_files`)."""
    check_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    split = split or data_config.eval_split
    source = _load_split(data_config, split)
    num_batches = math.ceil(math.ceil(source.num_examples / process_count) / local_batch)
    if isinstance(source, _SyntheticSplit):
        batches = source.generator.eval_batches(data_config, local_batch=local_batch, num_batches=num_batches,
                                                process_index=process_index, process_count=process_count)
        yield from batches
        return
    crop = data_config.crop_size

    def preprocess(data, label):
        return {"image": pp.to_pixels(pp.decode_crop(data, data_config.eval_scale, crop, (0.5, 0.5))), "label": label}

    examples = source.eval_stream(process_index, process_count, preprocess)
    padding = {**_placeholder(examples.element_spec), "mask": False}
    if "failed" in padding:
        padding["failed"] = -tf.ones_like(padding["failed"])
    padded = examples.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    batches = padded.take(num_batches * local_batch).batch(local_batch).prefetch(tf.data.AUTOTUNE)
    for batch in batches.as_numpy_iterator():
        yield _record_failures(batch, source)
    source.skipped.report(f"evaluation of {split}")


def eval_images(data_config, *, split: str | None = None, scale: int,
                process_index=None, process_count=None) -> Iterator[tuple[np.ndarray, int]]:
    """(uint8 [H, W, 3] with min(H, W) == scale, label) for each readable image of this
    process's shard, whole, for dense and multi-crop evaluation; `skipped_files` counts the others."""
    process_index, process_count = _processes(process_index, process_count)
    split = split or data_config.eval_split
    source = _load_split(data_config, split)
    if isinstance(source, _SyntheticSplit):
        yield from source.generator.eval_images(scale, process_index, process_count)
        return

    def preprocess(data, label):
        return {"image": pp.to_pixels(pp.rescale_smallest_side(pp.decode(data), scale)), "label": label}

    images = source.eval_stream(process_index, process_count, preprocess).prefetch(tf.data.AUTOTUNE)
    for example in images.as_numpy_iterator():
        example = _record_failures(example, source)
        if example["mask"]:
            yield example["image"], int(example["label"])
    source.skipped.report(f"evaluation of {split}")
