"""Style transfer: Gram matrices and losses against PyTorch's neural style tutorial on the same
random VGG-19 weights, half-precision features, a stylisation, and the CLI."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from numerics import assert_float32_close, float32_tolerance
from random_nets import he_normal_variables
import vgg_jax
from test_weights import random_features_file
from vgg_jax import style, stylize
from vgg_jax.core.normalization import TORCHVISION
from vgg_jax.data import preprocessing as pp
from vgg_jax.weights import import_weights, model_directory

STYLE_WEIGHT = 1e3  # both terms of a similar size, so neither hides the other's errors


# --- PyTorch's tutorial (pytorch.org/tutorials/advanced/neural_style_tutorial), in float64 -----

def tutorial_gram(features):
    a, b, c, d = features.size()
    flat = features.view(a * b, c * d)
    return torch.mm(flat, flat.t()).div(a * b * c * d)


def tutorial_activations(stack, pixels):
    """{relu{block}_{i}: (NCHW activation, convs up to it)} of (H, W, 3) pixels, the tutorial's
    normalisation in front (images on a 0-1 scale)."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(-1, 1, 1)
    x = (torch.from_numpy(pixels.astype(np.float64) / 255).permute(2, 0, 1)[None] - mean) / std
    block, index, depth, activations = 1, 0, 0, {}
    with torch.no_grad():
        for layer in stack:
            x = layer(x)
            if isinstance(layer, torch.nn.Conv2d):
                index, depth = index + 1, depth + 1
            elif isinstance(layer, torch.nn.ReLU):
                activations[f"relu{block}_{index}"] = (x, depth)
            else:  # a pooling layer
                block, index = block + 1, 0
    return activations


# --- Bounds on float32 rounding, derived from the float64 reference --------------------------

def feature_error(features, depth):
    """Bound on |float32 - exact| of a VGG activation: 3x3x512-term sums, `depth` convs deep."""
    return float32_tolerance(features, terms=9 * 512, layers=depth)


def gram_error(features, depth):
    """|dG_cd| <= sum_p (|dF_pc| |F_pd| + |F_pc| |dF_pd|) / CHW <= 2 dF max_d sum_p |F_pd| / CHW,
    plus the Gram's own H*W-term sums."""
    _, c, h, w = features.shape
    column_sums = features.abs().reshape(c, h * w).sum(1).max().item()
    own = float32_tolerance(tutorial_gram(features).numpy(), terms=h * w)
    return 2 * feature_error(features.numpy(), depth) * column_sums / (c * h * w) + own


