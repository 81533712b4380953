"""Train-preprocessing throughput per CPU core: naive rescale-then-crop vs window decode.

Real JPEGs of ImageNet-like size (scikit-learn's two sample photos re-encoded at 500x375 and
1000x750) through the paper's augmentation: S drawn from [256, 512], a 224 crop, flip, colour
shift, normalisation. Both variants run on one thread, so the rates are per core.

    python benchmarks/pipeline.py [num_images]   # prints a markdown table

`train_images_per_second(data_config)` times the whole input pipeline for the main benchmark.
"""

from __future__ import annotations

import functools
import io
import itertools
import sys
import time

import ml_collections
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images

from vgg_jax import input_pipeline as ip
from vgg_jax import preprocessing as pp
from vgg_jax.normalization import PAPER

PAPER_TRAIN = ml_collections.ConfigDict(
    {"crop_size": 224, "scale_min": 256, "scale_max": 512, "flip": True, "color_shift_std": 0.1})


def sample_jpegs(size: tuple[int, int]) -> list[bytes]:
    """The sample photos resized to `size` (width, height), JPEG quality 90 as ImageNet's."""
    jpegs = []
    for photo in load_sample_images().images:
        buffer = io.BytesIO()
        Image.fromarray(photo).resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def naive_train_example(position, data, label, *, data_config, normalization, key):
    """The same augmentation, decoding and rescaling the whole image before cropping."""
    seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, position), 4)
    c = data_config
    scale = tf.random.stateless_uniform([], seeds[0], c.scale_min, c.scale_max + 1, dtype=tf.int32)
    image = pp.random_crop(pp.rescale_smallest_side(pp.decode(data), scale), c.crop_size, seeds[1])
    image = pp.pca_color_shift(pp.random_flip(image, seeds[2]), c.color_shift_std, seeds[3])
    return {"image": pp.normalize(image, normalization), "label": label}


def per_core_images_per_second(preprocess, jpegs: list[bytes], num_images: int) -> float:
    """Images/s of `preprocess` over `jpegs` on a single thread."""
    data = tf.constant(jpegs)
    fn = functools.partial(preprocess, data_config=PAPER_TRAIN, normalization=PAPER,
                           key=tf.constant([0, 0], tf.int64))
    ds = tf.data.Dataset.range(num_images).map(lambda i: fn(i, data[i % len(jpegs)], 0))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    for _ in ds.take(8):  # warm up: tracing and allocations
        pass
    start = time.perf_counter()
    for _ in ds:
        pass
    return num_images / (time.perf_counter() - start)


def train_images_per_second(data_config, *, global_batch_size: int = 256, num_batches: int = 20,
                            normalization=PAPER) -> float:
    """Images/s of `input_pipeline.train_batches` on this host with all its cores."""
    batches = ip.train_batches(data_config, global_batch_size=global_batch_size, normalization=normalization,
                               seed=0, process_index=0, process_count=1)
    next(batches)  # warm up: tracing, source loading, prefetch
    start = time.perf_counter()
    for _ in itertools.islice(batches, num_batches):
        pass
    return num_batches * global_batch_size / (time.perf_counter() - start)


def main(num_images: int = 200) -> None:
    print("| JPEG size | naive rescale-then-crop (img/s/core) | window decode (img/s/core) | speed-up |")
    print("|---|---|---|---|")
    for size in [(500, 375), (1000, 750)]:
        jpegs = sample_jpegs(size)
        naive = per_core_images_per_second(naive_train_example, jpegs, num_images)
        window = per_core_images_per_second(ip.preprocess_train, jpegs, num_images)
        print(f"| {size[0]}x{size[1]} | {naive:.0f} | {window:.0f} | {window / naive:.1f}x |")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
