"""The synthetic source: learnable images made on the host from numbers alone (no files, no TensorFlow).

`data.source='synthetic'` (10 classes) or `'synthetic:CLASSES'`. Each class is one picture on the
unit square: a background colour and an oriented grating (its own orientation, frequency, phase
and colour), drawn once from the class index; each example adds its own uniform pixel noise.
So a model can be seen to learn (chance is 1/CLASSES), and the whole harness (train, evaluate,
checkpoints, resume, eval.py) runs anywhere JAX does.

Images are rendered straight at the size asked for, as the paper's ops would cut them from a
real image: a train example is the picture at a random scale S in [scale_min, scale_max] and a
random crop_size window of it; evaluation takes the centre window at eval_scale, or the whole
picture at a test scale Q. Output: uint8 HxWx3 images and int32 labels, like every source.

Order: the train example at stream position p of a process is a pure function of (seed,
process, p), so a run restarted at step k reproduces its batches; the validation split (
VAL_PER_CLASS examples per class, labels in turn) is a function of the example's index alone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import os
from typing import Iterator

import numpy as np

PREFIX = "synthetic"
DEFAULT_CLASSES = 10
TRAIN_PER_CLASS = 100  # an epoch's nominal size: every train position gets fresh noise
VAL_PER_CLASS = 50
NOISE = 64.0  # uniform pixel noise in [-NOISE, NOISE] on the 0-255 scale
PATTERN_KEY = 0x5EED  # the class pictures are the same for every run seed
VAL_KEY = 0xE7A1  # and so is the validation split


def num_classes(source: str) -> int | None:
    """The class count of a synthetic source name, None for another source; ValueError for a
    malformed count."""
    if source == PREFIX:
        return DEFAULT_CLASSES
    if not source.startswith(PREFIX + ":"):
        return None
    count = source[len(PREFIX) + 1:]
    if not count.isdigit() or int(count) < 2:
        raise ValueError(f"data.source={source!r}: give 'synthetic' or 'synthetic:CLASSES' with CLASSES >= 2")
    return int(count)


@functools.lru_cache(maxsize=None)
def class_pictures(classes: int) -> dict[str, np.ndarray]:
    """Each class's picture: background RGB [C, 3], grating RGB amplitude [C, 3], and the grating's
    angular frequencies along y and x [C, 2] and phase [C] on the unit square."""
    rngs = [np.random.default_rng([PATTERN_KEY, c]) for c in range(classes)]  # class c's alone, whatever the count
    angle = np.array([rng.uniform(0, np.pi) for rng in rngs])
    frequency = 2 * np.pi * np.array([rng.uniform(1.5, 4.0) for rng in rngs])  # cycles per picture side
    return {"background": np.array([rng.uniform(64, 192, 3) for rng in rngs], np.float32),
            "colour": np.array([rng.uniform(-60, 60, 3) for rng in rngs], np.float32),
            "frequency": np.stack([frequency * np.cos(angle), frequency * np.sin(angle)], -1).astype(np.float32),
            "phase": np.array([rng.uniform(0, 2 * np.pi) for rng in rngs], np.float32)}


@dataclasses.dataclass(frozen=True)
class View:
    """What one example shows: `size` x `size` pixels from (y, x) of class `label`'s picture
    rendered at `scale` x `scale`, with the pixel noise drawn from `noise_key`."""
    label: int
    scale: int
    y: int
    x: int
    size: int
    noise_key: tuple[int, ...]


def render(classes: int, view: View) -> np.ndarray:
    """uint8 [size, size, 3]: the view of its class's picture plus its noise. The grating
    sin(a u + b v + phase) = sin(a u + phase) cos(b v) + cos(a u + phase) sin(b v) is two outer
    products of a row and a column vector: no per-pixel trigonometry."""
    pictures = {name: values[view.label] for name, values in class_pictures(classes).items()}
    pixel = np.arange(view.size, dtype=np.float32) + 0.5
    row = pictures["frequency"][0] * (view.y + pixel) / view.scale + pictures["phase"]
    column = pictures["frequency"][1] * (view.x + pixel) / view.scale
    grating = np.outer(np.sin(row), np.cos(column))
    grating += np.outer(np.cos(row), np.sin(column))
    noise = np.frombuffer(np.random.default_rng(view.noise_key).bytes(view.size ** 2 * 3), np.uint8)
    image = grating[..., None] * pictures["colour"]
    image += pictures["background"] - NOISE
    image += noise.reshape(view.size, view.size, 3) * np.float32(2 * NOISE / 255)
    return np.clip(np.round(image, out=image), 0, 255, out=image).astype(np.uint8)


@functools.cache
def _workers() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="synthetic")


def render_batch(classes: int, views: list[View]) -> dict:
    """{'image': uint8 [n, size, size, 3], 'label': int32 [n]}; the examples are rendered in
    parallel threads (numpy releases the GIL), each a pure function of its view."""
    images = list(_workers().map(functools.partial(render, classes), views))
    return {"image": np.stack(images), "label": np.array([view.label for view in views], np.int32)}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a synthetic source: the train split, or the validation split (any other name)."""
    classes: int
    train: bool

    @property
    def class_names(self) -> list[str]:
        return [f"pattern{c}" for c in range(self.classes)]

    @property
    def num_examples(self) -> int:
        return self.classes * (TRAIN_PER_CLASS if self.train else VAL_PER_CLASS)

    def train_view(self, seed: int, process_index: int, position: int, crop: int, scale_min: int,
                   scale_max: int) -> View:
        """The example at a train stream position: a random class, scale S and crop window of it."""
        rng = np.random.default_rng([seed, process_index, position])
        label, scale = int(rng.integers(self.classes)), int(rng.integers(scale_min, scale_max + 1))
        y, x = (int(round(offset * (scale - crop))) for offset in rng.random(2))
        return View(label, scale, y, x, crop, noise_key=(seed, process_index, position, 1))

    def eval_view(self, index: int, scale: int, crop: int) -> View:
        """Validation example `index`: class index % classes, the centre crop x crop window at `scale`."""
        offset = (scale - crop) // 2
        return View(index % self.classes, scale, offset, offset, crop, noise_key=(VAL_KEY, index))

    def train_batches(self, data_config, *, local_batch: int, seed: int, start_step: int,
                      process_index: int) -> Iterator[dict]:
        """Endless {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]}; positions from
        start_step * b on."""
        c = data_config
        for step in itertools.count(start_step):
            positions = range(step * local_batch, (step + 1) * local_batch)
            yield render_batch(self.classes, [self.train_view(seed, process_index, p, c.crop_size, c.scale_min,
                                                              c.scale_max) for p in positions])

    def eval_batches(self, data_config, *, local_batch: int, num_batches: int, process_index: int,
                     process_count: int) -> Iterator[dict]:
        """This process's shard of the split, then padding (mask False) up to `num_batches`."""
        indices = list(range(process_index, self.num_examples, process_count))
        for b in range(num_batches):
            chunk = indices[b * local_batch:(b + 1) * local_batch]
            padded = chunk + [0] * (local_batch - len(chunk))
            batch = render_batch(self.classes, [self.eval_view(i, data_config.eval_scale, data_config.crop_size)
                                                for i in padded])
            yield {**batch, "mask": np.arange(local_batch) < len(chunk)}

    def eval_images(self, scale: int, process_index: int, process_count: int) -> Iterator[tuple[np.ndarray, int]]:
        """(uint8 [scale, scale, 3], label): each whole picture of this process's shard at test scale Q."""
        for index in range(process_index, self.num_examples, process_count):
            view = self.eval_view(index, scale, scale)
            yield render(self.classes, view), view.label
