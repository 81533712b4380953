"""Grain pipelines: a source's train, evaluation and whole-image streams as uint8 numpy batches.

Each stream is a grain.MapDataset over positions, so element p is a pure function of p:
  train   position p of this process's stream -> the file at p in the epoch's order (epoch
          e = p // n is a permutation of the process's shard, keyed on (seed, e)), read and
          decoded, then the paper's crop drawn from an RNG keyed on (seed, global position)
          (`TrainExamples`); an unreadable file is replaced by the next of the order.
  eval    index i of the process's shard (padded to whole batches) -> its centre crop at Q.
Resuming at step k starts the range at p = k * batch: index arithmetic, O(1) at any step, no
iterator state to save. Elements are read by threads (`ReadOptions`: decoding and resizing
release the GIL) or by `data.workers` worker processes (Grain's mp_prefetch, which keeps the
order) and batched in this process, so a batch is the same bytes for any worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags

from vgg_jax.data import synthetic, transforms
from vgg_jax.data.decode import UnreadableImage
from vgg_jax.data.sources import ImageSource

TRAIN_ATTEMPTS = 8  # an unreadable train file is replaced by the next of up to 7 following files
END = sys.maxsize // 2  # the endless train stream's length


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process's stream sits in the global batches: process q of P, b examples each."""
    process_index: int
    process_count: int
    local_batch: int

    def global_position(self, position: int) -> int:
        """The index in the global stream (step-major, processes in order) of local `position`."""
        step, index = divmod(position, self.local_batch)
        return (step * self.process_count + self.process_index) * self.local_batch + index

    def shard(self, num_examples: int) -> np.ndarray:
        """The example indices this process reads: every P-th from q."""
        return np.arange(self.process_index, num_examples, self.process_count)


