"""Top-5 classes of image files, and a heatmap of the top class's dense score map.

  python -m vgg_jax.predict --checkpoint DIR image.jpg [more images] [--heatmap out.png] [--scale Q]

DIR is a training workdir, a model directory, or `pretrained:NAME` (e.g. pretrained:vgg16,
downloaded on first use: `python -m vgg_jax.weights list`).

Each image is rescaled so that its smallest side is Q (default: the model's image_size) and
evaluated densely with flip averaging (`vgg_jax.evaluation`), as in the paper's testing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from PIL import Image  # noqa: E402

from vgg_jax import checkpoints, compilation, evaluation, weights  # noqa: E402
from vgg_jax import preprocessing as pp  # noqa: E402
from vgg_jax.class_names import IMAGENET_CLASSES, imagenet_class_names  # noqa: E402

_dense_score_maps = compilation.jit(evaluation.dense_score_maps, static_argnums=0)


PROGRESS_FROM = 8  # images: fewer print their results before a bar would help

def class_names(spec: checkpoints.ModelSpec, num_classes: int) -> list[str]:
    """The checkpoint's names, except that ImageNet nets (1000 classes) without names or with
    WordNet ids (n01440764, tfds's imagenet2012 labels) get the readable ImageNet names; else
    the class indices."""
    names = list(spec.class_names or [])
    wordnet_ids = bool(names) and all(re.fullmatch(r"n\d{8}", name) for name in names)
    if num_classes == IMAGENET_CLASSES and (not names or wordnet_ids):
        return list(imagenet_class_names())
    return names or [str(index) for index in range(num_classes)]


def predict(model, variables, spec, image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(posterior (C,), class score map (h, w, C)) of a uint8 HxWx3 image at test scale `scale`.
    The posterior is flip-averaged; the map is the image's own (unmirrored)."""
    evaluation.check_scale(scale, model.image_size)
    rescaled = pp.normalize(pp.rescale_smallest_side(image, scale), spec.normalization).numpy()
    batch = evaluation.dense_batch([rescaled], rescaled.shape[:2])
    scores, valid = _dense_score_maps(model, variables, **batch)
    posterior = evaluation.flip_average(evaluation.spatial_softmax(scores, valid))[0]
    return np.asarray(posterior), np.asarray(scores[0])


def jet(levels: np.ndarray) -> np.ndarray:
    """The 'jet' colour map, 0 (dark blue) .. 1 (dark red), as floats in [0, 1] (..., 3)."""
    centres = np.array([3.0, 2.0, 1.0])  # where red, green and blue peak, in quarters
    return np.clip(1.5 - np.abs(4.0 * levels[..., None] - centres), 0.0, 1.0)


def heatmap(image: np.ndarray, scores: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """`scores` (h, w) stretched over the uint8 image in the jet colour map and blended with it.
    Stretching is approximate: score-map positions are windows whose centres do not quite reach
    the image's borders."""
    span = scores.max() - scores.min()
    levels = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    height, width = image.shape[:2]
    grey = Image.fromarray(np.uint8(np.round(255 * levels))).resize((width, height), Image.BILINEAR)
    colours = 255.0 * jet(np.asarray(grey) / 255.0)
    return Image.fromarray(np.uint8(np.round((1 - opacity) * image + opacity * colours)))


def heatmap_path(path: str, image_path: str, several: bool) -> str:
    """`path` for one image; out_<image name>.png style paths for several."""
    if not several:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}_{os.path.splitext(os.path.basename(image_path))[0]}{ext or '.png'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training workdir, model directory or pretrained:NAME")
    parser.add_argument("--scale", type=int, help="test scale Q (default: the model's image_size)")
    parser.add_argument("--heatmap", help="PNG path for the top class's score map over the image")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        member = evaluation.load_member(weights.resolve(args.checkpoint))  # its best step
        model, variables, spec = member.model, member.variables, member.spec
        print(f"model: {member.source}", file=sys.stderr)
        scale = args.scale or model.image_size
        evaluation.check_scale(scale, model.image_size)
    except (checkpoints.CheckpointError, ValueError) as error:  # WeightsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    names = class_names(spec, model.num_classes)
    failed = 0
    # Progress with rate and ETA on stderr when there are many files; results go to stdout.
    for image_path in tqdm.tqdm(args.images, unit="img", disable=len(args.images) < PROGRESS_FROM, file=sys.stderr):
        try:
            image = pp.load_image_file(image_path)
        except ValueError as error:  # reported, and the other images still predicted
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        posterior, scores = predict(model, variables, spec, image, scale)
        top = np.argsort(-posterior, kind="stable")[:5]
        print(image_path)
        for rank, index in enumerate(top, start=1):
            print(f"  {rank}. {posterior[index]:.4f}  {names[index]} ({index})")
        if args.heatmap:
            out = heatmap_path(args.heatmap, image_path, len(args.images) > 1)
            heatmap(image, scores[..., top[0]]).save(out)
            print(f"  heatmap of {names[top[0]]}: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
