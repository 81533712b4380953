"""Memory of the vgg16 train step with and without `remat`: `python -m benchmarks.memory`.

The memory figures are XLA's own buffer assignment for the library's compiled train step (SGD
momentum, state donated), read from `memory_analysis()` without running it. The step time at a
small batch is measured with both models interleaved in the same rounds. From temporaries at two
batch sizes the script projects the largest batch that fits an accelerator, assuming (1) the
state (parameters, momentum, and their updated copies, which donation aliases) is fixed, (2)
temporaries are linear in the batch, fitted through the two measured points, and (3) the
accelerator's compiler assigns buffers as XLA:CPU does (its convolution workspaces, fusion and
scheduling differ: treat the projection as an estimate within tens of percent).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.workloads import interleaved_medians, jax_functions, train_setup
from vgg_jax.train import steps

ACCELERATORS = {"H200 (141 GB)": 141e9, "TPU v5e chip (16 GB)": 16e9}
GB = 1e9


def train_step_memory(arch: str, batch: int, size: int = 224, **model_kwargs) -> tuple[float, float]:
    """(state bytes, temporary bytes) of the compiled train step at this batch size."""
    model, tx, train = train_setup(arch, **model_kwargs)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    state = jax.eval_shape(lambda v: steps.create_train_state(model, tx, 0, v), variables)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step = steps.jitted_train_step(model, tx, train)
    memory = step.lower(state, {"image": images, "label": labels}).compile().memory_analysis()
    fixed = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    return fixed, memory.temp_size_in_bytes


def largest_batch(fixed: float, temp_small: float, temp_large: float, small: int, large: int,
                  capacity: float) -> int:
    """The largest batch whose state plus linearly extrapolated temporaries fit `capacity`."""
    per_image = (temp_large - temp_small) / (large - small)
    base = temp_small - per_image * small
    return int((capacity - fixed - base) // per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--batches", type=int, nargs=2, default=(32, 64), help="the two batch sizes compiled")
    parser.add_argument("--time-batch", type=int, default=8, help="batch of the timed steps (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    small, large = args.batches
    print(f"{args.arch} train step (SGD momentum, 224x224), XLA:CPU memory analysis, jax {jax.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"| dtype | remat | state GB | temporaries GB at {small} / {large} | temporaries per image MB "
          f"| largest batch: {' / '.join(ACCELERATORS)} |")
    print("|---|---|---|---|---|---|")
    temps = {}
    for dtype in ("float32", "bfloat16"):
        for remat in (False, True):
            fixed, t_small = train_step_memory(args.arch, small, dtype=jnp.dtype(dtype), remat=remat)
            _, t_large = train_step_memory(args.arch, large, dtype=jnp.dtype(dtype), remat=remat)
            temps[dtype, remat] = t_large
            batches = [largest_batch(fixed, t_small, t_large, small, large, c) for c in ACCELERATORS.values()]
            print(f"| {dtype} | {remat} | {fixed / GB:.2f} | {t_small / GB:.2f} / {t_large / GB:.2f} "
                  f"| {(t_large - t_small) / (large - small) / 1e6:.0f} | {' / '.join(map(str, batches))} |",
                  flush=True)
        saving = 1 - temps[dtype, True] / temps[dtype, False]
        print(f"| {dtype} | | | remat: {saving:.0%} fewer temporaries at batch {large} | | |")
    if args.time_batch:
        rng = np.random.default_rng(0)
        images = rng.standard_normal((args.time_batch, 224, 224, 3), np.float32)
        labels = rng.integers(0, 1000, args.time_batch).astype(np.int32)
        steps = {f"remat={remat}": jax_functions(args.arch, jnp.float32, images, labels, remat=remat)[1]
                 for remat in (False, True)}
        seconds = interleaved_medians(steps, args.rounds)
        print(f"\nfloat32 train step at batch {args.time_batch}, median of {args.rounds} interleaved rounds "
              f"(load average {os.getloadavg()[0]:.2f}): without remat {seconds['remat=False']:.2f} s, "
              f"with {seconds['remat=True']:.2f} s ({seconds['remat=True'] / seconds['remat=False'] - 1:+.0%})")


if __name__ == "__main__":
    main()
