"""The paper's test protocol (Sec. 4): the methods of `methods` over several test scales Q and an
ensemble of nets, on a dataset's evaluation split, reported as top-1/top-5 error tables.

A multi-scale row averages a method's posteriors over the test scales; an ensemble averages
each posterior over its nets, each net fed with its own normalisation. Data-parallel over
processes (each evaluates its shard of the split on its own devices; posteriors are gathered at
the end), with a progress bar (rate, ETA) per pass. Host memory: one (images, classes) float32
array per method and scale (1.8 GB for ImageNet's 50k validation images at three scales).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from vgg_jax.core import checkpoints, sharding
from vgg_jax.data import input_pipeline
from vgg_jax.evaluate.methods import METHODS, Member, load_member, scale_posteriors

log = logging.getLogger("vgg_jax.eval")

IMPORTED_SCALES = (256, 384, 512)  # default Q for weights without a training config (224 crop)


def check_scale(scale: int, crop: int) -> None:
    if scale < crop:
        raise ValueError(f"test scale Q={scale} is smaller than the model's crop size {crop}; "
                         f"choose Q >= {crop}")


def choose_scales(data_config, crop: int, scales: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(test scales, derived scales dropped for being smaller than the crop).

    Explicit `scales` must all fit the crop. Otherwise from the training scales (Sec. 4.2):
    fixed S gives Q in {S-32, S, S+32}; jittered [Smin, Smax] gives {Smin, (Smin+Smax)/2, Smax}.
    Without training scales (data_config.scale_min None: imported weights), the paper's
    multi-scale Q = 256, 384, 512 for a 224 crop, in proportion for other crops.
    """
    if scales:
        for scale in scales:
            check_scale(scale, crop)
        return list(dict.fromkeys(scales)), []
    if data_config.get("scale_min") is None:
        return [round(q * crop / 224) for q in IMPORTED_SCALES], []
    low, high = data_config.scale_min, data_config.scale_max
    derived = [low - 32, low, low + 32] if low == high else [low, (low + high) // 2, high]
    derived = list(dict.fromkeys(derived))
    return [q for q in derived if q >= crop], [q for q in derived if q < crop]


def error_rates(posteriors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 error in percent."""
    top5 = np.argsort(-posteriors, axis=1, kind="stable")[:, :5]
    hits = top5 == labels[:, None]
    return 100.0 * float(np.mean(~hits[:, 0])), 100.0 * float(np.mean(~hits.any(axis=1)))


def error_table(posteriors: dict, labels: np.ndarray, scales: Sequence[int]) -> list[dict]:
    """Rows (method, scales, top-1 and top-5 error) from {(method, scale): posteriors (N, C)} of
    the single-crop, dense and multi-crop methods: each method at each scale, then averaged
    over all scales when there are several."""
    def at(method, scale):
        if method == "dense+multi-crop":
            return (posteriors["dense", scale] + posteriors["multi-crop", scale]) / 2
        return posteriors[method, scale]

    rows = []
    for method in METHODS:
        entries = [(str(q), at(method, q)) for q in scales]
        if len(scales) > 1:
            entries.append((",".join(map(str, scales)), np.mean([p for _, p in entries], axis=0)))
        for label, values in entries:
            top1, top5 = error_rates(values, labels)
            rows.append({"method": method, "scales": label, "top1_error": top1, "top5_error": top5})
    return rows


def gather_processes(labels: np.ndarray, posteriors: dict) -> tuple[np.ndarray, dict]:
    """Every process's labels and posteriors, concatenated in process order (each process holds
    its shard of the split; arrays are padded to the longest shard for the all-gather)."""
    if jax.process_count() == 1:
        return labels, posteriors
    counts = multihost_utils.process_allgather(np.array(len(labels)))
    longest = int(counts.max())
    pad = lambda x: np.pad(x, [(0, longest - len(x))] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
    gathered = multihost_utils.process_allgather({"labels": pad(labels), **{
        method: pad(values) for method, values in posteriors.items()}})
    unpad = lambda x: np.concatenate([x[i, :n] for i, n in enumerate(counts)])  # noqa: E731
    return unpad(gathered.pop("labels")), {method: unpad(values) for method, values in gathered.items()}


def ensemble_posteriors(members: Sequence[Member], data_config, scales: Sequence[int], *,
                        batch_size: int = 8, num_images: int | None = None, pad_multiple: int = 32,
                        mesh=None) -> tuple[np.ndarray, dict]:
    """Labels (N,) and {(method, scale): posteriors (N, C) averaged over the members} for the
    single-crop, dense and multi-crop methods on data_config.eval_split (its first `num_images`),
    averaging over mirrors where the nets were trained with flips (data_config.flip).

    Data-parallel over processes: each reads and evaluates its shard of the split on its own
    devices (`mesh`, default: this process's), and the posteriors are gathered at the end.
    Each pass shows a progress bar with rate and ETA (process 0).
    """
    index, count = jax.process_index(), jax.process_count()
    mesh = sharding.data_mesh(jax.local_devices()) if mesh is None else mesh
    crop = max(member.model.image_size for member in members)
    for scale in scales:
        check_scale(scale, crop)
    class_names, num_eval = input_pipeline.split_info(data_config)
    check_classes(members, len(class_names), data_config.source)
    total = num_eval if num_images is None else min(num_images, num_eval)
    mine = len(range(index, total, count))  # the split's first `total` images are dealt round robin
    totals, labels = {}, None
    for member, scale in itertools.product(members, scales):
        start = time.time()
        images = input_pipeline.eval_images(data_config, scale=scale, process_index=index, process_count=count)
        progress = tqdm.tqdm(itertools.islice(images, mine), total=mine, unit="img", disable=index != 0,
                             desc=f"{member.source} Q={scale}", mininterval=5, smoothing=0.1)
        member_labels, posteriors = gather_processes(*scale_posteriors(
            member, progress, scale=scale, batch_size=batch_size, mesh=mesh, pad_multiple=pad_multiple,
            flips=data_config.flip))
        log.info("%s at Q=%d: %d images in %.1f s", member.source, scale, len(member_labels), time.time() - start)
        if labels is None:
            labels = member_labels
        assert np.array_equal(labels, member_labels), "every pass reads the split in the same order"
        for method, values in posteriors.items():
            totals[method, scale] = totals.get((method, scale), 0.0) + values / len(members)
    return labels, totals


def evaluate(members: Sequence[Member], data_config, scales: Sequence[int], **kwargs) -> dict:
    """The error table of the ensemble of `members` (one net: that net) on data_config.eval_split,
    with what was evaluated and the unreadable files skipped (counted over every process; the
    paths are this process's). kwargs: `ensemble_posteriors`'."""
    labels, posteriors = ensemble_posteriors(members, data_config, scales, **kwargs)
    skipped = {"count": input_pipeline.skipped_count(data_config),
               "paths": input_pipeline.skipped_files(data_config).paths}
    return {"checkpoints": [member.source for member in members], "split": data_config.eval_split,
            "num_images": len(labels), "skipped_files": skipped,
            "scales": list(scales), "rows": error_table(posteriors, labels, scales)}


def check_classes(members: Sequence[Member], num_classes: int, dataset: str) -> None:
    for member in members:
        if member.model.num_classes != num_classes:
            raise checkpoints.CheckpointError(
                f"{member.source} has {member.model.num_classes} classes but the dataset {dataset} "
                f"has {num_classes}")


def run(config, sources: Sequence[str], scales: Sequence[int] = (), arch: str | None = None, **kwargs) -> dict:
    """Loads the nets at `sources` (weight files as `arch`'s) and evaluates their ensemble at
    `scales` (default: the paper's three, from the config's training scales)."""
    members = [load_member(source, arch) for source in sources]
    crop = max(member.model.image_size for member in members)
    scales, dropped = choose_scales(config.data, crop, scales)
    if dropped:
        log.warning("test scales %s are smaller than the crop %d: left out", dropped, crop)
    return {**evaluate(members, config.data, scales, **kwargs), "dropped_scales": dropped}


def format_table(results: dict) -> str:
    lines = [f"{results['split']}: {results['num_images']} images, "
             f"{len(results['checkpoints'])} net(s): {', '.join(results['checkpoints'])}",
             f"{'method':<18} {'Q':<16} {'top-1 err %':>11} {'top-5 err %':>11}"]
    lines += [f"{row['method']:<18} {row['scales']:<16} {row['top1_error']:>11.2f} {row['top5_error']:>11.2f}"
              for row in results["rows"]]
    if results["skipped_files"]["count"]:
        lines.append(f"skipped {results['skipped_files']['count']} unreadable images: "
                     f"{results['skipped_files']['paths']}")
    if results.get("dropped_scales"):
        lines.append(f"left out test scales {results['dropped_scales']}: smaller than the crop")
    return "\n".join(lines)


def write_results(results: dict, directory: str) -> tuple[str, str]:
    """eval_results.json (everything) and eval_results.csv (the rows) in `directory`."""
    os.makedirs(directory, exist_ok=True)
    json_path, csv_path = (os.path.join(directory, f"eval_results.{ext}") for ext in ("json", "csv"))
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "scales", "top1_error", "top5_error"])
        writer.writeheader()
        writer.writerows(results["rows"])
    return json_path, csv_path
