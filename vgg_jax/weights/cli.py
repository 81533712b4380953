"""python -m vgg_jax.weights: download pretrained sets by name, or import weight files.

  python -m vgg_jax.weights list
  python -m vgg_jax.weights download vgg16 [--out DIR]      (default DIR: $VGG_JAX_HOME/vgg16)
  python -m vgg_jax.weights import FILE --arch vgg16 --out DIR [--num-classes N]
"""

from __future__ import annotations

import argparse
import sys

import vgg_jax
from vgg_jax import checkpoints
from vgg_jax.weights import conversion, download, registry
from vgg_jax.weights.errors import WeightsError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vgg_jax.weights", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the pretrained sets, their input convention and source")
    command = commands.add_parser("download", help="fetch, verify and convert a pretrained set")
    command.add_argument("name", help=", ".join(registry.WEIGHT_SETS))
    command.add_argument("--out", help="model directory to write (default: the cache's NAME)")
    command = commands.add_parser("import", help="convert a torchvision/timm/Keras file to a model directory")
    command.add_argument("path", help=".pth/.pt/.bin (torch), .safetensors (timm) or .h5 (Keras)")
    command.add_argument("--arch", required=True, choices=sorted(vgg_jax.ARCHITECTURES))
    command.add_argument("--out", required=True, help="model directory to write")
    command.add_argument("--num-classes", type=int, help="a new class count: fc8 starts afresh")
    return parser


def run(args: argparse.Namespace) -> str:
    """What the command did, as the line to print."""
    if args.command == "list":
        return "\n".join(f"{w.name:<12} {w.arch:<9} {'BGR, mean' if w.normalization.bgr else 'RGB, mean/std':<14} {w.url}"
                          for w in registry.WEIGHT_SETS.values())
    if args.command == "download":
        return f"ready: {download.ensure_model(args.name, args.out)}"
    spec = conversion.import_to_checkpoint(args.path, args.arch, args.out, args.num_classes)
    return f"wrote {args.out}: {spec.arch} {spec.model_kwargs}, input {spec.normalization}"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        print(run(args))
    except (WeightsError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
