"""Input pipeline: tfds datasets, image folders and the offline digits -> numpy batches.

Every source yields (encoded image bytes, label) and goes through the same decode and
preprocessing ops. Sources:
  'digits'        scikit-learn's handwritten digits (offline; `vgg_jax.digits`)
  'folder:PATH'   PATH/<class>/<image>, split by PATH/train and PATH/val folders when present,
                  else by a seeded per-class fraction `val_fraction` held out for evaluation
  any other name  a tfds image-classification dataset ('imagenet2012', 'tf_flowers', ...)

Order: each process reads only its shard. The train example at stream position p of a process
is a pure function of (config, seed, process, p): the order comes from a stateless permutation
per epoch (digits, folders) or a seeded shuffle buffer (tfds), and augmentation draws from
stateless RNGs keyed on (seed, process, p). A run restarted at step k starts at p = k * batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax import digits
from vgg_jax import preprocessing as pp
from vgg_jax.normalization import Normalization

tf.config.set_visible_devices([], "GPU")  # TF only decodes and augments; the accelerators are JAX's

FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: list[str]
    num_train: int
    num_eval: int


@dataclasses.dataclass
class SkippedFiles:
    """Files of a split that could not be decoded: left out of every epoch, counted and reported."""

    paths: list[str] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.paths)

    def report(self, when: str) -> None:
        if self.paths:
            logging.warning("%s: skipped %d unreadable image files: %s", when, self.count, self.paths)


def check_config(data_config) -> None:
    """ValueError naming the field for scales that cannot give the configured crops."""
    c = data_config
    if c.scale_min > c.scale_max:
        raise ValueError(f"data.scale_min ({c.scale_min}) exceeds data.scale_max ({c.scale_max})")
    if c.crop_size > c.scale_min:
        raise ValueError(f"data.crop_size ({c.crop_size}) exceeds data.scale_min ({c.scale_min})")
    if c.crop_size > c.eval_scale:
        raise ValueError(f"data.crop_size ({c.crop_size}) exceeds data.eval_scale ({c.eval_scale})")


# Splits. An indexed split holds its examples as strings (encoded bytes or file paths) and is
# read by index; a tfds split is a stream.


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

    def _read(self, index):
        image = tf.constant(self.data)[index]
        return tf.io.read_file(image) if self.from_files else image, tf.constant(self.labels)[index]

    def train_stream(self, seed, start, process_index, process_count, shuffle_buffer):
        del shuffle_buffer  # a full permutation per epoch, by index
        shard = tf.constant(np.arange(self.num_examples)[process_index::process_count])
        size = tf.size(shard, out_type=tf.int64)

        def shard_index(position):  # epoch e = position // size is permuted with seed (seed, e)
            permuted = tf.random.experimental.index_shuffle(
                position % size, tf.stack([tf.cast(seed, tf.int64), position // size]), size - 1)
            return shard[permuted]

        positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
        return positions.map(lambda p: (p, *self._read(shard_index(p))), num_parallel_calls=tf.data.AUTOTUNE)

    def eval_stream(self, process_index, process_count):
        indices = tf.data.Dataset.range(self.num_examples).shard(process_count, process_index)
        return indices.map(self._read, num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class _TfdsSplit:
    builder: tfds.core.DatasetBuilder
    split: str
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)  # tfds data is pre-validated

    @property
    def class_names(self) -> list[str]:
        return list(self.builder.info.features["label"].names)

    @property
    def num_examples(self) -> int:
        return int(self._examples(self.split).cardinality())

    def _examples(self, split) -> tf.data.Dataset:
        ds = self.builder.as_dataset(
            split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))

    def _shard(self, process_index, process_count):
        return tfds.even_splits(self.split, n=process_count, drop_remainder=False)[process_index]

    def train_stream(self, seed, start, process_index, process_count, shuffle_buffer):
        examples = self._examples(self._shard(process_index, process_count))
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        return examples.enumerate().skip(start).map(lambda p, ex: (p, *ex))  # skips undecoded records

    def eval_stream(self, process_index, process_count):
        return self._examples(self._shard(process_index, process_count))


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
        raise ValueError(f"folder dataset {root} needs at least two class sub-folders, found {class_names}")
    files = {}
    for name in class_names:
        folder = os.path.join(root, name)
        files[name] = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
        if not files[name]:
            raise ValueError(f"class folder {folder} is empty")
    return class_names, files


def _readable(paths: list[str]) -> np.ndarray:
    """Which files TF can decode: one parallel decode of each, errors dropping the file."""
    paths_ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    decoded = paths_ds.map(lambda i, path: (i, tf.shape(pp.decode(tf.io.read_file(path)))),
                           num_parallel_calls=tf.data.AUTOTUNE)
    ok = np.zeros(len(paths), bool)
    ok[[i for i, _ in decoded.ignore_errors().as_numpy_iterator()]] = True
    return ok


def _folder_split(root: str, files: dict[str, list[str]], class_names: list[str]) -> _IndexedSplit:
    paths = [path for name in class_names for path in files[name]]
    labels = np.array([label for label, name in enumerate(class_names) for _ in files[name]], np.int32)
    ok = _readable(paths)
    skipped = SkippedFiles([path for path, good in zip(paths, ok) if not good])
    for label, name in enumerate(class_names):
        if not ok[labels == label].any():
            raise ValueError(f"class folder {os.path.join(root, name)} has no readable images")
    return _IndexedSplit(np.array(paths, dtype=object)[ok], labels[ok], class_names, True, skipped)


@functools.lru_cache(maxsize=None)
def _load_folder_split(root: str, split: str, train_split: str, val_fraction: float) -> _IndexedSplit:
    if os.path.isdir(os.path.join(root, train_split)):  # PATH/train, PATH/val, ... hold the classes
        class_names, _ = _class_files(os.path.join(root, train_split))
        if not os.path.isdir(os.path.join(root, split)):
            raise ValueError(f"folder dataset {root} has no {split}/ sub-folder")
        _, files = _class_files(os.path.join(root, split), class_names)
        return _folder_split(root, files, class_names)
    class_names, files = _class_files(root)
    held_out = {}
    for name in class_names:  # a per-class fraction, the same for every run
        order = np.random.default_rng(0).permutation(len(files[name]))
        num_held_out = min(round(val_fraction * len(order)), len(order) - 1)
        held_out[name] = set(order[:num_held_out])
    is_train = split == train_split
    files = {name: [f for i, f in enumerate(files[name]) if (i in held_out[name]) != is_train] for name in class_names}
    return _folder_split(root, files, class_names)


def _load_split(data_config, split: str):
    source = data_config.source
    if source == "digits":
        return _digits_split(split)
    if source.startswith(FOLDER_PREFIX):
        root = os.path.expanduser(source[len(FOLDER_PREFIX):])
        return _load_folder_split(root, split, data_config.train_split, data_config.val_fraction)
    return _TfdsSplit(tfds.builder(source, data_dir=data_config.data_dir), split)


# The public interface.


def dataset_info(data_config) -> DatasetInfo:
    train = _load_split(data_config, data_config.train_split)
    num_eval = _load_split(data_config, data_config.eval_split).num_examples
    return DatasetInfo(len(train.class_names), train.class_names, train.num_examples, num_eval)


def skipped_files(data_config, split: str | None = None) -> SkippedFiles:
    """The unreadable files left out of a split (default: the eval split)."""
    return _load_split(data_config, split or data_config.eval_split).skipped


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


def preprocess_train(position, data, label, *, data_config, normalization: Normalization, key):
    """The train example at stream `position`: scale S in [Smin, Smax], random crop, flip, colour shift."""
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(key, position), 4)
    c = data_config
    scale = tf.random.stateless_uniform([], seeds[0], c.scale_min, c.scale_max + 1, dtype=tf.int32)
    image = pp.decode_crop(data, scale, c.crop_size, tf.random.stateless_uniform([2], seeds[1]))
    if c.flip:
        image = pp.random_flip(image, seeds[2])
    if c.color_shift_std:
        image = pp.pca_color_shift(image, c.color_shift_std, seeds[3])
    return {"image": pp.normalize(image, normalization), "label": label}


def train_batches(data_config, *, global_batch_size: int, normalization: Normalization, seed: int,
                  start_step: int = 0, process_index=None, process_count=None) -> Iterator[dict]:
    """Endless {'image': float32 [b, crop, crop, 3], 'label': int32 [b]} of this process's shard,
    b = global_batch_size / process_count; the batch at step k depends only on (config, seed, k)."""
    check_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    split = _load_split(data_config, data_config.train_split)
    stream = split.train_stream(seed, start_step * local_batch, process_index, process_count,
                                data_config.shuffle_buffer)
    preprocess = functools.partial(preprocess_train, data_config=data_config, normalization=normalization,
                                   key=tf.constant([seed, process_index], tf.int64))
    batches = (stream.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return _report_epochs(batches, split, start_step, global_batch_size)


def _report_epochs(batches: tf.data.Dataset, split, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """The batches as numpy, reporting the split's skipped files as each epoch starts."""
    epoch = -1
    for step, batch in enumerate(batches.as_numpy_iterator(), start_step):
        if step * global_batch_size // split.num_examples > epoch:
            epoch = step * global_batch_size // split.num_examples
            split.skipped.report(f"epoch {epoch}")
        yield batch


