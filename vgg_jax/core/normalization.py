"""How a weight set expects its input pixels: channel order, mean and std on a 0-255 scale.

Carried by every checkpoint so that training, eval.py and predict apply the right one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)  # the paper's training-set mean (0-255)


@dataclasses.dataclass(frozen=True)
class Normalization:
    mean_rgb: tuple[float, float, float] = IMAGENET_MEAN_RGB
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False  # Caffe/Keras weights take BGR channels

    def apply(self, pixels):
        """(pixels - mean) / std per RGB channel, then RGB -> BGR for weights that expect it: model
        inputs from float pixels on a 0-255 scale, as NumPy, JAX or TensorFlow arrays alike."""
        image = (pixels - np.float32(self.mean_rgb)) / np.float32(self.std_rgb)
        return image[..., ::-1] if self.bgr else image

    def to_dict(self) -> dict:
        return {"mean_rgb": list(self.mean_rgb), "std_rgb": list(self.std_rgb), "bgr": self.bgr}

    @classmethod
    def from_dict(cls, values: dict) -> "Normalization":
        """From a file: a ValueError naming the field unless the means are 3 finite numbers, the
        stds 3 finite numbers > 0 (a std of 0 or NaN would make every score NaN) and bgr a bool."""
        if not isinstance(values, dict):
            raise ValueError("normalization: not a JSON object")
        mean, std = three_numbers(values, "mean_rgb"), three_numbers(values, "std_rgb")
        if not all(value > 0 for value in std):
            raise ValueError(f"normalization.std_rgb: {list(std)}: each std must be > 0")
        if not isinstance(values.get("bgr"), bool):
            raise ValueError(f"normalization.bgr: {values.get('bgr')!r:.40}: must be true or false")
        return cls(mean, std, values["bgr"])


def three_numbers(values: dict, key: str) -> tuple[float, float, float]:
    """values[key] as 3 finite floats (one per RGB channel), else a ValueError naming it."""
    numbers = values.get(key)
    floats = [finite_float(x) for x in numbers] if isinstance(numbers, (list, tuple)) else []
    if len(floats) != 3 or None in floats:
        raise ValueError(f"normalization.{key}: {numbers!r:.60}: must be 3 finite numbers")
    return tuple(floats)


def finite_float(value) -> float | None:
    """A JSON number as a finite float; None for anything else (NaN, infinities, an int too
    large for a float, a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


PAPER = Normalization()  # mean subtraction only (Sec. 2.1)
TORCHVISION = Normalization((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))
CAFFE_BGR = Normalization(IMAGENET_MEAN_RGB, (1.0, 1.0, 1.0), bgr=True)  # Keras 'caffe' mode
