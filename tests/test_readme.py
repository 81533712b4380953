"""README.md's Python examples, run as written: a renamed function, a wrong argument or a wrong
shape in a README block fails here.

The blocks are read from README.md at test time (nothing is copied here) and each runs in a
fresh namespace holding what the README's "Using the model from JAX code" block imports first
(`jax`, `jnp`, `vgg_jax`), plus the inputs the block uses but does not make (`images`, `x`,
`content`, a `cat.jpg`, a `photos/` folder, an `exported/` folder, ...), in a temporary working
directory. Tracebacks name README.md and its line numbers.

Offline stand-ins, and nothing else: the blocks load ImageNet weights by name, which cannot be
downloaded here. Only the loading entry points are replaced:

- `vgg_jax.weights.loading.load_variables` (the one resolver behind `vgg_jax.load`, `lpips.load`,
  `vgg_jax.nnx.load` and export) keeps the real `classify` of the source but returns, instead
  of reading it, random He-normal variables of the same architecture at 1/16 width (the ImageNet
  head: 224 px crops, 1000 classes) and the spec the real source would give (its architecture,
  input normalisation and the ImageNet class names);
- `vgg_jax.pretrained(name)` (`vgg_jax.weights.pretrained`) becomes
  `vgg_jax.load("pretrained:" + name)` on that resolver;
- `lpips.installed_linear_path` (where the lpips package's learned layers are found) gives a
  random file of LPIPS's layout at that width.

Everything the blocks demonstrate (`load`'s model building and checks, `spec.preprocess`,
features, LPIPS, NNX, stylize, export) is the library's own code, and every block runs verbatim
(style transfer's 300 L-BFGS steps included: ~10 s at this width).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from numerics import assert_float32_close
from random_nets import he_normal_variables
import vgg_jax
from vgg_jax import lpips, weights
from vgg_jax.core import checkpoints
from vgg_jax.core.class_names import imagenet_class_names
from vgg_jax.core.normalization import TORCHVISION
from vgg_jax.weights import loading, model_directory, registry

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# The README's ```python blocks in order, each with a line that identifies it.
BLOCKS = (
    ("pretrained", 'vgg_jax.pretrained("vgg16")'),
    ("jax", "vgg_jax.jit(model.apply)"),
    ("features", "from vgg_jax.features import"),
    ("lpips", "from vgg_jax import lpips"),
    ("nnx", "import vgg_jax.nnx"),
    ("style", "from vgg_jax import style"),
    ("export", "jax.export.deserialize"),
)

WIDTH = 1 / 16  # the stand-in networks: channels 4, 8, 16, 32, 32 and fc 256 (instead of 64 .. 512, 4096)
HEAD = {"include_top": True, "image_size": 224, "num_classes": 1000}  # what ImageNet weights fix
# Stand-ins for the model directories the blocks name (a directory's spec comes from its files).
DIRECTORIES = {"models/vgg16": "vgg16"}

pytestmark = pytest.mark.slow  # end to end: each block runs as a user would run it


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first code line
    source: str


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, dedented by their fence's indentation."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```python\s*$", lines[index])
        index += 1
        if not fence:
            continue
        indent, first, body = fence.group(1), index + 1, []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index].lstrip())
            index += 1
        if index == len(lines):
            raise AssertionError(f"README.md: the ```python block at line {first - 1} is never closed")
        blocks.append(Block(first, "\n".join(body) + "\n"))
        index += 1
    return blocks


@pytest.fixture(scope="module")
def readme_blocks() -> dict[str, Block]:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    found = "\n".join(f"  line {block.line}: {block.source.splitlines()[0] if block.source.strip() else ''}"
                      for block in blocks)
    if len(blocks) != len(BLOCKS):
        pytest.fail(f"README.md has {len(blocks)} ```python blocks, tests/test_readme.py knows {len(BLOCKS)} "
                    f"({', '.join(name for name, _ in BLOCKS)}); update BLOCKS and the tests. Found:\n{found}")
    for number, (block, (name, marker)) in enumerate(zip(blocks, BLOCKS), start=1):
        if marker not in block.source:
            pytest.fail(f"README.md's python block {number} (line {block.line}) should be the {name!r} "
                        f"example, which contains {marker!r}; the blocks are:\n{found}")
    return {name: block for block, (name, _) in zip(blocks, BLOCKS)}


def run_block(block: Block, namespace: dict) -> dict:
    """Executes `block` in `namespace`, with README.md's line numbers in tracebacks."""
    code = compile("\n" * (block.line - 1) + block.source, str(README), "exec")
    exec(code, namespace)  # noqa: S102 - the README's own examples
    return namespace