def eval_batches(data_config, *, split: str | None = None, global_batch_size: int,
                 normalization: Normalization, process_index=None, process_count=None) -> Iterator[dict]:
    """The whole split once across processes: rescaled to eval_scale, centre crop. Every process
    gets the same number of batches; 'mask' is False on the padding that fills the last ones."""
    check_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    split = split or data_config.eval_split
    source = _load_split(data_config, split)
    source.skipped.report(f"evaluation of {split}")
    num_batches = math.ceil(math.ceil(source.num_examples / process_count) / local_batch)
    crop = data_config.crop_size

    def preprocess(data, label):
        image = pp.decode_crop(data, data_config.eval_scale, crop, (0.5, 0.5))
        return {"image": pp.normalize(image, normalization), "label": label, "mask": True}

    padding = tf.data.Dataset.from_tensors(
        {"image": tf.zeros([crop, crop, 3]), "label": 0, "mask": False}).repeat()
    examples = source.eval_stream(process_index, process_count).map(preprocess, tf.data.AUTOTUNE)
    batches = examples.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    return batches.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_images(data_config, *, split: str | None = None, scale: int, normalization: Normalization,
                process_index=None, process_count=None) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 [H, W, 3] with min(H, W) == scale, label) for each image of this process's shard,
    whole, for dense and multi-crop evaluation. `skipped_files` tells which files were left out."""
    process_index, process_count = _processes(process_index, process_count)
    split = split or data_config.eval_split
    source = _load_split(data_config, split)
    source.skipped.report(f"evaluation of {split}")

    def preprocess(data, label):
        return pp.normalize(pp.rescale_smallest_side(pp.decode(data), scale), normalization), label

    images = source.eval_stream(process_index, process_count).map(preprocess, tf.data.AUTOTUNE)
    for image, label in images.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        yield image, int(label)
