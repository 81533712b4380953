"""predict: top-5 and heatmaps on real photographs, against a direct dense computation."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from numerics import assert_float32_close
import vgg_jax
from vgg_jax import predict
from vgg_jax.core.normalization import PAPER
from vgg_jax.data import preprocessing as pp
from vgg_jax.weights import model_directory
from test_evaluation import best_is_not_latest  # noqa: F401 - a fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = {"num_classes": 10, "width": 0.125, "image_size": 32, "init_scheme": "glorot"}
NAMES = [f"class {i}" for i in range(10)]


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt"))
    model = vgg_jax.vgg11(**KWARGS)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    model_directory.save_model(path, variables, model_directory.ModelSpec("vgg11", KWARGS, NAMES, PAPER))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-learn's two photographs as JPEG, and one as grayscale and RGBA PNG."""
    folder = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    paths = {}
    for name, image, mode, ext in (("china", china, "RGB", "jpg"), ("flower", flower, "RGB", "jpg"),
                                   ("gray", china, "L", "png"), ("rgba", flower, "RGBA", "png")):
        paths[name] = str(folder / f"{name}.{ext}")
        Image.fromarray(image).convert(mode).save(paths[name])
    return paths


@pytest.mark.slow
def test_posterior_is_the_flip_averaged_dense_softmax(checkpoint, photos):
    model, variables, spec = model_directory.load_model(checkpoint)
    image = pp.load_image_file(photos["china"])
    posterior, scores = predict.predict(model, variables, spec, image, 48)
    x = spec.preprocess(image, 48)[0]  # the preprocessing is test_spec_preprocess's; here the maps and flips
    assert x.shape[:2] == (48, 72)
    maps = [np.asarray(model.apply(variables, im[None], dense=True))[0] for im in (x, x[:, ::-1])]
    assert_float32_close(scores, maps[0], terms=512 * 9, layers=len(variables["params"]))
    expected = np.mean([softmax(m.mean(axis=(0, 1))) for m in maps], axis=0)
    np.testing.assert_allclose(posterior, expected, atol=1e-6)


def test_heatmap_has_the_image_size_and_colours_the_top_scores_red():
    image = np.zeros((30, 50, 3), np.uint8)
    scores = np.array([[5.0, 0.0], [0.0, -1.0]])  # highest top-left, lowest bottom-right
    out = np.asarray(predict.heatmap(image, scores))
    assert out.shape == (30, 50, 3)
    top_left, bottom_right = out[0, 0].astype(int), out[-1, -1].astype(int)
    assert top_left[0] > top_left[2] and bottom_right[2] > bottom_right[0]
    assert out.max() <= 128  # half opacity over black


def test_imagenet_class_names_are_the_standard_1000_in_order():
    names = vgg_jax.imagenet_class_names()
    assert len(names) == len(set(names)) == 1000 and all(name.strip() == name != "" for name in names)
    # Fixed points of the standard order (torchvision's, Keras', tfds's sorted WordNet ids).
    assert (names[0], names[1], names[281], names[999]) == (
        "tench, Tinca tinca", "goldfish, Carassius auratus", "tabby, tabby cat",
        "toilet tissue, toilet paper, bathroom tissue")
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")  # one name, two synsets


def test_class_names(tmp_path):
    spec = model_directory.ModelSpec("vgg11", KWARGS, NAMES, PAPER)
    assert predict.class_names(spec, 10) == NAMES
    unnamed = model_directory.ModelSpec("vgg11", KWARGS, None, PAPER)
    assert predict.class_names(unnamed, 7) == [str(i) for i in range(7)]
    readable = list(vgg_jax.imagenet_class_names())
    assert predict.class_names(unnamed, 1000) == readable
    # tfds's imagenet2012 label names are WordNet ids: a person reads the names instead.
    wordnet = model_directory.ModelSpec("vgg11", KWARGS, [f"n{i:08d}" for i in range(1000)], PAPER)
    assert predict.class_names(wordnet, 1000) == readable


