"""A model's inference as `jax.export` artefacts that run with jax and numpy alone (no vgg_jax, no flax).

  python -m vgg_jax.export --checkpoint SOURCE --out DIR [--arch vgg16] [--platforms cpu,cuda]

SOURCE is a training workdir, a model directory, pretrained:NAME, or a weight file (name its
--arch). DIR receives:

  logits.jax    (weights, images (b, S, S, 3)) -> logits (b, classes), any batch size b
  scores.jax    (weights, images (b, h, w, 3)) -> class score maps (b, h//32 - S//32 + 1, ..., classes),
                the fully-convolutional head on any h, w >= S (dense evaluation)
  weights.npz   the variables, flat ("params/conv1_1/kernel", ...): the artefacts' first argument
  model.json    the input convention (S, pixel range, the normalisation applied inside) and class names

Images are float32 RGB pixels on a 0-255 scale; the weights' mean, std and channel order are
applied inside the artefact. To run one:

    exported = jax.export.deserialize(open("DIR/logits.jax", "rb").read())
    logits = exported.call(dict(np.load("DIR/weights.npz")), images)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import vgg_jax
from vgg_jax import checkpoints, loading
from vgg_jax.predict import class_names

ARTEFACTS = {"logits": "logits.jax", "scores": "scores.jax"}
WEIGHTS_FILE, SPEC_FILE = "weights.npz", "model.json"
SEPARATOR = "/"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export accepts any name, so it is checked here


def inference_function(model: vgg_jax.VGG, spec: checkpoints.ModelSpec, dense: bool):
    """(flat weights, float32 RGB pixels) -> logits, or score maps if `dense`."""
    model = model.clone(conv_algorithm="direct")  # Winograd's choice reads concrete sizes

    def infer(flat_weights: dict, pixels: jax.Array) -> jax.Array:
        variables = traverse_util.unflatten_dict(flat_weights, sep=SEPARATOR)
        return model.apply(variables, spec.normalization.apply(pixels), dense=dense)

    return infer


def export_model(model: vgg_jax.VGG, variables: dict, spec: checkpoints.ModelSpec,
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
    os.makedirs(directory, exist_ok=True)
    for file, data in artefacts.items():
        with open(os.path.join(directory, file), "wb") as f:
            f.write(data)
    np.savez(os.path.join(directory, WEIGHTS_FILE), **flat)
    with open(os.path.join(directory, SPEC_FILE), "w") as f:
        json.dump(description, f, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a training workdir, model directory, pretrained:NAME or weight file")
    parser.add_argument("--out", required=True, help="the folder to write the artefacts to")
    parser.add_argument("--arch", help="a weight file's architecture, e.g. vgg16")
    parser.add_argument("--platforms", default="cpu,cuda", help=f"comma-separated, of {', '.join(PLATFORMS)}")
    args = parser.parse_args(argv)
    platforms = tuple(args.platforms.split(","))
    if not set(platforms) <= set(PLATFORMS):
        parser.error(f"unknown platforms {sorted(set(platforms) - set(PLATFORMS))}; choose from {PLATFORMS}")
    try:
        model, variables, spec = loading.load(args.checkpoint, arch=args.arch)
        artefacts, flat, description = export_model(model, variables, spec, platforms)
        write(args.out, artefacts, flat, description)
    except (ValueError, OSError) as error:  # CheckpointError and WeightsError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{file} {len(data) / 1e3:.0f} kB" for file, data in artefacts.items())
    weight_bytes = sum(value.nbytes for value in flat.values())
    print(f"{args.out}: {sizes}, {WEIGHTS_FILE} {weight_bytes / 1e6:.1f} MB, {len(description['class_names'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
