"""tensorflow-datasets TFRecord datasets through tf.data: the optional `tfds` extra.

Any tfds image-classification name ('imagenet2012' once built, 'tf_flowers', ...). Its records
are read by seeking: epoch e reads the process's shards in an order keyed on (seed, e), cut into
windows of `shuffle_window` records, each window permuted with a key on (seed, e, window). A
restart opens the shard holding its window's first record, skips inside it (at most one shard)
and reads one window: the same work as a fresh start. Crops draw from stateless RNGs keyed on
(seed, process, position) and are made by tf.image (`vgg_jax.data.preprocessing`). A split tfds holds
in memory (`tfds.testing.mock_data`) becomes an EncodedSource read by Grain instead.
TensorFlow is imported when a split is first built (`vgg_jax.data.lazy_tensorflow`); this is the
only data module that uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator

import numpy as np

from vgg_jax.data import preprocessing as pp
from vgg_jax.data.lazy_tensorflow import tf, tfds
from vgg_jax.data.sources import EncodedSource, SkippedFiles


def _shuffled(values, key):
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


def _records(files, skips, takes):
    """The records of runs (file, skip, take), in order."""
    pieces = tf.data.Dataset.from_tensor_slices((files, skips, takes))
    return pieces.flat_map(lambda f, skip, take: tf.data.TFRecordDataset(f, buffer_size=1 << 22).skip(skip).take(take))


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    builder: object  # tfds.core.DatasetBuilder
    split: str
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)  # tfds data is pre-validated

    @property
    def class_names(self) -> list[str]:
        return list(self.builder.info.features["label"].names)

    @functools.cached_property
    def num_examples(self) -> int:
        return self.builder.info.splits[self.split].num_examples  # metadata: no file is opened

    def pieces(self, process_index, process_count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(files, skips, takes): this process's records, as runs of records of the split's shards."""
        split = tfds.even_splits(self.split, n=process_count, drop_remainder=False)[process_index]
        pieces = [piece for piece in self.builder.info.splits[split].file_instructions if piece.take]
        return (np.array([os.fspath(piece.filename) for piece in pieces]),
                np.array([piece.skip for piece in pieces], np.int64), np.array([piece.take for piece in pieces], np.int64))

    def parse(self, record):
        example = self.builder.info.features.deserialize_example(
            record, decoders={"image": tfds.decode.SkipDecoding()})
        return example["image"], tf.cast(example["label"], tf.int32)

    def records(self, process_index, process_count):
        return _records(*self.pieces(process_index, process_count))

    def train_records(self, seed: int, start: int, process_index: int, process_count: int, window: int):
        """The process's records from stream position `start` on (see the module's docstring)."""
        files, skips, takes = self.pieces(process_index, process_count)
        epoch_size = int(takes.sum())
        window = max(1, min(window, epoch_size))
        first_epoch, offset = divmod(start, epoch_size)
        first_window, in_window = divmod(offset, window)

        def epoch_records(epoch):
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = _shuffled(tf.range(len(files), dtype=tf.int64), key)
            begin_window = tf.where(epoch == first_epoch, tf.constant(first_window, tf.int64), 0)
            pieces = _seek(tf.gather(files, order), tf.gather(skips, order), tf.gather(takes, order),
                           begin_window * window)
            windows = _records(*pieces).batch(window).enumerate(begin_window)
            shuffled = windows.map(lambda w, batch: _shuffled(batch, tf.random.experimental.stateless_fold_in(key, w)))
            return shuffled.prefetch(1).unbatch()  # the next window is read ahead

        return tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_records).skip(in_window)


@functools.lru_cache(maxsize=None)
def load_split(name: str, data_dir: str | None, split: str, max_pixels: int):
    """A TfdsSplit, or an EncodedSource for a split tfds holds in memory; ValueError naming the
    dataset for unknown names and unprepared splits."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"unknown dataset {name!r}: give a tfds name, 'digits', 'folder:PATH' or 'imagenet:PATH' "
                         f"as data.source ({str(error).splitlines()[0]})") from None
    try:
        builder.info.splits[split]
    except (KeyError, ValueError):
        return _in_memory_split(builder, split, max_pixels)
    return TfdsSplit(builder, split)


def _in_memory_split(builder, split: str, max_pixels: int) -> EncodedSource:
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
    return EncodedSource(np.array(images, dtype=object), np.array(labels, np.int32), class_names, max_pixels=max_pixels)


def preprocess_train(position, data, label, *, data_config, key):
    """The train example at stream `position`: scale S in [Smin, Smax], a random crop window,
    decoded and resized to uint8 by tf.image (flip and colour shift follow on the device)."""
    seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, position), 2)
    c = data_config
    scale = tf.random.stateless_uniform([], seeds[0], c.scale_min, c.scale_max + 1, dtype=tf.int32)
    image = pp.decode_crop(data, scale, c.crop_size, tf.random.stateless_uniform([2], seeds[1]))
    return {"image": pp.to_pixels(image), "label": label}


def train_batches(split: TfdsSplit, data_config, *, seed: int, start_step: int, layout) -> Iterator[dict]:
    """Endless {'image': uint8 [b, crop, crop, 3], 'label'} of this process's records."""
    b, q = layout.local_batch, layout.process_index
    start = start_step * b
    records = split.train_records(seed, start, q, layout.process_count, data_config.shuffle_window)
    positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    preprocess = functools.partial(preprocess_train, data_config=data_config, key=tf.constant([seed, q], tf.int64))
    stream = tf.data.Dataset.zip(positions, records).map(
        lambda p, record: preprocess(p, *split.parse(record)), num_parallel_calls=tf.data.AUTOTUNE)
    return stream.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_stream(split: TfdsSplit, data_config, *, layout, num_batches: int | None = None,
                scale: int | None = None) -> Iterator[dict]:
    """Like `vgg_jax.data.pipeline.eval_stream`: centre crops in padded batches, or whole images."""
    def preprocess(record):
        data, label = split.parse(record)
        image = (pp.rescale_smallest_side(pp.decode(data), scale) if scale else
                 pp.decode_crop(data, data_config.eval_scale, data_config.crop_size, (0.5, 0.5)))
        return {"image": pp.to_pixels(image), "label": label, "mask": True}

    examples = split.records(layout.process_index, layout.process_count).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if num_batches is None:
        return examples.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
    crop = data_config.crop_size
    padding = {"image": tf.zeros([crop, crop, 3], tf.uint8), "label": tf.constant(0, tf.int32), "mask": False}
    padded = examples.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    return padded.take(num_batches * layout.local_batch).batch(layout.local_batch).prefetch(
        tf.data.AUTOTUNE).as_numpy_iterator()
