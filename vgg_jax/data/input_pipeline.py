"""Input pipeline: every data source -> uint8 numpy batches, the same for train, eval and resume.

Sources (`data.source`):
  'digits'          scikit-learn's handwritten digits (offline; `vgg_jax.data.digits`)
  'synthetic[:C]'   generated class patterns (`vgg_jax.data.synthetic`)
  'folder:PATH'     PATH/<class>/<image> (`vgg_jax.data.folders`)
  'imagenet:PATH'   ILSVRC-2012 as downloaded (`vgg_jax.data.imagenet`)
  any other name    a tensorflow-datasets dataset through tf.data (`vgg_jax.data.tfds`; needs
                    the `tfds` extra: pip install -e ".[tfds]")
All but the last are Grain pipelines (`vgg_jax.data.pipeline`) that need no TensorFlow.

Order: each process reads only its shard. The train example at stream position p of a process
is a pure function of (config, seed, process, p), and a run restarted at step k starts at
p = k * batch in time independent of k. A file that cannot be decoded, or holds more than
`data.max_pixels` pixels, is found when it is read, replaced in the stream by the next file of
the epoch's order (so positions, and hence restarts, stay exact), counted in `skipped_files` and
reported as each epoch starts.

What the host yields (any source feeding the jitted steps yields the same): pixels only.
  train_batches   {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]}, b = global batch / processes
  eval_batches    the same plus 'mask': bool [b] (False on padding and on unreadable files)
  eval_images     (uint8 [H, W, 3] with min(H, W) = Q, int label), one image at a time
Flip, colour shift and normalisation run on the device inside the jitted steps
(`vgg_jax.data.augmentation`), keyed on (seed, step, index in the global batch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterator

import jax
import numpy as np

from vgg_jax.data import digits, folders, imagenet, pipeline, synthetic, tfds
from vgg_jax.data.pipeline import Layout, TRAIN_ATTEMPTS
from vgg_jax.data.sources import DatasetError, ImageSource, SkippedFiles

FOLDER_PREFIX = folders.PREFIX
IMAGENET_PREFIX = imagenet.PREFIX
__all__ = ["DatasetError", "SkippedFiles", "DatasetInfo", "check_config", "dataset_info", "split_info", "skipped_files",
           "skipped_count", "train_batches", "eval_batches", "eval_images"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: list[str]
    num_train: int
    num_eval: int


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


@functools.lru_cache(maxsize=None)
def _digits_split(split: str) -> ImageSource:
    return ImageSource(*digits.load(split), digits.CLASS_NAMES)


@functools.lru_cache(maxsize=None)
def _synthetic_split(classes: int, train: bool) -> synthetic.Split:
    return synthetic.Split(classes, train)


def _load_split(data_config, split: str):
    """The split's source: a synthetic.Split, an ImageSource (Grain) or a TfdsSplit (tf.data)."""
    c = data_config
    if synthetic.num_classes(c.source):
        return _synthetic_split(synthetic.num_classes(c.source), split == c.train_split)
    if c.source == "digits":
        return _digits_split(split)
    if c.source.startswith(FOLDER_PREFIX):
        root = os.path.expanduser(c.source[len(FOLDER_PREFIX):])
        return folders.load_split(root, split, c.train_split, c.val_fraction, c.max_pixels)
    if c.source.startswith(IMAGENET_PREFIX):
        return imagenet.load_split(os.path.expanduser(c.source[len(IMAGENET_PREFIX):]), split, c.train_split,
                                   c.max_pixels)
    return tfds.load_split(c.source, c.data_dir, split, c.max_pixels)


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
    source = _load_split(data_config, split or data_config.eval_split)
    return getattr(source, "skipped", SkippedFiles())  # generated examples are never skipped


def skipped_count(data_config, split: str | None = None) -> int:
    """skipped_files(...).count summed over every process (a collective: all must call it)."""
    count = skipped_files(data_config, split).count
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        count = int(multihost_utils.process_allgather(np.array(count)).sum())
    return count


