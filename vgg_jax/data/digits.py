"""The offline dataset: scikit-learn's bundled handwritten digits as 32x32 RGB images.

1797 8x8 images with pixels 0-16 and 10 classes. A fixed stratified split (seed 0) gives
1437 train and 360 test images; each pixel becomes a 4x4 block on a 0-255 scale.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn import datasets, model_selection

SPLITS = ("train", "test")
CLASS_NAMES = [str(digit) for digit in range(10)]
NUM_TEST = 360  # 20%, stratified


@functools.lru_cache(maxsize=None)
def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, 32, 32, 3], int32 labels [n]) of the 'train' or 'test' split."""
    if split not in SPLITS:
        raise ValueError(f"digits has splits {SPLITS}, not {split!r}")
    digits = datasets.load_digits()
    train, test = model_selection.train_test_split(
        np.arange(len(digits.target)), test_size=NUM_TEST, stratify=digits.target, random_state=0)
    indices = np.sort(train if split == "train" else test)
    pixels = np.round(digits.images[indices] * (255 / 16)).astype(np.uint8)
    upsampled = pixels.repeat(4, axis=1).repeat(4, axis=2)
    return np.stack([upsampled] * 3, axis=-1), digits.target[indices].astype(np.int32)
