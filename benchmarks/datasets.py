"""Synthetic datasets with ImageNet's layout, built locally for the scale benchmark and the tests.

- `build_tfds(data_dir, ...)`: a tfds image-classification dataset ('synthetic_images') prepared
  as TFRecord shards, as tfds prepares imagenet2012 (`train_shards` files for train).
- `build_folder(root, ...)`: a class-per-folder tree of JPEGs.
Images are small random-colour JPEGs (or `image_size`), labels cycle over the classes.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "synthetic_images"


def jpeg(index: int, size: tuple[int, int], quality: int = 90) -> bytes:
    """A (width, height) JPEG with a smooth random gradient: compresses like a photo, not like noise."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    corners = rng.uniform(0, 255, (4, 3))
    image = ((1 - y)[..., None] * ((1 - x)[..., None] * corners[0] + x[..., None] * corners[1])
             + y[..., None] * ((1 - x)[..., None] * corners[2] + x[..., None] * corners[3]))
    image += rng.normal(0, 8, image.shape)  # a little texture
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class SyntheticImages(tfds.core.GeneratorBasedBuilder):
    """Images and labels sized by the builder's `sizes` (set by `build_tfds`)."""

    VERSION = tfds.core.Version("1.0.0")
    url_infos = None  # nothing to download (tfds would look for a checksums file beside the code)
    sizes = {"num_train": 64, "num_val": 16, "num_classes": 4, "image_size": (40, 30)}

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self.sizes["num_classes"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, self.sizes["num_train"]),
                "validation": self._generate_examples(10**9, self.sizes["num_val"])}

    def _generate_examples(self, first, count):
        for i in range(first, first + count):
            yield i, {"image": io.BytesIO(jpeg(i, self.sizes["image_size"])),
                      "label": i % self.sizes["num_classes"]}


def build_tfds(data_dir: str, *, num_train: int = 64, num_val: int = 16, num_classes: int = 4,
               train_shards: int = 8, image_size: tuple[int, int] = (40, 30)) -> str:
    """Prepares 'synthetic_images' under `data_dir` and returns its name for `config.data.source`.
    tfds gives every split `train_shards` shards, so num_val must be at least that."""
    SyntheticImages.sizes = {"num_train": num_train, "num_val": num_val, "num_classes": num_classes,
                             "image_size": tuple(image_size)}
    builder = SyntheticImages(data_dir=data_dir)
    config = tfds.download.DownloadConfig(num_shards=train_shards)
    builder.download_and_prepare(download_config=config)
    return NAME


def build_folder(root: str, *, num_images: int = 64, num_classes: int = 4,
                 image_size: tuple[int, int] = (40, 30)) -> str:
    """root/class_<k>/<i>.jpg for i < num_images, then root/.complete; returns root."""
    for i in range(num_images):
        folder = os.path.join(root, f"class_{i % num_classes}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i}.jpg"), "wb") as f:
            f.write(jpeg(i, image_size))
    open(os.path.join(root, ".complete"), "w").close()  # hidden: not listed as a class
    return root