def _processes(process_index, process_count) -> tuple[int, int]:
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def _layout(global_batch_size: int, process_index, process_count) -> Layout:
    process_index, process_count = _processes(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
    return Layout(process_index, process_count, global_batch_size // process_count)


def _record_failures(batch: dict, source) -> dict:
    """The batch without its 'failed' indices, which go to the source's skipped files."""
    failed = batch.pop("failed", None)
    if failed is not None and (failed >= 0).any():
        source.skipped.found.update(source.path(int(index)) for index in np.unique(failed[failed >= 0]))
    return batch


def train_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index=None, process_count=None) -> Iterator[dict]:
    """Endless {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]} of this process's shard,
    b = global_batch_size / process_count; the batch at step k depends only on (config, seed, k)."""
    check_config(data_config)
    layout = _layout(global_batch_size, process_index, process_count)
    source = _load_split(data_config, data_config.train_split)
    stream = tfds.train_batches if isinstance(source, tfds.TfdsSplit) else pipeline.train_stream
    batches = stream(source, data_config, seed=seed, start_step=start_step, layout=layout)
    return _report_epochs(batches, source, start_step, global_batch_size)


def _report_epochs(batches: Iterator[dict], source, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """The train batches, reporting the split's skipped files as each epoch starts. The epoch
    comes from the split's size, read once: no per-step work touches the dataset's metadata."""
    num_examples, skipped = source.num_examples, getattr(source, "skipped", None)
    epoch = -1
    for step, batch in enumerate(batches, start_step):
        failed = batch.get("failed")
        batch = _record_failures(batch, source)
        if failed is not None and (failed[:, -1] >= 0).any():  # every attempt of an example failed
            raise ValueError(f"{TRAIN_ATTEMPTS} files in a row of the training order are unreadable "
                             f"(e.g. {skipped.paths[:3]}): check the dataset's files")
        if step * global_batch_size // num_examples > epoch:
            epoch = step * global_batch_size // num_examples
            if skipped is not None:
                skipped.report(f"epoch {epoch}")
        yield batch


def _eval_stream(data_config, split: str | None, layout: Layout, **kwargs):
    source = _load_split(data_config, split or data_config.eval_split)
    stream = tfds.eval_stream if isinstance(source, tfds.TfdsSplit) else pipeline.eval_stream
    return source, stream(source, data_config, layout=layout, **kwargs)


def eval_batches(data_config, *, split: str | None = None, global_batch_size: int,
                 process_index=None, process_count=None) -> Iterator[dict]:
    """The whole split once across processes: rescaled to eval_scale, centre crop, uint8. Every process
    gets the same number of batches; 'mask' is False on the padding that fills the last ones and
    on unreadable files (counted in `skipped_files`)."""
    check_config(data_config)
    layout = _layout(global_batch_size, process_index, process_count)
    _, num_examples = split_info(data_config, split)
    num_batches = math.ceil(math.ceil(num_examples / layout.process_count) / layout.local_batch)
    source, batches = _eval_stream(data_config, split, layout, num_batches=num_batches)
    for batch in batches:
        yield _record_failures(batch, source)
    skipped_files(data_config, split).report(f"evaluation of {split or data_config.eval_split}")


def eval_images(data_config, *, split: str | None = None, scale: int,
                process_index=None, process_count=None) -> Iterator[tuple[np.ndarray, int]]:
    """(uint8 [H, W, 3] with min(H, W) == scale, label) for each readable image of this
    process's shard, whole, for dense and multi-crop evaluation; `skipped_files` counts the others."""
    process_index, process_count = _processes(process_index, process_count)
    layout = Layout(process_index, process_count, 16)  # 16: how many images are read ahead, in halves
    source, images = _eval_stream(data_config, split, layout, scale=scale)
    for example in images:
        example = _record_failures(example, source)
        if example["mask"]:
            yield example["image"], int(example["label"])
    skipped_files(data_config, split).report(f"evaluation of {split or data_config.eval_split}")
