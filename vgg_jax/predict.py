"""Top-5 classes of image files, and a heatmap of the top class's dense score map.

  python -m vgg_jax.predict --checkpoint pretrained:vgg16 cat.jpg dog.jpg --heatmap map.png
  python -m vgg_jax.predict --checkpoint runs/default digit.png
  python -m vgg_jax.predict --checkpoint vgg16-397923af.pth --arch vgg16 cat.jpg --scale 384

--checkpoint is anything `vgg_jax.load` takes: a training workdir (its best step), a model
directory, a weight file with --arch, or a pretrained set, `pretrained:vgg16` or `vgg16`
(downloaded on first use: `python -m vgg_jax.weights list`).

Each image is rescaled so that its smallest side is Q (--scale, default: the model's image_size)
and evaluated densely with flip averaging (`vgg_jax.evaluate.ensemble`), as in the paper's testing.
The heatmap is the top class's score map at --heatmap_scale (default: image_size + 160, the
paper's Q = 384 for a 224 crop, a 6-position map across the smallest side; at Q = image_size
the map would be one position), with the class name and a colour bar beneath the image.
"""

from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from vgg_jax.core import command_line, compilation  # noqa: E402
from vgg_jax.core.class_names import imagenet_class_names, IMAGENET_CLASSES  # noqa: E402
from vgg_jax.data import preprocessing as pp  # noqa: E402
from vgg_jax.evaluate import ensemble, methods
from vgg_jax.weights import model_directory

FLAGS = flags.FlagValues()  # this CLI's own, so that importing it defines no global flags
flags.DEFINE_string("checkpoint", None, "a training workdir, model directory, weight file (with --arch), "
                    "pretrained:NAME or NAME", flag_values=FLAGS)
flags.DEFINE_string("arch", None, "the architecture of a weight-file --checkpoint", flag_values=FLAGS)
flags.DEFINE_integer("scale", None, "test scale Q (default: the model's image_size)", flag_values=FLAGS)
flags.DEFINE_string("heatmap", None, "PNG path for the top class's score map over the image "
                    "(out_<image name>.png for several images)", flag_values=FLAGS)
flags.DEFINE_integer("heatmap_scale", None, "test scale of the heatmap (default: image_size + 160)",
                     flag_values=FLAGS)
flags.mark_flag_as_required("checkpoint", flag_values=FLAGS)

_dense_score_maps = compilation.jit(methods.dense_score_maps, static_argnums=0)

HEATMAP_POSITIONS = 6  # score-map positions across the smallest side at the default heatmap scale
FIGURE_MIN_WIDTH = 320  # px: smaller images are enlarged so that the legend fits beneath them
PROGRESS_FROM = 8  # images: fewer print their results before a bar would help


def class_names(spec: model_directory.ModelSpec, num_classes: int) -> list[str]:
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
    ensemble.check_scale(scale, model.image_size)
    rescaled = spec.preprocess(image, scale)[0]
    batch = methods.dense_batch([rescaled], rescaled.shape[:2])
    scores, valid = _dense_score_maps(model, variables, **batch)
    posterior = methods.flip_average(methods.spatial_softmax(scores, valid))[0]
    return np.asarray(posterior), np.asarray(scores[0])


def default_heatmap_scale(image_size: int) -> int:
    """The Q whose score map has HEATMAP_POSITIONS positions across the smallest side: the head's
    window is image_size / 32 positions of the pool5 map, which is Q / 32 positions."""
    return image_size + (HEATMAP_POSITIONS - 1) * 32


def jet(levels: np.ndarray) -> np.ndarray:
    """The 'jet' colour map, 0 (dark blue) .. 1 (dark red), as floats in [0, 1] (..., 3)."""
    centres = np.array([3.0, 2.0, 1.0])  # where red, green and blue peak, in quarters
    return np.clip(1.5 - np.abs(4.0 * levels[..., None] - centres), 0.0, 1.0)


