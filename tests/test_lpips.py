"""LPIPS against the reference `lpips` package on the same vgg16 backbone weights."""

import copy
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
import torch

from numerics import assert_float32_close
import vgg_jax
from test_weights import random_features_file
from vgg_jax import lpips
from vgg_jax.core import checkpoints
from vgg_jax.weights import import_to_checkpoint, model_directory, WeightsError


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """torchvision's vgg16 `features` with He-normal weights, and the same saved as a .pth."""
    return random_features_file("vgg16", tmp_path_factory.mktemp("lpips"))


@pytest.fixture(scope="module")
def reference(backbone):
    """The reference lpips.LPIPS(net='vgg') with its own v0.1 linear weights, on our backbone.
    lpips imports torchvision, whose PyPI build does not load with the CPU torch; all it uses is
    `torchvision.models.vgg16(pretrained=...).features`, which a stand-in module provides."""
    features, _ = backbone
    models = types.ModuleType("torchvision.models")
    models.vgg16 = lambda pretrained=True, **_: types.SimpleNamespace(features=features)
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchvision", torchvision)
        patch.setitem(sys.modules, "torchvision.models", models)
        import lpips as reference_lpips
        return reference_lpips.LPIPS(net="vgg", verbose=False).eval()


def image_pairs(size=64, seed=0):
    """Two pairs in [-1, 1]: unrelated images, and an image with a slightly noisy copy."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    y = np.concatenate([rng.uniform(-1, 1, (1, size, size, 3)),
                        np.clip(x[1:] + rng.normal(0, 0.1, x[1:].shape), -1, 1)]).astype(np.float32)
    return x, y


# Weights as arguments, not constants baked into the program: one compilation serves every test.
distance = jax.jit(lpips.distance)
distance_grad = jax.jit(jax.grad(lambda params, x, y: lpips.distance(params, x, y).sum(), argnums=1))


def nchw(images, dtype=torch.float32):
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).to(dtype).requires_grad_()


@pytest.fixture(scope="module")
def params(backbone):
    return lpips.load(backbone[1])  # a weight file; the linear layers of the installed lpips


def test_distance_equals_the_reference(params, reference):
    x, y = image_pairs()
    with torch.no_grad():
        expected = reference(nchw(x), nchw(y)).numpy().reshape(-1)
    ours = np.asarray(distance(params, x, y))
    assert ours.shape == (2,) and np.all(expected > 5e-3)  # both clearly above the tolerance
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_gradient_equals_the_reference_autograd_in_float64(params, reference):
    x, y = image_pairs(size=32, seed=1)
    x64 = nchw(x, torch.float64)
    copy.deepcopy(reference).double()(x64, nchw(y, torch.float64)).sum().backward()
    expected = x64.grad.permute(0, 2, 3, 1).numpy()
    ours = np.asarray(distance_grad(params, x, y))
    # float32 rounding through vgg16's 13 convs, the deepest summing 3 * 3 * 512 terms
    assert_float32_close(ours, expected, terms=3 * 3 * 512, layers=13)


def test_identical_images_are_at_distance_zero(params):
    x, y = image_pairs(size=32, seed=2)
    # Zero up to rounding: XLA:CPU may round an image differently at another position in the batch.
    assert np.all(np.asarray(distance(params, x, x)) <= 1e-9 * np.asarray(distance(params, x, y)))
    scale = np.abs(np.asarray(distance_grad(params, x, y))).max()
    assert np.abs(np.asarray(distance_grad(params, x, x))).max() <= 1e-6 * scale


def test_a_model_directory_backbone_gives_the_same_distances(params, backbone, tmp_path):
    import_to_checkpoint(str(backbone[1]), "vgg16", str(tmp_path / "vgg16"))
    x, y = image_pairs(size=32)
    from_directory = lpips.load(tmp_path / "vgg16", linear=lpips.installed_linear_path())
    np.testing.assert_array_equal(distance(from_directory, x, y), distance(params, x, y))


def test_bad_linear_weights_and_backbones_are_named(backbone, tmp_path):
    layers = {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    del layers["lin2.model.1.weight"]
    layers["lin3.model.1.weight"] = torch.ones(1, 256, 1, 1)
    torch.save(layers, tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match=r"lin2.model.1.weight missing; "
                                           r"lin3.model.1.weight is \(1, 256, 1, 1\), relu4_3 needs \(1, 512, 1, 1\)"):
        lpips.load(backbone[1], linear=tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match="no weight file at"):
        lpips.load(backbone[1], linear=tmp_path / "missing.pth")
    with pytest.MonkeyPatch.context() as patch:  # no lpips package installed
        patch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(WeightsError, match="pip install --no-deps lpips"):
            lpips.load(backbone[1])
    small = vgg_jax.vgg11(width=1 / 16, image_size=32, include_top=False)
    variables = checkpoints.abstract_variables(small)
    model_directory.save_model(tmp_path / "vgg11", jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), variables),
                           model_directory.ModelSpec("vgg11", {"width": 1 / 16, "image_size": 32, "include_top": False}))
    with pytest.raises(ValueError, match="defined on vgg16 features; .*vgg11 is vgg11"):
        lpips.load(tmp_path / "vgg11")
