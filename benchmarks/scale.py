"""The input pipeline at ImageNet scale: per-step host cost, resume and start-up times.

Builds (once, under --dir) a tfds dataset with ImageNet's layout (TFRecord shards, auto-cache
off as for imagenet2012) and a class-per-folder tree of JPEGs, then prints a markdown table:
- host time per step: ms per train batch, read through `train_batches` (decode and augment
  included), and the per-step bookkeeping alone;
- time to the first batch when (re)starting at epochs 0, 3 and 10, for each source;
- folder start-up: `dataset_info` on a fresh process's cache (listing only);
- the paper's train preprocessing on one Grain thread, on ImageNet-size (500x375) JPEGs.

    python -m benchmarks.scale                                        # small: a minute or two
    python -m benchmarks.scale --train 20000 --shards 1024 --folder 20000   # the issue's sizes

Sizes are arguments; the defaults are small. Timings on a shared machine vary by tens of percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ml_collections

from benchmarks import datasets, pipeline
from configs import default
from vgg_jax.data import folders, input_pipeline as ip


def data_config(source: str, data_dir: str | None, shuffle_window: int) -> ml_collections.ConfigDict:
    config = default.get_config().data
    config.update(source=source, data_dir=data_dir, train_split="train",
                  eval_split="validation" if data_dir else "val", val_fraction=0.05,
                  shuffle_window=shuffle_window)
    return config


def first_batch_seconds(config, batch: int, epoch: int, num_train: int) -> float:
    """Seconds from creating the pipeline at `epoch` (mid-step of an epoch boundary) to its first batch."""
    start = time.perf_counter()
    next(ip.train_batches(config, global_batch_size=batch, seed=0,
                          start_step=epoch * num_train // batch + 1, process_index=0, process_count=1))
    return time.perf_counter() - start


def ms_per_batch(config, batch: int, num_batches: int) -> float:
    batches = ip.train_batches(config, global_batch_size=batch, seed=0,
                               process_index=0, process_count=1)
    for _ in range(5):  # warm up
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return 1e3 * (time.perf_counter() - start) / num_batches


def bookkeeping_us_per_step(config, batch: int, num_steps: int = 10_000) -> float:
    """The host's per-step work besides producing the batch: `_report_epochs` on ready batches."""
    split = ip._load_split(config, config.train_split)
    ready = ({"image": None, "label": None} for _ in range(num_steps))
    start = time.perf_counter()
    for _ in ip._report_epochs(ready, split, 0, batch):
        pass
    return 1e6 * (time.perf_counter() - start) / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/vgg_jax_scale", help="where the datasets are built (reused)")
    parser.add_argument("--train", type=int, default=4000, help="tfds train examples")
    parser.add_argument("--shards", type=int, default=256, help="tfds train shards (ImageNet: 1024)")
    parser.add_argument("--folder", type=int, default=4000, help="folder images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shuffle_window", type=int, default=16_384, help="ImageNet config's")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (the median is shown)")
    args = parser.parse_args()

    tfds_dir, folder = os.path.join(args.dir, f"tfds_{args.train}_{args.shards}"), os.path.join(args.dir, f"folder_{args.folder}")
    start = time.perf_counter()
    datasets.build_tfds(tfds_dir, num_train=args.train, num_val=max(args.shards, args.train // 20), num_classes=100,
                        train_shards=args.shards)  # reused once prepared
    if not os.path.exists(os.path.join(folder, ".complete")):
        datasets.build_folder(folder, num_images=args.folder, num_classes=100)
    print(f"datasets ready in {time.perf_counter() - start:.0f} s: {args.train} examples in {args.shards} "
          f"shards, {args.folder} files, batch {args.batch}, shuffle_window {args.shuffle_window}\n")

    sources = {"tfds": data_config(datasets.NAME, tfds_dir, args.shuffle_window),
               "folder": data_config(f"folder:{folder}", None, args.shuffle_window)}
    median = lambda f: statistics.median(f() for _ in range(args.repeats))  # noqa: E731

    def folder_start_up():
        folders.load_split.cache_clear()
        begin = time.perf_counter()
        ip.dataset_info(sources["folder"])
        return time.perf_counter() - begin

    rows = [("folder start-up (dataset_info)", f"{median(folder_start_up):.2f} s")]
    for name, config in sources.items():
        num_train = ip.dataset_info(config).num_train
        rows.append((f"{name}: host bookkeeping per step", f"{bookkeeping_us_per_step(config, args.batch):.1f} us"))
        rows.append((f"{name}: ms per batch of {args.batch} (2 cores, decode + augment)",
                     f"{ms_per_batch(config, args.batch, 30):.0f} ms"))
        for epoch in (0, 3, 10):
            seconds = median(lambda: first_batch_seconds(config, args.batch, epoch, num_train))
            rows.append((f"{name}: time to first batch at epoch {epoch}", f"{seconds:.2f} s"))
    config = ml_collections.ConfigDict(dict(pipeline.PAPER_TRAIN))
    rate, per_cpu = pipeline.new_per_core(pipeline.photo_jpegs(8), config, 200, through_grain=True)
    rows.append(("train preprocessing (Grain, 1 thread), 500x375 JPEGs",
                 f"{rate:.0f} img/s, {per_cpu:.0f} img per CPU-second"))
    print("| measure | value |\n|---|---|")
    for measure, value in rows:
        print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
