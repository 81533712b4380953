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

import dataclasses
import functools
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
    """Which part of a picture an example shows: `size` x `size` pixels from (y, x) of the picture
    rendered at `scale` x `scale`."""
    label: int
    scale: int
    y: int
    x: int
    size: int


def render(classes: int, views: list[View], noise: list[np.ndarray]) -> np.ndarray:
    """uint8 [n, size, size, 3]: each view of its class's picture plus its noise (uint8, 128 = 0).
    The grating sin(a u + b v + phase) = sin(a u + phase) cos(b v) + cos(a u + phase) sin(b v) is
    two outer products of a row and a column vector: no per-pixel trigonometry."""
    pictures = class_pictures(classes)
    labels = np.array([view.label for view in views])
    scale = np.array([view.scale for view in views], np.float32)[:, None]
    pixel = np.arange(views[0].size, dtype=np.float32) + 0.5
    u = (np.array([view.y for view in views], np.float32)[:, None] + pixel) / scale  # [n, size] on the unit square
    v = (np.array([view.x for view in views], np.float32)[:, None] + pixel) / scale
    row = pictures["frequency"][labels, :1] * u + pictures["phase"][labels, None]
    column = pictures["frequency"][labels, 1:] * v
    grating = (np.einsum("ni,nj->nij", np.sin(row), np.cos(column))
               + np.einsum("ni,nj->nij", np.cos(row), np.sin(column)))
    image = (pictures["background"][labels, None, None] + grating[..., None] * pictures["colour"][labels, None, None]
             + (np.stack(noise).astype(np.float32) - 128.0) * (NOISE / 128.0))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(size * size * 3), np.uint8).reshape(size, size, 3)


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

    def train_example(self, seed: int, process_index: int, position: int, crop: int, scale_min: int,
                      scale_max: int) -> tuple[View, np.ndarray]:
        """The view and noise at a train stream position: a random class, scale and window."""
        rng = np.random.default_rng([seed, process_index, position])
        label, scale = int(rng.integers(self.classes)), int(rng.integers(scale_min, scale_max + 1))
        y, x = (int(round(offset * (scale - crop))) for offset in rng.random(2))
        return View(label, scale, y, x, crop), _noise(rng, crop)

    def eval_example(self, index: int, scale: int, crop: int) -> tuple[View, np.ndarray]:
        """Validation example `index`: class index % classes, the centre crop x crop window at `scale`."""
        rng = np.random.default_rng([VAL_KEY, index])
        offset = (scale - crop) // 2
        return View(index % self.classes, scale, offset, offset, crop), _noise(rng, crop)

    def train_batches(self, data_config, *, local_batch: int, seed: int, start_step: int,
                      process_index: int) -> Iterator[dict]:
        """Endless {'image': uint8 [b, crop, crop, 3], 'label': int32 [b]}; positions from
        start_step * b on."""
        c = data_config
        for step in range(start_step, np.iinfo(np.int64).max):
            examples = [self.train_example(seed, process_index, position, c.crop_size, c.scale_min, c.scale_max)
                        for position in range(step * local_batch, (step + 1) * local_batch)]
            yield self._batch(examples)

    def eval_batches(self, data_config, *, local_batch: int, num_batches: int, process_index: int,
                     process_count: int) -> Iterator[dict]:
        """This process's shard of the split, then padding (mask False) up to `num_batches`."""
        indices = list(range(process_index, self.num_examples, process_count))
        for b in range(num_batches):
            chunk = indices[b * local_batch:(b + 1) * local_batch]
            real = [self.eval_example(i, data_config.eval_scale, data_config.crop_size) for i in chunk]
            padding = [self.eval_example(0, data_config.eval_scale, data_config.crop_size)] * (local_batch - len(chunk))
            batch = self._batch(real + padding)
            yield {**batch, "mask": np.arange(local_batch) < len(chunk)}

    def eval_images(self, scale: int, process_index: int, process_count: int) -> Iterator[tuple[np.ndarray, int]]:
        """(uint8 [scale, scale, 3], label): each whole picture of this process's shard at test scale Q."""
        for index in range(process_index, self.num_examples, process_count):
            view, noise = self.eval_example(index, scale, scale)
            yield render(self.classes, [view], [noise])[0], view.label

    def _batch(self, examples: list[tuple[View, np.ndarray]]) -> dict:
        views, noise = zip(*examples)
        return {"image": render(self.classes, list(views), list(noise)),
                "label": np.array([view.label for view in views], np.int32)}
