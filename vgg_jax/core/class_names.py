"""The 1000 ImageNet (ILSVRC-2012) class names in the standard class order, as people read them.

`imagenet_classes.txt` is tensorflow-datasets 4.9.10's IMAGENET_LABELS_LIST
(`tensorflow_datasets/datasets/siscore/labels.py`, itself from the widely used
imagenet1000_clsidx_to_labels list), where the two WordNet synsets named 'crane' read
'crane (bird)' (134) and 'crane (machine)' (517), so all 1000 names differ. Its order is the
sorted-WordNet-id order of torchvision, Keras and tfds's imagenet2012 labels (0 tench .. 999
toilet tissue); each name agrees with torchvision's `_IMAGENET_CATEGORIES` at the same index.
"""

from __future__ import annotations

import functools
from importlib import resources

IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """Index -> name, e.g. 281 -> 'tabby, tabby cat'."""
    text = resources.files("vgg_jax.core").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())
