"""The host input pipeline, side by side with the code before uint8 batches, in one run.

Real photos (scikit-learn's two samples, shifted and resized to 500x375, JPEG quality 90, as
ImageNet's typical file) through the paper's augmentation: S drawn from [256, 512], a 224 crop.
Before (commit BEFORE, loaded from git into a temporary module): the host also flipped,
colour-shifted and normalised, and yielded float32. Now: the host yields uint8 crops and the
device does that arithmetic (vgg_jax.augmentation).

    python -m benchmarks.pipeline [--files 600] [--batch 64] [--batches 15] [--repeats 2]

Prints the CPU, its vector extensions and the load average, then two markdown tables:
- per core (one tf.data thread, in-memory JPEG bytes): each stage's images/s;
- all cores, the folder source through `train_batches`, before and now alternately (ABAB...),
  plus now on the same files' bytes held in memory (what reading files and the folder source's
  per-file error handling cost).
`train_images_per_second(data_config)` times the whole input pipeline for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time

import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images

from configs import default
from vgg_jax import input_pipeline as ip
from vgg_jax import preprocessing as pp
from vgg_jax.normalization import PAPER

BEFORE = "6c453f81017de7891945221853276794c6e4d8a8"  # main before uint8 batches (issue 18)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TRAIN = ml_collections.ConfigDict(
    {"crop_size": 224, "scale_min": 256, "scale_max": 512, "flip": True, "color_shift_std": 0.1})


def photo_jpegs(count: int, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """`count` distinct photos: the two samples, each shifted by a few pixels, resized to `size`
    (width, height) and saved at JPEG quality 90 as ImageNet's files."""
    photos = load_sample_images().images
    jpegs = []
    for i in range(count):
        shifted = np.roll(photos[i % 2], 7 * (i // 2), axis=1)
        buffer = io.BytesIO()
        Image.fromarray(shifted).resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def build_folder(root: str, count: int) -> str:
    """root/class_<k>/<i>.jpg, 10 classes, once (root/.complete marks it built)."""
    if not os.path.exists(os.path.join(root, ".complete")):
        for i, data in enumerate(photo_jpegs(count)):
            os.makedirs(os.path.join(root, f"class_{i % 10}"), exist_ok=True)
            with open(os.path.join(root, f"class_{i % 10}", f"{i}.jpg"), "wb") as f:
                f.write(data)
        open(os.path.join(root, ".complete"), "w").close()
    return root


def load_before(folder: str) -> tuple:
    """(preprocessing, input_pipeline) modules of commit BEFORE, read with `git show` into
    `folder` (kept: tf.function reads their source)."""
    os.makedirs(folder, exist_ok=True)
    modules = []
    for name in ("preprocessing", "input_pipeline"):
        source = subprocess.run(["git", "-C", ROOT, "show", f"{BEFORE}:vgg_jax/{name}.py"], check=True,
                                capture_output=True, text=True).stdout
        source = source.replace("from vgg_jax import preprocessing as pp", "import before_preprocessing as pp")
        path = os.path.join(folder, f"before_{name}.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"before_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return tuple(modules)


def per_core_images_per_second(preprocess, jpegs: list[bytes], num_images: int) -> float:
    """Images/s of `preprocess(index, data)` over `jpegs` on one tf.data thread."""
    data = tf.constant(jpegs)
    ds = tf.data.Dataset.range(num_images).map(lambda i: preprocess(i, data[i % len(jpegs)]))
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


def train_preprocessing_per_core(num_images: int = 200) -> float:
    """Images/s per core of `preprocess_train` (the paper's S in [256, 512], 224 crops) on 500x375 photos."""
    config, key = ml_collections.ConfigDict(dict(PAPER_TRAIN)), tf.constant([0, 0], tf.int64)
    return per_core_images_per_second(lambda i, data: ip.preprocess_train(i, data, 0, data_config=config, key=key),
                                      photo_jpegs(8), num_images)


def images_per_second(batches, global_batch_size: int, num_batches: int) -> float:
    next(batches)  # warm up: tracing, source loading, prefetch
    start = time.perf_counter()
    for _ in itertools.islice(batches, num_batches):
        pass
    return num_batches * global_batch_size / (time.perf_counter() - start)


def train_images_per_second(data_config, *, global_batch_size: int = 256, num_batches: int = 20) -> float:
    """Images/s of `input_pipeline.train_batches` on this host with all its cores."""
    batches = ip.train_batches(data_config, global_batch_size=global_batch_size, seed=0,
                               process_index=0, process_count=1)
    return images_per_second(batches, global_batch_size, num_batches)


def cpu_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    vector = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16") if f in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {' '.join(vector)}; load average (1, 5, 15 min) before: {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/vgg_jax_pipeline", help="where the JPEG folder is built (reused)")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=15, help="timed batches per measurement")
    parser.add_argument("--per_core_images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="alternated measurements per variant")
    args = parser.parse_args()
    print(cpu_line())
    _, before_ip = load_before(os.path.join(args.dir, f"before_{BEFORE[:8]}"))
    folder = build_folder(os.path.join(args.dir, f"folder_{args.files}"), args.files)
    config = default.get_config().data
    config.update(source=f"folder:{folder}", val_fraction=0.0, eval_scale=256, **PAPER_TRAIN)
    key = tf.constant([0, 0], tf.int64)

    jpegs = photo_jpegs(8)
    stages = {
        "decode the whole JPEG": lambda i, data: pp.decode(data),
        "now: window decode + resize to 224 -> uint8 (preprocess_train)":
            lambda i, data: ip.preprocess_train(i, data, 0, data_config=config, key=key),
        "before: the same + flip, colour shift, normalisation, float32 out":
            lambda i, data: before_ip.preprocess_train(i, data, 0, data_config=config, normalization=PAPER, key=key),
    }
    print(f"\nPer core (one tf.data thread, {len(jpegs)} in-memory 500x375 JPEGs):\n")
    print("| host work per image | img/s per core |\n|---|---|")
    for name, stage in stages.items():
        rates = [per_core_images_per_second(stage, jpegs, args.per_core_images) for _ in range(args.repeats)]
        print(f"| {name} | {'; '.join(f'{r:.0f}' for r in rates)} |")

    def before():  # the code of BEFORE reads the window under its old name
        old_config = ml_collections.ConfigDict({**config.to_dict(), "shuffle_buffer": config.shuffle_window})
        return before_ip.train_batches(old_config, global_batch_size=args.batch, normalization=PAPER, seed=0,
                                       process_index=0, process_count=1)

    def now():
        return ip.train_batches(config, global_batch_size=args.batch, seed=0, process_index=0, process_count=1)

    def now_in_memory():
        files = ip._load_split(config, config.train_split)
        in_memory = ip._IndexedSplit(np.array([open(p, "rb").read() for p in files.data], dtype=object),
                                     files.labels, files.class_names, from_files=False)
        load_split, ip._load_split = ip._load_split, lambda *_: in_memory
        try:
            return now()
        finally:
            ip._load_split = load_split

    variants = {"before (float32 out, flip/colour/normalise on the host)": before, "now (uint8 out)": now,
                "now, the same files' bytes in memory (no per-file error handling)": now_in_memory}
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            rates[name].append(images_per_second(make(), args.batch, args.batches))
    print(f"\nAll {os.cpu_count()} cores, `train_batches`, folder of {args.files} files, batch {args.batch}, "
          f"{args.batches} batches per measurement, alternated:\n")
    print("| pipeline | img/s (each run) | vs before (median) |\n|---|---|---|")
    reference = statistics.median(rates[next(iter(variants))])
    for name, values in rates.items():
        print(f"| {name} | {'; '.join(f'{v:.0f}' for v in values)} | "
              f"{statistics.median(values) / reference:.2f}x |")
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