def predict_cli(*args):
    return subprocess.run([sys.executable, "-m", "vgg_jax.predict", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_top5_and_heatmaps_of_the_images_size(checkpoint, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    images = [photos["china"], str(broken), photos["flower"], photos["gray"], photos["rgba"]]
    done = predict_cli("--checkpoint", checkpoint, "--heatmap", str(tmp_path / "map.png"), *images)
    assert done.returncode == 1  # one image could not be read; the others were predicted
    assert f"cannot read image {broken}" in done.stderr
    assert f"model: {checkpoint} (step 0)" in done.stderr  # says which step it uses
    lines = done.stdout.splitlines()
    for name in ("china", "flower", "gray", "rgba"):
        at = lines.index(photos[name])
        ranked = lines[at + 1:at + 6]
        assert [line.split(".")[0].strip() for line in ranked] == ["1", "2", "3", "4", "5"]
        probabilities = [float(line.split()[1]) for line in ranked]
        assert probabilities == sorted(probabilities, reverse=True) and all(line.split("  ")[2].startswith("class ") for line in ranked)
        with Image.open(tmp_path / f"map_{name}.png") as heatmap:
            assert heatmap.width == 640 and heatmap.height > 427 and heatmap.mode == "RGB"  # a legend beneath


def test_predict_on_a_workdir_uses_its_best_step_not_its_latest(best_is_not_latest, photos, capsys):
    """Catches predict taking a workdir's latest step instead of its best one."""
    assert predict.main(["--checkpoint", best_is_not_latest, photos["china"]]) == 0
    out, err = capsys.readouterr()
    assert f"model: {best_is_not_latest} (step 4)" in err
    assert out.splitlines()[1].endswith("(0)")  # the best step's class; the latest's is 1


def test_an_imagenet_model_prints_readable_names(photos, tmp_path, capsys):
    kwargs = {**KWARGS, "num_classes": 1000}
    model = vgg_jax.vgg11(**kwargs)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    model_directory.save_model(tmp_path / "imagenet", variables, model_directory.ModelSpec("vgg11", kwargs, None, PAPER))
    assert predict.main(["--checkpoint", str(tmp_path / "imagenet"), photos["china"]]) == 0
    ranked = capsys.readouterr().out.splitlines()[1:6]
    names = vgg_jax.imagenet_class_names()
    for line in ranked:  # "  1. 0.0011  tabby, tabby cat (281)"
        name, index = line.split("  ", 2)[2].rsplit(" (", 1)
        assert name == names[int(index.rstrip(")"))]


def test_errors_name_the_problem(checkpoint, photos, tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path / "nowhere"), photos["china"]]) == 1
    assert "no checkpoint directory" in capsys.readouterr().err
    assert predict.main(["--checkpoint", checkpoint, "--scale", "16", photos["china"]]) == 1
    assert "Q=16 is smaller than the model's crop size 32" in capsys.readouterr().err
    assert predict.main(["--checkpoint", "pretrained:vgg17", photos["china"]]) == 1
    assert capsys.readouterr().err.startswith("error: no pretrained weights named 'vgg17'")


def test_the_heatmap_is_the_map_of_the_class_it_is_titled_with(checkpoint, photos, tmp_path, monkeypatch, capsys):
    """Catches the heatmap drawn from another class's scores (e.g. the second best) under the
    best class's name: the drawn map must be the dense score map's channel of the top class."""
    drawn = []
    monkeypatch.setattr(predict, "write_heatmap", lambda path, image, scores, name, scale: drawn.append((scores, name)))
    assert predict.main(["--checkpoint", checkpoint, "--heatmap", str(tmp_path / "map.png"), photos["china"]]) == 0
    best_line = capsys.readouterr().out.splitlines()[1]  # "  1. 0.1234  class 7 (7)"
    best = int(best_line.rsplit("(", 1)[1].rstrip(")"))
    model, variables, spec = vgg_jax.load(checkpoint)
    image = pp.load_image_file(photos["china"])
    _, maps = predict.predict(model, variables, spec, image, predict.default_heatmap_scale(model.image_size))
    [(scores, name)] = drawn
    assert name == NAMES[best]
    np.testing.assert_array_equal(scores, maps[..., best])
