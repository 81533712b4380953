"""Neural style transfer (Gatys et al., 2016) of one picture after another (`vgg_jax.style`).

  python -m vgg_jax.stylize content.jpg style.jpg --out out.png
  python -m vgg_jax.stylize content.jpg style.jpg --out out.png --size 128 --steps 100 \\
      --optimizer adam --learning_rate 5 --pool max

Both pictures are rescaled so that their smallest side is --size; the result keeps the content
picture's aspect ratio. --model is a model directory, a training workdir, a weight file (read as
vgg19) or pretrained:NAME. Each optimisation step is one jitted call; a progress bar shows the loss.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from vgg_jax import style
from vgg_jax.core import command_line  # noqa: E402
from vgg_jax.core.models import POOLS  # noqa: E402
from vgg_jax.data import preprocessing as pp, transforms  # noqa: E402
from vgg_jax.weights import loading

FLAGS = flags.FlagValues()  # this CLI's own, so that importing it defines no global flags
flags.DEFINE_string("out", None, "where to write the result (PNG, JPEG, ...)", flag_values=FLAGS)
flags.DEFINE_string("model", "pretrained:vgg19", "model directory, training workdir, vgg19 weight file or "
                    "pretrained:NAME", flag_values=FLAGS)
flags.DEFINE_integer("size", 256, "smallest side of both pictures, in pixels (VGG pools five times)",
                     lower_bound=32, flag_values=FLAGS)
flags.DEFINE_integer("steps", 300, "optimisation steps", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("optimizer", "lbfgs", style.OPTIMIZERS, "optax's L-BFGS with its line search, or Adam",
                  flag_values=FLAGS)
flags.DEFINE_float("learning_rate", style.ADAM_LEARNING_RATE, "Adam's step in pixels (0-255 scale); L-BFGS's "
                   "line search needs none", flag_values=FLAGS)
flags.DEFINE_float("style_weight", 1e6, "weight of the style loss (Gram matrices)", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_float("content_weight", 1.0, "weight of the content loss (relu4_2)", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_float("tv_weight", 0.0, "total variation weight (smoothness)", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_enum("pool", "avg", sorted(POOLS), "the network's pooling: Gatys et al. average, or max as trained",
                  flag_values=FLAGS)
flags.mark_flag_as_required("out", flag_values=FLAGS)

_step = jax.jit(style.step, static_argnums=(3, 4))
_loss = jax.jit(style.Objective.__call__)


def rescaled(path: str, size: int) -> np.ndarray:
    """float32 pixels of the image at `path`, its smallest side rescaled to `size`."""
    return transforms.rescale_smallest_side(pp.load_image_file(path), size).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    pictures = command_line.parse(FLAGS, argv, __doc__)
    if len(pictures) != 2:
        print(f"error: give the content and the style picture (see --help); got {' '.join(pictures)!r}",
              file=sys.stderr)
        return 2
    try:
        content, style_image = [rescaled(path, FLAGS.size) for path in pictures]
        model, variables, spec = loading.load(FLAGS.model, arch="vgg19")
    except ValueError as error:  # as are CheckpointError and WeightsError
        print(f"error: {error}", file=sys.stderr)
        return 1
    loss = style.objective(model.clone(pool=FLAGS.pool), variables, spec.normalization, content, style_image,
                           style_weight=FLAGS.style_weight, content_weight=FLAGS.content_weight,
                           tv_weight=FLAGS.tv_weight)
    image, state = style.start(content, FLAGS.optimizer, FLAGS.learning_rate)
    with tqdm.trange(FLAGS.steps, desc="stylize", unit="step", file=sys.stderr) as bar:
        for _ in bar:
            image, state, value = _step(loss, image, state, FLAGS.optimizer, FLAGS.learning_rate)
            bar.set_postfix(loss=f"{float(value):.4g}")
    try:
        Image.fromarray(np.uint8(np.round(np.clip(image, 0, 255)))).save(FLAGS.out)
    except (OSError, ValueError) as error:  # a missing folder, an unknown extension
        print(f"error: cannot write {FLAGS.out}: {error}", file=sys.stderr)
        return 1
    print(f"{FLAGS.out}: {content.shape[1]}x{content.shape[0]} pixels, loss {float(_loss(loss, content)):.4g} "
          f"-> {float(_loss(loss, image)):.4g} in {FLAGS.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
