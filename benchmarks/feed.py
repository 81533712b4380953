"""What the input pipeline costs the training loop: the same jitted train step fed by the folder
pipeline (train_batches -> prefetch_to_mesh, as train.py feeds it) and on one batch already on
the devices, alternately, in one run.

    python -m benchmarks.feed [--arch vgg11_bn] [--width 0.125] [--batch 32] [--steps 10]

The folder is benchmarks/pipeline.py's (500x375 photos, JPEG quality 90), with the paper's
augmentation (S in [256, 512], 224 crops; flip, colour shift and normalisation in the step).
On a CPU the step and the pipeline share the cores, so the gap is what the host's image work
takes from the step; on a GPU host it is what the GPU waits.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import jax

import vgg_jax
from benchmarks import pipeline
from configs import default
from vgg_jax.core import sharding
from vgg_jax.core.normalization import PAPER
from vgg_jax.data import augmentation, input_pipeline
from vgg_jax.train import steps


def timed_steps(step, state, batches, num_steps: int) -> tuple[object, float]:
    """(state, seconds) of `num_steps` steps on `batches`, after one untimed step."""
    state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in itertools.islice(batches, num_steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/vgg_jax_pipeline")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(pipeline.cpu_line())
    folder = pipeline.build_folder(os.path.join(args.dir, f"folder_{args.files}"), args.files)
    config = default.get_config()
    config.data.update(source=f"folder:{folder}", val_fraction=0.0, eval_scale=256, **pipeline.PAPER_TRAIN)
    config.train.update(batch_size=args.batch)
    model = vgg_jax.create_model(args.arch, num_classes=10, width=args.width, image_size=224)
    tx = steps.make_optimizer(config.train, steps_per_epoch=100)
    mesh = sharding.data_mesh()
    state = sharding.replicate(steps.create_train_state(model, tx, seed=0), mesh)
    step = steps.jitted_train_step(model, tx, config.train,
                                      augmentation.train_augmentation(config.data, PAPER, seed=0))
    feeds = {
        "folder pipeline (train_batches -> prefetch_to_mesh)": lambda: sharding.prefetch_to_mesh(
            input_pipeline.train_batches(config.data, global_batch_size=args.batch, seed=0), mesh),
        "one batch resident on the devices": lambda: itertools.repeat(resident),
    }
    resident = sharding.global_batch(next(input_pipeline.train_batches(
        config.data, global_batch_size=args.batch, seed=0)), mesh)
    rates = {name: [] for name in feeds}
    for _ in range(args.repeats):
        for name, feed in feeds.items():
            state, seconds = timed_steps(step, state, feed(), args.steps)
            rates[name].append(args.steps * args.batch / seconds)
    print(f"\n{args.arch} width {args.width}, 224 crops, batch {args.batch}, {jax.device_count()} device(s), "
          f"{args.steps} steps per measurement, alternated:\n")
    print("| feed | train img/s (each run) |\n|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {'; '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