def prelude(**names) -> dict:
    """What the README's first JAX block imported, and the block's inputs."""
    return {"__name__": "readme_example", "jax": jax, "jnp": jnp, "vgg_jax": vgg_jax, **names}


# ----- stand-ins for the weights -----

_VARIABLES: dict[str, dict] = {}


def stand_in(arch: str, normalization, class_names) -> tuple[dict, model_directory.ModelSpec]:
    spec = model_directory.ModelSpec(arch, {**HEAD, "width": WIDTH}, class_names, normalization)
    if arch not in _VARIABLES:
        _VARIABLES[arch] = he_normal_variables(spec.build(), seed=len(_VARIABLES), image_size=HEAD["image_size"])
    return _VARIABLES[arch], spec


def offline_load_variables(source, arch=None):
    """loading.load_variables with the real classification of `source`, and the stand-in
    network of the architecture and input convention the source would give."""
    kind, path = loading.classify(source)
    if kind == "pretrained":
        weight_set = registry.lookup(path)  # an unknown name fails as it would
        variables, spec = stand_in(weight_set.arch, weight_set.normalization, list(imagenet_class_names()))
        return variables, spec, f"{loading.PRETRAINED_PREFIX}{path} (step 0, a random 1/16-width stand-in)"
    if kind == "directory":
        key = pathlib.PurePath(path).as_posix().rstrip("/")
        if key not in DIRECTORIES:
            raise AssertionError(f"tests/test_readme.py has no stand-in for the model directory {path!r}")
        variables, spec = stand_in(DIRECTORIES[key], TORCHVISION, list(imagenet_class_names()))
        return variables, spec, f"{path} (step 0, a random 1/16-width stand-in)"
    if arch is None:  # the real resolver's rule for weight files
        raise ValueError(f"{path} is a weight file: name its architecture (arch='vgg16', --arch=vgg16)")
    variables, spec = stand_in(arch, TORCHVISION, None)  # a torchvision file carries no class names
    return variables, spec, f"{path} ({arch}, a random 1/16-width stand-in)"


@pytest.fixture(scope="module")
def lpips_linear_file(tmp_path_factory) -> str:
    """A vgg.pth in the lpips package's layout (lin0..lin4, non-negative) for the 1/16-width vgg16."""
    import torch

    channels = [vgg_jax.vgg16(width=WIDTH).scaled(width) for width in (64, 128, 256, 512, 512)]
    generator = torch.Generator().manual_seed(0)
    state = {f"lin{index}.model.1.weight": torch.rand(1, width, 1, 1, generator=generator)
             for index, width in enumerate(channels)}
    path = tmp_path_factory.mktemp("lpips") / "vgg.pth"
    torch.save(state, path)
    return str(path)


