"""predict --heatmap: a map people can read (more than one colour level at the default scale,
the class name and a colour bar beneath), for any model's crop size."""

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

import vgg_jax
from vgg_jax import predict
from vgg_jax.core import checkpoints
from vgg_jax.core.normalization import PAPER
from vgg_jax.weights import model_directory

KWARGS = {"num_classes": 10, "width": 0.125, "image_size": 32, "init_scheme": "glorot"}


@pytest.mark.parametrize("image_size", [32, 224])
def test_the_default_heatmap_scale_gives_a_six_position_map(image_size):
    """Catches a default scale whose score map is one position (Q = image_size: one tint over
    the photo), for the 224 crop of ImageNet models (Q = 384, the paper's) and others."""
    model = vgg_jax.vgg11(width=1 / 32, image_size=image_size, num_classes=3)
    scale = predict.default_heatmap_scale(image_size)
    assert scale == {32: 192, 224: 384}[image_size]
    variables = checkpoints.abstract_variables(model)
    scores = jax.eval_shape(lambda v, x: model.apply(v, x, dense=True), variables,
                            jax.ShapeDtypeStruct((1, scale, scale * 3 // 2, 3), np.float32))
    # pool5 has side / 32 positions, the head's window image_size / 32 of them
    assert scores.shape == (1, 6, (scale * 3 // 2 - image_size) // 32 + 1, 3)


def test_the_written_png_shows_a_map_a_class_name_and_a_colour_bar(tmp_path):
    """Catches the uniform tint (a 1x1 score map at the default scale) and a picture that names
    neither the class nor what the colours mean."""
    model = vgg_jax.vgg11(**KWARGS)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    model_directory.save_model(tmp_path / "model", variables,
                           model_directory.ModelSpec("vgg11", KWARGS, [f"class {i}" for i in range(10)], PAPER))
    china = load_sample_images().images[0]  # 427 x 640
    Image.fromarray(china).save(tmp_path / "china.png")
    assert predict.main(["--checkpoint", str(tmp_path / "model"), "--heatmap", str(tmp_path / "map.png"),
                         str(tmp_path / "china.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(int)
    height, width = china.shape[:2]
    assert out.shape[1] == width and out.shape[0] > height
    # Over the image: out = round((image + colours) / 2), so the colour layer is 2 out - image (+-1).
    colours = 2 * out[:height] - china
    red_minus_blue = colours[..., 0] - colours[..., 2]
    assert red_minus_blue.max() - red_minus_blue.min() > 0.8 * 255  # blue (lowest) and red (highest) parts
    legend = out[height:]
    assert (legend.sum(axis=-1) < 100).any()  # black text: the class name and the bar's range
    bar = [row for row in legend if np.ptp(row[:, 0] - row[:, 2]) > 200][0]  # a row through the colour bar
    coloured = np.flatnonzero(np.ptp(bar, axis=-1) > 60)  # not white, grey or black
    first, last = bar[coloured[0]], bar[coloured[-1]]
    assert first[2] > first[0] and last[0] > last[2]  # blue (low) on the left, red (high) on the right
