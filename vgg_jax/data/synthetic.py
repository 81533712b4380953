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

Order: a train example is drawn from an RNG keyed on (seed, global position) (`vgg_jax.data.pipeline`),
so a run restarted at step k reproduces its batches; the validation split (
VAL_PER_CLASS examples per class, labels in turn) is a function of the example's index alone.
"""

from __future__ import annotations

import dataclasses
import functools

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

    def train_example(self, rng: np.random.Generator, data_config) -> tuple[np.ndarray, int]:
        """(uint8 crop, label): a random class, scale S and crop window of it, and its noise,
        all drawn from `rng` (the example's: keyed on the run seed and its position)."""
        c = data_config
        label, scale = int(rng.integers(self.classes)), int(rng.integers(c.scale_min, c.scale_max + 1))
        y, x = (int(round(offset * (scale - c.crop_size))) for offset in rng.random(2))
        view = View(label, scale, y, x, c.crop_size, noise_key=tuple(int(k) for k in rng.integers(2 ** 63, size=2)))
        return render(self.classes, view), label

    def eval_view(self, index: int, scale: int, crop: int) -> View:
        """Validation example `index`: class index % classes, the centre crop x crop window at `scale`."""
        offset = (scale - crop) // 2
        return View(index % self.classes, scale, offset, offset, crop, noise_key=(VAL_KEY, index))
