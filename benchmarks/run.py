"""Throughput of vgg_jax against a PyTorch reference, side by side: `python -m benchmarks.run`.

Prints one markdown table. Every timed function of one network (ours and torch's, forward and
train step) runs in every round, interleaved, so both sides see the same machine load; each
timed call follows an untimed call of the same function, because a framework's first call
after the other's ran 10-30% slower (allocator and thread-pool state). The table reports
medians over rounds and the ratio ours / torch. Achieved FLOP/s are given as a fraction of the
faster of a float32 matmul in torch and in jax, timed in the same rounds. `--quick` runs vgg16
alone (direct and Winograd convolutions) on a small batch, one round. torch is a benchmark dependency only: the library never
imports it.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch

import vgg_jax
from benchmarks.workloads import ARCHS, forward_flops, interleaved_medians, jax_functions
from configs import default as default_config
from vgg_jax.core.models import BLOCK_WIDTHS, FC_WIDTH, LAYOUTS
from vgg_jax.evaluate import methods

DENSE_SIZE = 384  # the paper's smallest test scale Q for dense evaluation
MATMUL_SIZE = 4096
# /proc/cpuinfo flags the ratios depend on (torch's oneDNN uses AVX-512, bf16 and AMX; XLA:CPU less so).
VECTOR_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_bf16": "AVX512_BF16", "amx_tile": "AMX"}


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """'<model name>, <n> CPUs; AVX2 yes, AVX-512F yes, AVX512_BF16 no, AMX no' (Linux; the model
    alone elsewhere)."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    extensions = "" if flags is None else "; " + ", ".join(
        f"{name} {'yes' if flag in flags else 'no'}" for flag, name in VECTOR_FLAGS.items())
    return f"{model}, {os.cpu_count()} CPUs{extensions}"


def matmuls() -> dict:
    """A float32 4096 x 4096 matmul in jax (default compiler options) and in torch: the faster
    one is the peak the networks are held against."""
    a, b = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32), torch.ones(MATMUL_SIZE, MATMUL_SIZE)
    matmul = jax.jit(jnp.matmul)
    return {"jax_matmul": lambda: matmul(a, a).block_until_ready(), "torch_matmul": lambda: b @ b}


# ---------------------------------------------------------------- PyTorch reference

def torch_vgg(layout: str, num_classes: int = 1000) -> torch.nn.Module:
    """torchvision's VGG built from our layout table, so the comparison has no extra dependency."""
    layers, channels = [], 3
    for width, kernels in zip(BLOCK_WIDTHS, LAYOUTS[layout]):
        for kernel in kernels:
            layers += [torch.nn.Conv2d(channels, width, kernel, padding=kernel // 2), torch.nn.ReLU()]
            channels = width
        layers.append(torch.nn.MaxPool2d(2))
    head = [torch.nn.Flatten(), torch.nn.Linear(channels * 7 * 7, FC_WIDTH), torch.nn.ReLU(),
            torch.nn.Dropout(), torch.nn.Linear(FC_WIDTH, FC_WIDTH), torch.nn.ReLU(),
            torch.nn.Dropout(), torch.nn.Linear(FC_WIDTH, num_classes)]
    return torch.nn.Sequential(*layers, *head)


def torch_functions(arch: str, images: np.ndarray, labels: np.ndarray):
    """(forward, train step) of the float32 reference: every row, bfloat16 ones included, is held
    against torch in float32 (its bf16 autocast ran 8x slower on an AVX2 CPU without bf16)."""
    net = torch_vgg(ARCHS[arch]).to(memory_format=torch.channels_last)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).long()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x)

    def train_step():
        net.train()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    return forward, train_step


# ---------------------------------------------------------------- measurements

# vgg_jax variants timed against the torch float32 reference: (dtype, plain jax.jit, VGG fields).
VARIANTS = {
    "float32": (jnp.float32, False, {}),
    "float32 winograd": (jnp.float32, False, {"conv_algorithm": "winograd"}),
    "bfloat16": (jnp.bfloat16, False, {}),
    "float32, plain jax.jit": (jnp.float32, True, {}),
    "float32 winograd, plain jax.jit": (jnp.float32, True, {"conv_algorithm": "winograd"}),
}


def compare(arch: str, variants: list[str], batch: int, rounds: int, rng: np.random.Generator) -> dict:
    """img/s of forward and train step of every variant and of torch, all in the same rounds,
    and the matmul peak in FLOP/s."""
    images = rng.standard_normal((batch, 224, 224, 3), np.float32)
    labels = rng.integers(0, 1000, batch).astype(np.int32)
    fns = {}
    for variant in variants:
        dtype, plain_jit, fields = VARIANTS[variant]
        fns[variant, "fwd"], fns[variant, "train"] = jax_functions(arch, dtype, images, labels, plain_jit, **fields)
    fns["torch", "fwd"], fns["torch", "train"] = torch_functions(arch, images, labels)
    seconds = interleaved_medians(fns | matmuls(), rounds)
    peak = 2 * MATMUL_SIZE**3 / min(seconds["jax_matmul"], seconds["torch_matmul"])
    return {name: batch / s for name, s in seconds.items()} | {"peak": peak}


