"""The host input pipeline: the Grain path beside the tf.data one it replaced, in one run.

Real photos (scikit-learn's two samples, shifted and resized to 500x375, JPEG quality 90, as
ImageNet's typical file) through the paper's augmentation: S drawn from [256, 512], a 224 crop,
uint8 out (flip, colour shift and normalisation run on the device in both). Before: the tf.data
folder source of commit BEFORE (tf.image window decode + resize), loaded from git into a
temporary module. Now: `vgg_jax.data` (simplejpeg decode, Pillow resize, Grain).

    python -m benchmarks.pipeline [--files 600] [--batch 64] [--batches 60] [--repeats 2] [--big 20000]

Prints the CPU, its vector extensions and the load average, then markdown tables:
- per core: tf.data on one thread against the new transform in a plain loop and through Grain
  on one thread, images per second and per CPU-second (in-memory JPEGs);
- all cores: `train_batches` on the folder, before and now (threads; 1 and 2 worker processes),
  alternately (ABAB...), images per second and per CPU-second of this process (worker
  processes' CPU is not counted: their rows show it as n/a);
- start-up on a folder of --big files (hard links to 8 JPEGs): the listing, and the first batch
  at epoch 0 and on a resume at epoch 10, before and now.
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

import grain
import ml_collections
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from configs import default
from vgg_jax.data import decode, folders, input_pipeline as ip, transforms

BEFORE = "ea13bed765ed122712ff3284170d4766b8f8e268"  # main before the Grain path (issue 27)
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
        for module, wing in (("lazy_tensorflow", "data"), ("normalization", "core")):  # moved since BEFORE
            source = source.replace(f"from vgg_jax.{module} import", f"from vgg_jax.{wing}.{module} import")
        source = source.replace("from vgg_jax import digits, synthetic", "from vgg_jax.data import digits, synthetic")
        path = os.path.join(folder, f"before_{name}.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"before_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return tuple(modules)


def rates(images: int, wall: float, cpu: float) -> tuple[float, float]:
    return images / wall, images / cpu


def timed(iterator, count: int, images_each: int = 1) -> tuple[float, float]:
    """(images per second, per CPU-second of this process) over `count` items, after one."""
    next(iterator)  # warm up: tracing, listing, threads
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in itertools.islice(iterator, count):
        pass
    return rates(count * images_each, time.perf_counter() - wall, time.process_time() - cpu)


def tf_data_per_core(preprocess, jpegs: list[bytes], num_images: int) -> tuple[float, float]:
    """`preprocess(index, data)` over `jpegs` on one tf.data thread."""
    import tensorflow as tf

    data = tf.constant(jpegs)
    ds = tf.data.Dataset.range(num_images + 1).map(lambda i: preprocess(i, data[i % len(jpegs)]))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return timed(iter(ds.with_options(options)), num_images)


def crop_of(jpegs: list[bytes], config, index: int) -> np.ndarray:
    """The new path's train work on one image: decode, S and window from (seed, index), resize."""
    image = decode.decode(jpegs[index % len(jpegs)])
    return transforms.train_crop(image, np.random.default_rng([0, index]), config)


def new_per_core(jpegs: list[bytes], config, num_images: int, through_grain: bool) -> tuple[float, float]:
    """The new transform in a plain loop, or as a Grain MapDataset read by one thread."""
    if not through_grain:
        return timed((crop_of(jpegs, config, i) for i in range(num_images + 1)), num_images)
    ds = grain.MapDataset.range(num_images + 1).map(lambda i: crop_of(jpegs, config, i))
    return timed(iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=16))), num_images)


def train_images_per_second(data_config, *, global_batch_size: int = 256, num_batches: int = 20) -> float:
    """Images/s of `input_pipeline.train_batches` on this host with all its cores."""
    batches = ip.train_batches(data_config, global_batch_size=global_batch_size, seed=0,
                               process_index=0, process_count=1)
    return timed(batches, num_batches, global_batch_size)[0]


def cpu_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    vector = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")
              if f in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {' '.join(vector)}; load average (1, 5, 15 min) before: {load}"


def build_links(root: str, count: int) -> str:
    """root/class_<k>/<i>.jpg, 10 classes, `count` hard links to 8 photos (a big listing, little disk)."""
    if not os.path.exists(os.path.join(root, ".complete")):
        originals = build_folder(root + "_originals", 8)
        photos = [os.path.join(originals, f"class_{i}", f"{i}.jpg") for i in range(8)]
        for i in range(count):
            os.makedirs(os.path.join(root, f"class_{i % 10}"), exist_ok=True)
            os.link(photos[i % 8], os.path.join(root, f"class_{i % 10}", f"{i}.jpg"))
        open(os.path.join(root, ".complete"), "w").close()
    return root