def mse_error(mse, difference_error, entries):
    """|d mean(e^2)| <= 2 sqrt(mean(e^2)) max|de| + max|de|^2, plus the mean's own sum."""
    return 2 * math.sqrt(mse) * difference_error + difference_error ** 2 + float32_tolerance(mse, terms=entries)


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """torchvision's VGG-19 feature stack with random He-normal weights, and its .pth file."""
    stack, path = random_features_file("vgg19", tmp_path_factory.mktemp("weights"))
    return stack.double(), path


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_gram_matrices_and_losses_equal_the_pytorch_tutorial(vgg19_file, pool):
    """Catches a wrong Gram normalisation or orientation, a layer off by one (conv instead of
    ReLU, relu4_1 for relu4_2), a loss that sums instead of averaging, the input convention
    not applied, and average pooling that is not Gatys's 2x2 mean."""
    reference, path = vgg19_file
    if pool == "avg":  # Gatys et al.: every max-pool replaced by a 2x2 average
        reference = torch.nn.Sequential(*[torch.nn.AvgPool2d(2, 2) if isinstance(layer, torch.nn.MaxPool2d)
                                          else layer for layer in reference])
    variables, _ = import_weights(path, "vgg19")
    model = vgg_jax.vgg19(include_top=False, pool=pool)
    rng = np.random.default_rng(0)
    content, style_image, image = (rng.uniform(0, 255, shape).astype(np.float32)
                                   for shape in ((32, 48, 3), (40, 36, 3), (32, 48, 3)))
    loss = jax.jit(style.objective, static_argnums=(0, 2), static_argnames="style_weight")(
        model, variables, TORCHVISION, content, style_image, style_weight=STYLE_WEIGHT)
    terms = jax.jit(style.Objective.terms)(loss, image)
    theirs = {name: tutorial_activations(reference, pixels)
              for name, pixels in (("content", content), ("style", style_image), ("image", image))}

    expected_style, style_bound = 0.0, 0.0
    for name, weight in style.STYLE_LAYERS.items():
        (target, target_depth), (features, depth) = theirs["style"][name], theirs["image"][name]
        target_gram = tutorial_gram(target)
        np.testing.assert_allclose(loss.style_grams[name][0], target_gram.numpy(), rtol=0,
                                   atol=gram_error(target, target_depth))
        mse = torch.nn.functional.mse_loss(tutorial_gram(features), target_gram).item()
        expected_style += STYLE_WEIGHT * weight * mse
        style_bound += STYLE_WEIGHT * weight * mse_error(
            mse, gram_error(features, depth) + gram_error(target, target_depth), target_gram.numel())
    (target, depth), (features, _) = theirs["content"]["relu4_2"], theirs["image"]["relu4_2"]
    expected_content = torch.nn.functional.mse_loss(features, target).item()
    content_bound = mse_error(expected_content, 2 * feature_error(target.numpy(), depth), target.numel())

    print(f"pool={pool}: style {float(terms['style']):.9g} vs {expected_style:.9g} (bound {style_bound:.2g}), "
          f"content {float(terms['content']):.9g} vs {expected_content:.9g} (bound {content_bound:.2g})")
    assert abs(float(terms["style"]) - expected_style) <= style_bound
    assert abs(float(terms["content"]) - expected_content) <= content_bound
    assert float(terms["tv"]) == 0.0


def test_gram_and_content_loss_are_float32_for_half_precision_features():
    """Catches a Gram matrix or content loss computed in the compute dtype: at realistic
    activations (1e2-1e3 after ReLU, 32x32 positions, 256 channels) float16 sums overflow to
    inf and bfloat16 sums keep about three digits."""
    rng = np.random.default_rng(0)
    activations = np.abs(rng.normal(scale=300.0, size=(1, 32, 32, 256)))
    target = np.abs(rng.normal(scale=300.0, size=activations.shape))
    for dtype in (jnp.float16, jnp.bfloat16):
        features = jnp.asarray(activations, dtype)
        exact = np.asarray(features, np.float64).reshape(1024, 256)  # the values the network handed over
        gram = style.gram_matrix(features)
        assert gram.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(gram)))
        assert_float32_close(gram[0], exact.T @ exact / exact.size, terms=1024)
        content = style.content_loss(features, jnp.asarray(target, dtype))
        expected = np.mean(np.square(exact - np.asarray(jnp.asarray(target, dtype), np.float64).reshape(1024, 256)))
        np.testing.assert_allclose(float(content), expected, rtol=4 * np.finfo(np.float32).eps * math.sqrt(exact.size))
    # The premise: the same sums in float16 overflow.
    half = jnp.asarray(activations, jnp.float16).reshape(1024, 256)
    assert bool(jnp.isinf(half.T @ half).any()) and bool(jnp.isinf(jnp.mean(jnp.square(half))))


@pytest.fixture(scope="module")
def narrow_vgg19():
    """A VGG-19 at 1/8 width with He-normal kernels and small random biases."""
    model = vgg_jax.vgg19(width=0.125, include_top=False)
    return model, he_normal_variables(model)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-learn's two photographs (427x640) as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, image in zip(("china", "flower"), load_sample_images().images):
        paths[name] = str(folder / f"{name}.jpg")
        Image.fromarray(image).save(paths[name])
    return paths