@pytest.fixture
def offline(monkeypatch, tmp_path, lpips_linear_file):
    """The stand-in loaders, and a working directory with the files the README names: a
    `cat.jpg`, a `photos/` folder of two JPEGs, placeholders for `vgg16-397923af.pth` and
    `models/vgg16` (so that the real classification sees a weight file and a directory)."""
    monkeypatch.setattr(loading, "load_variables", offline_load_variables)
    # vgg_jax.pretrained is looked up in vgg_jax.weights on each use (vgg_jax.__getattr__).
    monkeypatch.setattr(weights, "pretrained",
                        lambda name, **overrides: vgg_jax.load(f"pretrained:{name}", **overrides))
    monkeypatch.setattr(lpips, "installed_linear_path", lambda: lpips_linear_file)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.new("RGB", (128, 96), (200, 120, 40)).save("cat.jpg", quality=95)  # 96 high, 128 wide, one colour
    os.mkdir("photos")
    for index, size in enumerate([(80, 64), (64, 72)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(f"photos/{index}.jpg")
    pathlib.Path("photos/notes.txt").write_text("not a *.jpg: the block's glob leaves it out")
    pathlib.Path("vgg16-397923af.pth").write_bytes(b"")
    os.makedirs("models/vgg16")
    return tmp_path


# ----- one test per README block -----

def test_pretrained_block(readme_blocks, offline):
    """Catches a renamed or re-signatured `vgg_jax.pretrained`, or a spec without the class
    names the README says it carries (spec.class_names: the 1000 ImageNet names)."""
    names = run_block(readme_blocks["pretrained"], prelude())
    model, variables, spec = names["model"], names["variables"], names["spec"]
    assert isinstance(model, vgg_jax.VGG) and model.layout == "D" and model.num_classes == 1000
    assert spec.class_names == list(imagenet_class_names()) and len(spec.class_names) == 1000
    checkpoints.check_fits(model, variables, source="README pretrained block")


def test_jax_block(readme_blocks, offline):
    """Catches drift in the "Using the model from JAX code" block: `vgg_jax.load` by name and
    with a weight file's `arch=`, `spec.preprocess(file, Q)` -> (1, Q, w, 3) normalised, the dense
    class score map (1, h, w, 1000), `vgg_jax.jit(model.apply)` -> (N, 1000), and pool5 from
    `model.clone(include_top=False)`."""
    names = run_block(readme_blocks["jax"], prelude())
    model, variables, spec = names["model"], names["variables"], names["spec"]  # the .pth line's
    assert model.layout == "D" and spec.arch == "vgg16"
    checkpoints.check_fits(model, variables, source="README's .pth line")
    image = np.asarray(names["image"])
    assert image.shape == (1, 384, 512, 3) and image.dtype == np.float32  # cat.jpg is 96 x 128
    # One colour, normalised as the weights expect (JPEG moves a flat colour by a level or two).
    np.testing.assert_allclose(image, np.broadcast_to(TORCHVISION.apply(np.float32([200, 120, 40])), image.shape),
                               atol=3 / 57)
    # 384 x 512 -> a 12 x 16 pool5 map -> 6 x 10 positions of the 7 x 7 head window.
    assert names["scores"].shape == (1, 6, 10, 1000)
    assert names["crops"].shape == (1, 224, 224, 3)
    assert names["logits"].shape == (1, 1000)
    assert names["pool5"].shape == (1, 12, 16, model.scaled(512))
    assert np.all(np.isfinite(names["scores"])) and np.all(np.isfinite(names["logits"]))


def test_features_block(readme_blocks, offline):
    """Catches drift in the features block: `extract_features` names and shapes,
    `perceptual_loss`'s argument order and differentiability, and `image_descriptor` giving one
    L2-normalised descriptor per photo at Q = 256."""
    rng = np.random.default_rng(1)
    images, outputs, targets = (rng.normal(size=(2, 64, 96, 3)).astype(np.float32) for _ in range(3))
    names = run_block(readme_blocks["features"], prelude(images=images, outputs=outputs, targets=targets))
    vgg, vgg_vars = names["vgg"], names["vgg_vars"]
    feats = names["feats"]
    assert set(feats) == {"relu2_2", "relu4_3"}
    assert feats["relu2_2"].shape == (2, 32, 48, vgg.scaled(128))
    assert feats["relu4_3"].shape == (2, 8, 12, vgg.scaled(512))
    loss = names["loss"]
    assert loss.shape == () and np.isfinite(loss) and loss > 0
    grad = jax.jit(jax.grad(lambda o: names["perceptual_loss"](vgg, vgg_vars, o, targets)))(outputs)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    descriptors = names["descriptors"]
    assert descriptors.shape == (2, vgg.scaled(4096))  # one per photos/*.jpg
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(descriptors[0], descriptors[1])


def test_lpips_block(readme_blocks, offline):
    """Catches drift in the LPIPS block: `lpips.load(source)` and `lpips.distance(params, x, y)`
    -> (N,) on NHWC images in [-1, 1], zero for identical images, differentiable in x."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    y = np.stack([rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32), x[1]])  # pair 1: identical
    names = run_block(readme_blocks["lpips"], prelude(x=x, y=y))
    d = np.asarray(names["d"])
    assert d.shape == (2,)
    assert d[0] > 1e-3 and abs(d[1]) < 1e-6
    grad = jax.jit(jax.grad(lambda x: names["lpips"].distance(names["params"], x, y).sum()))(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_nnx_block(readme_blocks, offline):
    """Catches drift in the NNX block: `vgg_jax.nnx.load` -> (module, spec), the
    `nnx.Optimizer(..., wrt=nnx.Param)` set-up, the train step it defines (run here: loss, grads,
    `optimizer.update(model, grads)` in place) and `nnx.jit` inference -> (N, 1000)."""
    from flax import nnx

    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
    names = run_block(readme_blocks["nnx"], prelude(images=images))
    model, optimizer = names["model"], names["optimizer"]
    assert names["spec"].arch == "vgg16"
    assert names["logits"].shape == (2, 1000)
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    loss = names["train_step"](model, optimizer, images, jnp.array([3, 7]))
    assert loss.shape == () and np.isfinite(loss)
    after = nnx.state(model, nnx.Param)
    assert not np.allclose(before["fc8"]["kernel"][...], after["fc8"]["kernel"][...]), "the step changed nothing"


def test_style_block(readme_blocks, offline):
    """Catches drift in the style transfer block: `vgg_jax.pretrained("vgg19")`, `style.stylize`'s
    arguments (model with average pooling, variables, normalisation, content, style, steps) under
    `jax.jit`, (H, W, 3) pixels in 0-255 out, and `style.objective` giving the loss that stylize
    minimised, with its terms (an objective on another network, e.g. max pooling, reads a loss
    that barely fell: 3x here, against >1000x)."""
    rng = np.random.default_rng(4)
    content = rng.uniform(0, 255, (64, 80, 3)).astype(np.float32)
    style_image = rng.uniform(0, 255, (56, 56, 3)).astype(np.float32)
    names = run_block(readme_blocks["style"], prelude(content=content, style_image=style_image))
    assert names["model"].layout == "E"  # VGG-19
    image = np.asarray(names["image"])
    assert image.shape == content.shape and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255
    loss = names["loss"]
    terms = loss.terms(image)
    assert set(terms) == {"content", "style", "tv"}
    np.testing.assert_allclose(loss(image), sum(terms.values()), rtol=1e-6)
    assert loss(image) < loss(content) / 10, f"the loss fell from {loss(content)} to {loss(image)} only"


def test_export_block(readme_blocks, offline):
    """Catches drift in the exported-inference block: the artefact's file names, `model.json`'s
    keys, `jax.export.deserialize(...).call(weights, pixels)` on float32 RGB 0-255 pixels ->
    (b, classes), equal to the model's logits. The `exported/` folder is made by the CLI the README
    shows (`python -m vgg_jax.export`'s main, in this process so that it loads the stand-in), for
    the CPU alone to save a lowering."""
    from vgg_jax import export

    assert export.main(["--checkpoint", "models/vgg16", "--out", "exported/", "--platforms", "cpu"]) == 0
    rng = np.random.default_rng(5)
    pixels = rng.uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    names = run_block(readme_blocks["export"], prelude(pixels=pixels))
    assert names["spec"]["input"]["image_size"] == 224 and len(names["spec"]["class_names"]) == 1000
    logits = np.asarray(names["logits"])
    assert logits.shape == (2, 1000)
    model, variables, spec = vgg_jax.load("models/vgg16")
    expected = np.asarray(jax.jit(model.apply)(variables, spec.normalization.apply(pixels)))
    assert_float32_close(logits, expected, terms=7 * 7 * model.scaled(512), layers=16)
