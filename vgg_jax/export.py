"""A model's inference as `jax.export` artefacts that run with jax and numpy alone (no vgg_jax, no flax).

  python -m vgg_jax.export --checkpoint runs/default --out exported
  python -m vgg_jax.export --checkpoint vgg16-397923af.pth --arch vgg16 --out exported --platforms cpu,tpu

--checkpoint is a training workdir, a model directory, pretrained:NAME, or a weight file (name its
--arch). The --out folder receives:

  logits.jax    (weights, images (b, S, S, 3)) -> logits (b, classes), any batch size b
  scores.jax    (weights, images (b, h, w, 3)) -> class score maps (b, h//32 - S//32 + 1, ..., classes),
                the fully-convolutional head on any h, w >= S (dense evaluation)
  weights.npz   the variables, flat ("params/conv1_1/kernel", ...): the artefacts' first argument
  model.json    the input convention (S, pixel range, the normalisation applied inside) and class names

Images are float32 RGB pixels on a 0-255 scale; the weights' mean, std and channel order are
applied inside the artefact. To run one:

    exported = jax.export.deserialize(open("exported/logits.jax", "rb").read())
    logits = exported.call(dict(np.load("exported/weights.npz")), images)
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import traverse_util

import vgg_jax
from vgg_jax.core import command_line, directory_writes
from vgg_jax.predict import class_names
from vgg_jax.weights import loading, model_directory

ARTEFACTS = {"logits": "logits.jax", "scores": "scores.jax"}
WEIGHTS_FILE, SPEC_FILE = "weights.npz", "model.json"
SEPARATOR = "/"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export accepts any name, so it is checked here

FLAGS = flags.FlagValues()  # this CLI's own, so that importing it defines no global flags
flags.DEFINE_string("checkpoint", None, "a training workdir, model directory, pretrained:NAME or weight file "
                    "(with --arch)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "the folder to write the artefacts to", flag_values=FLAGS)
flags.DEFINE_enum("arch", None, sorted(vgg_jax.ARCHITECTURES), "a weight file's architecture", flag_values=FLAGS)
flags.DEFINE_list("platforms", ["cpu", "cuda"], f"the platforms to export for, of {', '.join(PLATFORMS)}",
                  flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "out"], flag_values=FLAGS)


@flags.validator("platforms", flag_values=FLAGS)
def _known_platforms(platforms: list[str]) -> bool:
    if not platforms or not set(platforms) <= set(PLATFORMS):
        raise flags.ValidationError(f"give one or more of {', '.join(PLATFORMS)}")
    return True


def inference_function(model: vgg_jax.VGG, spec: model_directory.ModelSpec, dense: bool):
    """(flat weights, float32 RGB pixels) -> logits, or score maps if `dense`."""
    model = model.clone(conv_algorithm="direct")  # Winograd's choice reads concrete sizes

    def infer(flat_weights: dict, pixels: jax.Array) -> jax.Array:
        variables = traverse_util.unflatten_dict(flat_weights, sep=SEPARATOR)
        return model.apply(variables, spec.normalization.apply(pixels), dense=dense)

    return infer


def export_model(model: vgg_jax.VGG, variables: dict, spec: model_directory.ModelSpec,
                 platforms: tuple[str, ...] = ("cpu", "cuda")) -> tuple[dict[str, bytes], dict[str, np.ndarray], dict]:
    """({artefact file: serialised bytes}, flat weights, model.json's contents)."""
    if not model.include_top:
        raise ValueError("export needs a model with its classifier head (include_top=True)")
    flat = {key: np.asarray(value) for key, value in traverse_util.flatten_dict(variables, sep=SEPARATOR).items()}
    weight_specs = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in flat.items()}
    size = model.image_size
    batch = jax.export.symbolic_shape("b")[0]
    dense_shape = jax.export.symbolic_shape("b, h, w, 3", constraints=(f"h >= {size}", f"w >= {size}"))
    inputs = {"logits": (batch, size, size, 3), "scores": dense_shape}
    artefacts = {}
    for name, shape in inputs.items():
        infer = jax.jit(inference_function(model, spec, dense=name == "scores"))
        exported = jax.export.export(infer, platforms=platforms)(weight_specs, jax.ShapeDtypeStruct(shape, jnp.float32))
        artefacts[ARTEFACTS[name]] = bytes(exported.serialize())
    description = {
        "arch": spec.arch,
        "input": {"layout": "NHWC", "dtype": "float32", "channels": "RGB", "pixel_range": [0, 255],
                  "image_size": size, "normalization_applied_inside": spec.normalization.to_dict()},
        "artefacts": {"logits": {"file": ARTEFACTS["logits"], "images": f"(b, {size}, {size}, 3)",
                                 "output": "(b, classes)"},
                      "scores": {"file": ARTEFACTS["scores"], "images": f"(b, h, w, 3), h and w >= {size}",
                                 "output": "(b, h', w', classes)"}},
        "weights": WEIGHTS_FILE,
        "platforms": list(platforms),
        "class_names": class_names(spec, model.num_classes),
    }
    return artefacts, flat, description


def write(directory: str, artefacts: dict[str, bytes], flat: dict[str, np.ndarray], description: dict) -> None:
    """Writes the folder beside `directory` and renames it into place: an existing `directory`
    is replaced only when empty or an earlier export (these files and no others), else a
    ValueError (`directory_writes`)."""
    with directory_writes.replacing(directory, is_export, "an export folder") as temporary:
        os.makedirs(temporary)
        for file, data in artefacts.items():
            with open(os.path.join(temporary, file), "wb") as f:
                f.write(data)
        np.savez(os.path.join(temporary, WEIGHTS_FILE), **flat)
        with open(os.path.join(temporary, SPEC_FILE), "w") as f:
            json.dump(description, f, indent=1)


def is_export(directory: str) -> bool:
    return set(os.listdir(directory)) <= {*ARTEFACTS.values(), WEIGHTS_FILE, SPEC_FILE}


def main(argv: list[str] | None = None) -> int:
    extra = command_line.parse(FLAGS, argv, __doc__)
    if extra:
        print(f"error: export takes no positional arguments (see --help); got {' '.join(extra)!r}", file=sys.stderr)
        return 2
    try:
        model, variables, spec = loading.load(FLAGS.checkpoint, arch=FLAGS.arch)
        artefacts, flat, description = export_model(model, variables, spec, tuple(FLAGS.platforms))
        write(FLAGS.out, artefacts, flat, description)
    except (ValueError, OSError) as error:  # CheckpointError and WeightsError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{file} {len(data) / 1e3:.0f} kB" for file, data in artefacts.items())
    weight_bytes = sum(value.nbytes for value in flat.values())
    print(f"{FLAGS.out}: {sizes}, {WEIGHTS_FILE} {weight_bytes / 1e6:.1f} MB, {len(description['class_names'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
