"""python -m vgg_jax.weights: download pretrained sets by name, or import weight files.

  python -m vgg_jax.weights list                              # the sets, their input and source
  python -m vgg_jax.weights download vgg16 [--out DIR]        # fetch, verify, convert (default: the cache)
  python -m vgg_jax.weights import vgg16-397923af.pth --arch vgg16 --out models/vgg16 [--num_classes N]

`import` reads a torchvision .pth, a timm .safetensors or a Keras .h5; the cache is
$VGG_JAX_HOME (default ~/.cache/vgg_jax).
"""

from __future__ import annotations

import sys

from absl import flags

from vgg_jax.core import checkpoints, command_line, models
from vgg_jax.weights import conversion, download, registry
from vgg_jax.weights.errors import WeightsError

FLAGS = flags.FlagValues()  # this CLI's own, so that importing it defines no global flags
flags.DEFINE_string("out", None, "the model directory to write (download: default the cache's NAME)",
                    flag_values=FLAGS)
flags.DEFINE_enum("arch", None, sorted(models.ARCHITECTURES), "import: the file's architecture", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "import: a new class count (fc8 starts afresh)", flag_values=FLAGS)

COMMANDS = {"list": 0, "download": 1, "import": 1}  # each command's count of positional arguments


def run(command: str, arguments: list[str]) -> str:
    """What the command did, as the line to print."""
    if command == "list":
        return "\n".join(f"{w.name:<12} {w.arch:<9} {'BGR, mean' if w.normalization.bgr else 'RGB, mean/std':<14} {w.url}"
                         for w in registry.WEIGHT_SETS.values())
    if command == "download":
        return f"ready: {download.ensure_model(arguments[0], FLAGS.out)}"
    if FLAGS.arch is None or FLAGS.out is None:
        raise WeightsError("import needs --arch (the file's architecture) and --out (the model directory to write)")
    spec = conversion.import_to_checkpoint(arguments[0], FLAGS.arch, FLAGS.out, FLAGS.num_classes)
    return f"wrote {FLAGS.out}: {spec.arch} {spec.model_kwargs}, input {spec.normalization}"


def main(argv: list[str] | None = None) -> None:
    positional = command_line.parse(FLAGS, argv, __doc__)
    command, arguments = (positional[0], positional[1:]) if positional else (None, [])
    if command not in COMMANDS or len(arguments) != COMMANDS[command]:
        print(f"error: give one of: list, download NAME, import FILE (see --help); got {' '.join(positional)!r}",
              file=sys.stderr)
        sys.exit(2)
    try:
        print(run(command, arguments))
    except (WeightsError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