def start_up(module, clear, config, batch: int, epoch: int) -> tuple[float, float]:
    """(listing seconds, first-batch seconds) of `module.train_batches` started at `epoch`."""
    clear()
    begin = time.perf_counter()
    num_train = module.dataset_info(config).num_train
    listed = time.perf_counter()
    next(module.train_batches(config, global_batch_size=batch, seed=0, start_step=epoch * num_train // batch,
                              process_index=0, process_count=1))
    return listed - begin, time.perf_counter() - listed


def per_core_table(before_ip, config, args) -> None:
    import tensorflow as tf

    jpegs, key = photo_jpegs(8), tf.constant([0, 0], tf.int64)
    stages = {
        "before: tf.data, window decode + resize (tf.image)":
            lambda: tf_data_per_core(lambda i, data: before_ip.preprocess_train(i, data, 0, data_config=config,
                                                                                key=key), jpegs, args.per_core_images),
        "now: simplejpeg + Pillow resize, plain loop": lambda: new_per_core(jpegs, config, args.per_core_images, False),
        "now: the same through Grain, 1 thread": lambda: new_per_core(jpegs, config, args.per_core_images, True),
    }
    print(f"\nPer core ({len(jpegs)} in-memory 500x375 JPEGs, S in [256, 512], 224 crops, uint8), alternated:\n")
    print("| host work per image | img/s | img per CPU-second |\n|---|---|---|")
    results = {name: [] for name in stages}
    for _ in range(args.repeats):
        for name, stage in stages.items():
            results[name].append(stage())
    for name, values in results.items():
        print(f"| {name} | {'; '.join(f'{w:.0f}' for w, _ in values)} | {'; '.join(f'{c:.0f}' for _, c in values)} |")


def all_cores_table(before_ip, config, args) -> None:
    def before():
        return before_ip.train_batches(config, global_batch_size=args.batch, seed=0, process_index=0, process_count=1)

    def now(workers):
        return lambda: ip.train_batches(ml_collections.ConfigDict({**config.to_dict(), "workers": workers}),
                                        global_batch_size=args.batch, seed=0, process_index=0, process_count=1)

    variants = {"before: tf.data": before, "now: Grain, threads in this process": now(0),
                "now: Grain, 1 worker process": now(1), "now: Grain, 2 worker processes": now(2)}
    results = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            results[name].append(timed(make(), args.batches, args.batch))
    print(f"\nAll {os.cpu_count()} cores, `train_batches`, folder of {args.files} files, batch {args.batch}, "
          f"{args.batches} batches per measurement, alternated:\n")
    print("| pipeline | img/s | img per CPU-second (this process) | vs before (median img/s) |\n|---|---|---|---|")
    reference = statistics.median(w for w, _ in results["before: tf.data"])
    for name, values in results.items():
        cpu = "n/a" if "worker" in name else "; ".join(f"{c:.0f}" for _, c in values)
        print(f"| {name} | {'; '.join(f'{w:.0f}' for w, _ in values)} | {cpu} | "
              f"{statistics.median(w for w, _ in values) / reference:.2f}x |")


def start_up_table(before_ip, config, args) -> None:
    import tensorflow  # noqa: F401  imported first: before's times start after it, as the issue measured

    big = build_links(os.path.join(args.dir, f"links_{args.big}"), args.big)
    config = ml_collections.ConfigDict({**config.to_dict(), "source": f"folder:{big}"})
    paths = {"before: tf.data": (before_ip, before_ip._load_folder_split.cache_clear),
             "now: Grain": (ip, folders.load_split.cache_clear)}
    print(f"\nStart-up, folder of {args.big} files, batch {args.batch} (seconds; each run):\n")
    print("| pipeline | listing | first batch, epoch 0 | first batch, resume at epoch 10 |\n|---|---|---|---|")
    for name, (module, clear) in paths.items():
        runs = [[start_up(module, clear, config, args.batch, epoch) for epoch in (0, 10)] for _ in range(args.repeats)]
        listing = "; ".join(f"{run[0][0]:.2f}" for run in runs)
        print(f"| {name} | {listing} | {'; '.join(f'{run[0][1]:.2f}' for run in runs)} | "
              f"{'; '.join(f'{run[1][1]:.2f}' for run in runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/vgg_jax_pipeline", help="where the JPEG folders are built (reused)")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--big", type=int, default=20_000, help="files of the start-up folder")
    parser.add_argument("--batch", type=int, default=64)
    # Long enough to drain what a pipeline buffered during the warm-up batch: over 15 batches tf.data's
    # AUTOTUNE prefetch, filled meanwhile, made Grain's threads look 0.81x of it; over 60, 1.22x.
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--per_core_images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="alternated measurements per variant")
    args = parser.parse_args()
    print(cpu_line())
    _, before_ip = load_before(os.path.join(args.dir, f"before_{BEFORE[:8]}"))
    folder = build_folder(os.path.join(args.dir, f"folder_{args.files}"), args.files)
    config = default.get_config().data
    config.update(source=f"folder:{folder}", val_fraction=0.0, eval_scale=256, **PAPER_TRAIN)
    per_core_table(before_ip, config, args)
    all_cores_table(before_ip, config, args)
    start_up_table(before_ip, config, args)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
