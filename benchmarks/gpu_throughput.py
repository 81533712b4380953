"""VGG-16 bfloat16 train-step and inference throughput with MFU on the default JAX device.

Run by benchmarks/gpu_check.sh: `python -m benchmarks.gpu_throughput --batch 256 --steps 20`.
Synthetic device-resident data, so this measures the model and step alone (no input pipeline).
MFU = achieved FLOP/s over --peak_tflops (989: H200 dense bf16); one VGG-16 forward on a 224
image is 15.47 GMAC = 30.9 GFLOP and a train step counts 3x that (forward + two backward).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.workloads import ARCHS, forward_flops, jax_functions


def seconds_per_call(fn, steps: int) -> float:
    """Median seconds of `steps` calls after two warm-up calls (compilation and autotuning)."""
    fn(), fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16", choices=sorted(ARCHS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak_tflops", type=float, default=989.0)
    args = parser.parse_args()

    keys = jax.random.split(jax.random.PRNGKey(0))
    images = jax.random.normal(keys[0], (args.batch, 224, 224, 3), jnp.float32)
    labels = jax.random.randint(keys[1], (args.batch,), 0, 1000)
    forward, train_step = jax_functions(args.arch, jnp.bfloat16, images, labels)

    flops = forward_flops(ARCHS[args.arch])
    peak = args.peak_tflops * 1e12
    print(f"{args.arch} bfloat16 compute (float32 params), batch {args.batch}, "
          f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    for name, fn, flops_per_image in (
        ("inference", forward, flops),
        ("train step", train_step, 3 * flops),
    ):
        images_per_s = args.batch / seconds_per_call(fn, args.steps)
        mfu = images_per_s * flops_per_image / peak
        print(f"{name}: {images_per_s:,.1f} img/s, MFU {mfu:.1%} of {args.peak_tflops:g} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