@functools.lru_cache(maxsize=64)  # a SeedSequence per example would cost ~15 us of held GIL
def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit permutation key for epoch `epoch` of a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Position -> example index: each epoch a permutation of the shard keyed on (seed, epoch)."""
    shard: np.ndarray
    seed: int

    def __call__(self, position: int) -> int:
        epoch, index = divmod(position, len(self.shard))
        key = epoch_seed(self.seed, epoch)
        return int(self.shard[grain.experimental.index_shuffle(index, max_index=len(self.shard) - 1, seed=key, rounds=4)])


@dataclasses.dataclass(frozen=True)
class TrainExamples:
    """Train position -> {'image': uint8 crop, 'label', 'failed': indices tried before it (-1 padded)}."""
    source: ImageSource
    order: EpochOrder
    layout: Layout
    seed: int
    data_config: object

    def read(self, position: int) -> tuple[int, np.ndarray | None, np.ndarray]:
        """(index, pixels, failed) of the first readable example of the order from `position`
        on (index -1 and pixels None if TRAIN_ATTEMPTS in a row fail), and the indices that failed."""
        failed = np.full(TRAIN_ATTEMPTS, -1, np.int64)
        for attempt in range(TRAIN_ATTEMPTS):
            index = self.order(position + attempt)
            try:
                return index, self.source[index], failed
            except UnreadableImage:
                failed[attempt] = index
        return -1, None, failed

    def __call__(self, position: int) -> dict:
        index, image, failed = self.read(position)
        if image is None:  # the consumer raises, naming the files
            size = self.data_config.crop_size
            return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0), "failed": failed}
        rng = np.random.default_rng([self.seed, self.layout.global_position(position)])
        return {"image": transforms.train_crop(image, rng, self.data_config), "label": self.source.labels[index],
                "failed": failed}


@dataclasses.dataclass(frozen=True)
class SyntheticTrainExamples:
    """Train position -> a generated crop, drawn from (seed, global position); nothing fails."""
    split: synthetic.Split
    layout: Layout
    seed: int
    data_config: object

    def __call__(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, self.layout.global_position(position)])
        image, label = self.split.train_example(rng, self.data_config)
        return {"image": image, "label": np.int32(label), "failed": np.full(TRAIN_ATTEMPTS, -1, np.int64)}


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """Index i -> {'image', 'label', 'mask', 'failed'} of example indices[i] read by `read`
    (-1: padding); an unreadable one gives zeros of `shape`, mask False and failed [index]."""
    read: Callable[[int], tuple[np.ndarray, int]]
    indices: np.ndarray
    shape: tuple[int, ...]

    def __call__(self, i: int) -> dict:
        index = int(self.indices[i])
        if index >= 0:
            try:
                image, label = self.read(index)
                return {"image": image, "label": np.int32(label), "mask": True, "failed": np.array([-1])}
            except UnreadableImage:
                pass
        return {"image": np.zeros(self.shape, np.uint8), "label": np.int32(0), "mask": False,
                "failed": np.array([index])}


# What the evaluation streams read: module-level functions (picklable for worker processes).


def _centre_crop(source: ImageSource, data_config, index: int) -> tuple[np.ndarray, int]:
    return transforms.centre_crop(source[index], data_config), source.labels[index]


def _whole(source: ImageSource, scale: int, index: int) -> tuple[np.ndarray, int]:
    return transforms.rescale_smallest_side(source[index], scale), source.labels[index]


def _synthetic_view(split: synthetic.Split, scale: int, crop: int | None, index: int) -> tuple[np.ndarray, int]:
    view = split.eval_view(index, scale, crop or scale)
    return synthetic.render(split.classes, view), view.label


def reader(source, data_config, scale: int | None = None) -> Callable[[int], tuple[np.ndarray, int]]:
    """index -> (pixels, label): the centre crop at eval_scale, or the whole image at `scale`."""
    if isinstance(source, synthetic.Split):
        crop = None if scale else data_config.crop_size
        return functools.partial(_synthetic_view, source, scale or data_config.eval_scale, crop)
    if scale:
        return functools.partial(_whole, source, scale)
    return functools.partial(_centre_crop, source, data_config)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def elements(examples: grain.MapDataset, workers: int, buffer: int) -> grain.IterDataset:
    """The examples in order, read `buffer` ahead by threads, in `workers` processes if > 0."""
    threads = max(1, usable_cores() // max(workers, 1))
    stream = examples.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))
    if workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; outside an absl app: defaults
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return stream


def train_examples(source, data_config, *, seed: int, layout: Layout) -> Callable[[int], dict]:
    if isinstance(source, synthetic.Split):
        return SyntheticTrainExamples(source, layout, seed, data_config)
    return TrainExamples(source, EpochOrder(layout.shard(source.num_examples), seed), layout, seed, data_config)


def train_stream(source, data_config, *, seed: int, start_step: int, layout: Layout) -> Iterator[dict]:
    """Endless {'image', 'label', 'failed'} batches of this process from step `start_step` on."""
    b = layout.local_batch
    examples = grain.MapDataset.range(start_step * b, END).map(train_examples(source, data_config, seed=seed,
                                                                              layout=layout))
    return iter(elements(examples, data_config.workers, 2 * b).batch(b, drop_remainder=True))


def eval_stream(source, data_config, *, layout: Layout, num_batches: int | None = None,
                scale: int | None = None) -> Iterator[dict]:
    """This process's shard once: centre crops in `num_batches` batches padded with mask False,
    or (scale given) whole images rescaled to smallest side `scale`, one at a time."""
    indices = layout.shard(source.num_examples)
    if num_batches is not None:
        indices = np.concatenate([indices, np.full(num_batches * layout.local_batch - len(indices), -1)])
    crop = data_config.crop_size
    examples = grain.MapDataset.range(len(indices)).map(
        EvalExamples(reader(source, data_config, scale), indices, (0, 0, 3) if scale else (crop, crop, 3)))
    stream = elements(examples, data_config.workers, 2 * layout.local_batch)
    return iter(stream.batch(layout.local_batch) if num_batches is not None else stream)