def evaluation_costs(batch: int, rounds: int, rng: np.random.Generator) -> dict[str, float]:
    """VGG-16 evaluation, as vgg_jax.evaluate.ensemble runs it: dense evaluation at Q=384 over its conv
    stack alone on the same images, and multi-crop crops/s (one image's 5x5 grid and mirrors)."""
    images = jnp.asarray(rng.standard_normal((batch, DENSE_SIZE, DENSE_SIZE, 3), np.float32))
    crops = jnp.asarray(rng.standard_normal((1, 2 * methods.GRID**2, 224, 224, 3), np.float32))
    model, trunk = vgg_jax.vgg16(), vgg_jax.vgg16(include_top=False)
    variables = vgg_jax.jit(model.init)(jax.random.PRNGKey(0), images[:1, :224, :224])
    dense = vgg_jax.jit(lambda v, x: model.apply(v, x, dense=True))
    convs = vgg_jax.jit(lambda v, x: trunk.apply(v, x))
    multi_crop = vgg_jax.jit(lambda v, x: methods.crop_posteriors(model, v, x))
    seconds = interleaved_medians(dict(
        dense=lambda: dense(variables, images).block_until_ready(),
        convs=lambda: convs(variables, images).block_until_ready(),
        multi_crop=lambda: multi_crop(variables, crops).block_until_ready(),
    ), rounds)
    return {"dense_cost": seconds["dense"] / seconds["convs"],
            "crops_per_s": crops.shape[1] / seconds["multi_crop"]}


def pipeline_images_per_second(num_batches: int) -> float:
    """The library's train input pipeline: the offline digits source, the paper's augmentation."""
    from benchmarks import pipeline  # imports TensorFlow, so only when this row is measured

    data = default_config.get_config().data
    data.update(eval_scale=256, **pipeline.PAPER_TRAIN)
    return pipeline.train_images_per_second(data, global_batch_size=64, num_batches=num_batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vgg16 float32 only (direct, winograd), batch 2, one round")
    parser.add_argument("--batch", type=int, help="images per step (default 8; 2 with --quick)")
    parser.add_argument("--rounds", type=int, help="timed rounds per network (default 3; 1 with --quick)")
    args = parser.parse_args()
    batch = args.batch or (2 if args.quick else 8)
    rounds = args.rounds or (1 if args.quick else 3)
    rng = np.random.default_rng(0)

    if args.quick:
        runs = {"vgg16": ["float32", "float32 winograd"]}
    else:
        runs = {"vgg11": ["float32"], "vgg16": list(VARIANTS), "vgg19": ["float32"]}
    print(f"CPU: {cpu_description()}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, torch {torch.__version__}, "
          f"batch {batch}, 224x224, median of {rounds} interleaved round(s) (all variants of a network "
          f"and torch in the same rounds); peak: the faster float32 {MATMUL_SIZE}^2 matmul of jax and "
          f"torch, timed in the same rounds; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
    print("| network | vgg_jax variant (torch: float32) | forward img/s jax / torch (ratio) | train img/s jax / torch (ratio) "
          "| jax forward, train FLOP/s / peak | peak GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for arch, variants in runs.items():
        r = compare(arch, variants, batch, rounds, rng)
        flops = forward_flops(ARCHS[arch])
        torch_fwd, torch_train = r["torch", "fwd"], r["torch", "train"]
        for variant in variants:
            fwd, train = r[variant, "fwd"], r[variant, "train"]
            print(f"| {arch} | {variant} | {fwd:.2f} / {torch_fwd:.2f} ({fwd / torch_fwd:.2f}x) "
                  f"| {train:.2f} / {torch_train:.2f} ({train / torch_train:.2f}x) "
                  f"| {fwd * flops / r['peak']:.0%}, {train * 3 * flops / r['peak']:.0%} "
                  f"| {r['peak'] / 1e9:.0f} |", flush=True)
    print("\nFLOP/s count a direct convolution's multiply-adds, so Winograd rows can exceed 100%.")
    costs = evaluation_costs(1 if args.quick else 2, rounds, rng)
    print(f"\nvgg16 dense evaluation at Q={DENSE_SIZE}: {costs['dense_cost']:.2f}x the conv stack alone "
          f"on the same image; multi-crop: {costs['crops_per_s']:.2f} crops/s "
          f"({2 * methods.GRID**2} crops of one image per call)")
    print(f"input pipeline (offline digits source, S in [256, 512], 224 crops, flip, colour shift; "
          f"no JPEG decoding, see benchmarks/pipeline.py): "
          f"{pipeline_images_per_second(2 if args.quick else 10):.0f} img/s")


if __name__ == "__main__":
    main()
