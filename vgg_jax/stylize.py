"""Neural style transfer (Gatys et al., 2016) of one picture after another (`vgg_jax.style`).

  python -m vgg_jax.stylize content.jpg style.jpg --out out.png [--model pretrained:vgg19]
      [--size 256] [--steps 300] [--optimizer lbfgs|adam] [--style-weight 1e6] [--tv-weight 0]

Both pictures are rescaled so that their smallest side is --size; the result keeps the content
picture's aspect ratio. --model is a model directory, a training workdir, a weight file (read as
vgg19) or pretrained:NAME. Each optimisation step is one jitted call; a progress bar shows the loss.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from PIL import Image  # noqa: E402

from vgg_jax import loading, style  # noqa: E402
from vgg_jax import preprocessing as pp  # noqa: E402
from vgg_jax.models import POOLS  # noqa: E402

_step = jax.jit(style.step, static_argnums=(3, 4))
_loss = jax.jit(style.Objective.__call__)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("content", help="the picture to restyle")
    parser.add_argument("style", help="the picture whose style to take")
    parser.add_argument("--out", required=True, help="where to write the result (PNG, JPEG, ...)")
    parser.add_argument("--model", default="pretrained:vgg19",
                        help="model directory, training workdir, vgg19 weight file or pretrained:NAME")
    parser.add_argument("--size", type=int, default=256, help="smallest side of both pictures, in pixels")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", choices=style.OPTIMIZERS, default="lbfgs")
    parser.add_argument("--learning-rate", type=float, default=style.ADAM_LEARNING_RATE,
                        help="Adam's step in pixels (0-255 scale); L-BFGS's line search needs none")
    parser.add_argument("--style-weight", type=float, default=1e6)
    parser.add_argument("--content-weight", type=float, default=1.0)
    parser.add_argument("--tv-weight", type=float, default=0.0, help="total variation weight (smoothness)")
    parser.add_argument("--pool", choices=sorted(POOLS), default="avg",
                        help="the network's pooling: Gatys et al. average (default), or max as trained")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error(f"--size must be at least 32 (VGG's five poolings), got {args.size}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def rescaled(path: str, size: int) -> np.ndarray:
    """float32 pixels of the image at `path`, its smallest side rescaled to `size`."""
    return pp.rescale_smallest_side(pp.load_image_file(path), size).numpy()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        content, style_image = rescaled(args.content, args.size), rescaled(args.style, args.size)
        model, variables, spec = loading.load(args.model, arch="vgg19")
    except ValueError as error:  # as are CheckpointError and WeightsError
        print(f"error: {error}", file=sys.stderr)
        return 1
    loss = style.objective(model.clone(pool=args.pool), variables, spec.normalization, content, style_image,
                           style_weight=args.style_weight, content_weight=args.content_weight,
                           tv_weight=args.tv_weight)
    image, state = style.start(content, args.optimizer, args.learning_rate)
    with tqdm.trange(args.steps, desc="stylize", unit="step", file=sys.stderr) as bar:
        for _ in bar:
            image, state, value = _step(loss, image, state, args.optimizer, args.learning_rate)
            bar.set_postfix(loss=f"{float(value):.4g}")
    try:
        Image.fromarray(np.uint8(np.round(np.clip(image, 0, 255)))).save(args.out)
    except (OSError, ValueError) as error:  # a missing folder, an unknown extension
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {content.shape[1]}x{content.shape[0]} pixels, loss {float(_loss(loss, content)):.4g} "
          f"-> {float(_loss(loss, image)):.4g} in {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
