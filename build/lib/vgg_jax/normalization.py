"""How a weight set expects its input pixels: channel order, mean and std on a 0-255 scale.

Carried by every checkpoint so that training, eval.py and predict apply the right one.
"""

from __future__ import annotations

import dataclasses

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
        return cls(tuple(values["mean_rgb"]), tuple(values["std_rgb"]), bool(values["bgr"]))


PAPER = Normalization()  # mean subtraction only (Sec. 2.1)
TORCHVISION = Normalization((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))
CAFFE_BGR = Normalization(IMAGENET_MEAN_RGB, (1.0, 1.0, 1.0), bgr=True)  # Keras 'caffe' mode