def heatmap(image: np.ndarray, scores: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """`scores` (h, w) stretched over the uint8 image in the jet colour map and blended with it,
    lowest score dark blue, highest dark red. Stretching is approximate: score-map positions
    are windows whose centres do not quite reach the image's borders."""
    span = scores.max() - scores.min()
    levels = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    height, width = image.shape[:2]
    grey = Image.fromarray(np.uint8(np.round(255 * levels))).resize((width, height), Image.BILINEAR)
    colours = 255.0 * jet(np.asarray(grey) / 255.0)
    return Image.fromarray(np.uint8(np.round((1 - opacity) * image + opacity * colours)))


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, shortened with '...' until it fits in `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def figure(overlay: Image.Image, title: str, low: float, high: float) -> Image.Image:
    """`overlay` with a legend beneath: `title`, then a jet colour bar from `low` to `high`
    (the score map's range). Images narrower than FIGURE_MIN_WIDTH are enlarged first."""
    factor = -(-FIGURE_MIN_WIDTH // overlay.width)
    if factor > 1:
        overlay = overlay.resize((overlay.width * factor, overlay.height * factor), Image.NEAREST)
    width = overlay.width
    size = max(11, width // 45)  # font size in px
    font, pad = ImageFont.load_default(size=size), size // 2
    legend = Image.new("RGB", (width, 3 * size + 3 * pad), "white")
    draw = ImageDraw.Draw(legend)
    draw.text((pad, pad), fit_text(draw, title, font, width - 2 * pad), fill="black", font=font)
    bar_top = size + 2 * pad
    low_text, high_text = f"{low:.3g}", f"{high:.3g}"
    left = pad + int(draw.textlength(low_text, font=font)) + pad
    right = width - 2 * pad - int(draw.textlength(high_text, font=font))
    draw.text((pad, bar_top), low_text, fill="black", font=font)
    draw.text((right + pad, bar_top), high_text, fill="black", font=font)
    ramp = np.uint8(np.round(255 * jet(np.linspace(0.0, 1.0, max(right - left, 1)))))
    legend.paste(Image.fromarray(np.repeat(ramp[None], size, axis=0)), (left, bar_top))
    out = Image.new("RGB", (width, overlay.height + legend.height), "white")
    out.paste(overlay, (0, 0))
    out.paste(legend, (0, overlay.height))
    return out


def heatmap_path(path: str, image_path: str, several: bool) -> str:
    """`path` for one image; out_<image name>.png style paths for several."""
    if not several:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}_{os.path.splitext(os.path.basename(image_path))[0]}{ext or '.png'}"


def write_heatmap(path: str, image: np.ndarray, scores: np.ndarray, name: str, scale: int) -> None:
    """The class `name`'s score map (h, w) at test scale `scale` over the image, with its legend."""
    title = f"top class: {name} (its score map at Q={scale})"
    figure(heatmap(image, scores), title, float(scores.min()), float(scores.max())).save(path)


def main(argv: list[str] | None = None) -> int:
    images = command_line.parse(FLAGS, argv, __doc__)
    if not images:
        print("error: no image files given (see --help)", file=sys.stderr)
        return 2
    try:
        member = methods.load_member(FLAGS.checkpoint, FLAGS.arch)
        model, variables, spec = member.model, member.variables, member.spec
        if not model.include_top:
            raise ValueError(f"{member.source} has no classifier head (include_top=False): predict needs fc6-fc8")
        print(f"model: {member.source}", file=sys.stderr)
        scale = FLAGS.scale or model.image_size
        heatmap_scale = FLAGS.heatmap_scale or default_heatmap_scale(model.image_size)
        for q in (scale, heatmap_scale):
            ensemble.check_scale(q, model.image_size)
    except ValueError as error:  # CheckpointError and WeightsError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    names = class_names(spec, model.num_classes)
    failed = 0
    # Progress with rate and ETA on stderr when there are many files; results go to stdout.
    for image_path in tqdm.tqdm(images, unit="img", disable=len(images) < PROGRESS_FROM, file=sys.stderr):
        try:
            image = pp.load_image_file(image_path)
        except ValueError as error:  # reported, and the other images still predicted
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        posterior, _ = predict(model, variables, spec, image, scale)
        top = np.argsort(-posterior, kind="stable")[:5]
        print(image_path)
        for rank, index in enumerate(top, start=1):
            print(f"  {rank}. {posterior[index]:.4f}  {names[index]} ({index})")
        if FLAGS.heatmap:
            out = heatmap_path(FLAGS.heatmap, image_path, len(images) > 1)
            _, scores = predict(model, variables, spec, image, heatmap_scale)
            write_heatmap(out, image, scores[..., top[0]], names[top[0]], heatmap_scale)
            print(f"  heatmap of {names[top[0]]}: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