@pytest.mark.slow
def test_stylize_inside_jit_lowers_the_loss_tenfold(narrow_vgg19, photos):
    """Catches a gradient that does not reach the image (or points the wrong way), an optimiser
    state that is not carried across steps, and a stylize that cannot be traced inside jit."""
    model, variables = narrow_vgg19
    model = model.clone(pool="avg")
    content, style_image = (pp.rescale_smallest_side(pp.load_image_file(photos[name]), 64).numpy()
                            for name in ("china", "flower"))
    run = jax.jit(lambda c, s: style.stylize(model, variables, TORCHVISION, c, s, steps=12))
    result = run(content, style_image)
    loss = style.objective(model, variables, TORCHVISION, content, style_image)
    before, after = float(loss(content)), float(loss(result))
    print(f"total loss {before:.4g} -> {after:.4g} in 12 L-BFGS steps")
    assert result.shape == content.shape == (64, 96, 3)
    assert float(result.min()) >= 0 and float(result.max()) <= 255
    assert after <= before / 10


@pytest.fixture(scope="module")
def narrow_model_dir(narrow_vgg19, tmp_path_factory):
    model, variables = narrow_vgg19
    path = tmp_path_factory.mktemp("model")
    spec = model_directory.ModelSpec("vgg19", {"width": 0.125, "include_top": False}, None, TORCHVISION)
    model_directory.save_model(path, variables, spec)
    return str(path)


@pytest.mark.slow
def test_cli_writes_the_picture_with_the_content_aspect_ratio(narrow_model_dir, photos, tmp_path, capsys):
    """Catches a result saved square or at the style picture's shape."""
    out = tmp_path / "out.png"
    code = stylize.main([photos["china"], photos["flower"], "--out", str(out), "--model", narrow_model_dir,
                         "--size", "40", "--steps", "2", "--optimizer", "adam"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (60, 40)  # 640x427 at smallest side 40


@pytest.mark.parametrize("broken", ["content", "style"])
def test_cli_unreadable_image_is_a_one_line_error(narrow_model_dir, photos, tmp_path, capsys, broken):
    """Catches a traceback (or a silent exit) for a missing or corrupt picture."""
    paths = {"content": photos["china"], "style": photos["flower"]}
    paths[broken] = str(tmp_path / "broken.jpg")
    if broken == "style":
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
    code = stylize.main([paths["content"], paths["style"], "--out", str(tmp_path / "out.png"),
                         "--model", narrow_model_dir])
    error = capsys.readouterr().err.strip()
    assert code == 1 and error.startswith("error:") and "\n" not in error and "broken.jpg" in error
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("flags,named", [
    (["--size", "16"], "--size=16"),  # too small for VGG's five poolings
    (["--steps", "0"], "--steps=0"),
    (["--optimizer", "sgd"], "--optimizer=sgd"),
    (["--style_weight", "-1"], "--style_weight=-1"),
])
def test_cli_bad_value_is_one_line_before_any_work(photos, tmp_path, capsys, flags, named):
    """Catches a bad value that is accepted (a 16-pixel picture fails deep inside VGG) or
    answered with a traceback instead of one line and status 2."""
    with pytest.raises(SystemExit) as stopped:
        stylize.main([photos["china"], photos["flower"], "--out", str(tmp_path / "out.png"), *flags])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and error.startswith(f"error: flag {named}:") and "\n" not in error


def test_cli_needs_two_pictures(tmp_path, capsys):
    """Catches a missing style picture read as something else, or a traceback."""
    assert stylize.main(["content.jpg", "--out", str(tmp_path / "out.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: give the content and the style picture") and "\n" not in error


def test_unknown_pool_is_refused():
    """Catches a misspelt pool silently falling back to max-pooling."""
    with pytest.raises(ValueError, match="unknown pool 'mean'"):
        vgg_jax.vgg19(pool="mean")
