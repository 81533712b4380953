"""One resolver for every model source (training workdir, model directory, weight file with its
arch, `pretrained:NAME`, bare NAME), checked in each entry point that takes one: vgg_jax.load,
eval (members and the CLI), predict, train.init_from, nnx.load and lpips.load. The pretrained
kinds come from a pre-filled weight cache, offline: the cache holds a converted `vgg16`."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import vgg_jax
import vgg_jax.nnx
from test_weights import TorchvisionVGG
from vgg_jax import lpips, predict
from vgg_jax.core import checkpoints, normalization
from vgg_jax.evaluate import methods
from vgg_jax.train import preinit
from vgg_jax.weights import download, import_to_checkpoint, import_weights, loading, registry, WeightsError
from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("workdir", "model directory", "weight file", "pretrained:NAME", "NAME")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A torchvision vgg16 file (full-width features, a 32 px head, 10 classes), the same weights
    as a pretrained set in the cache, as a model directory and as a training workdir; the cache
    variable set for the module. Returns (sources by kind, the file's variables, cache)."""
    root = tmp_path_factory.mktemp("sources")
    reference = TorchvisionVGG("vgg16", window=1, num_classes=10)
    torch.save(reference.state_dict(), root / "vgg16-0123.pth")
    cache = root / "cache"
    published = registry.lookup("vgg16")  # recorded as the cache records its conversion of the published file
    import_to_checkpoint(str(root / "vgg16-0123.pth"), "vgg16", str(cache / "vgg16"),
                         source={"file": published.file_name, "sha256": published.digest})
    shutil.copytree(cache / "vgg16", root / "model")
    shutil.copytree(cache / "vgg16", root / "run" / "checkpoints")
    sources = {"workdir": str(root / "run"), "model directory": str(root / "model"),
               "weight file": str(root / "vgg16-0123.pth"), "pretrained:NAME": "pretrained:vgg16", "NAME": "vgg16"}
    variables, _ = import_weights(root / "vgg16-0123.pth", "vgg16")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(download.HOME_VARIABLE, str(cache))
        patch.setenv(download.MIRROR_VARIABLE, "http://127.0.0.1:9")  # a download would fail: offline
        yield sources, variables, cache


def assert_same_variables(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, e: np.testing.assert_array_equal(np.asarray(a), e), actual, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_vgg_jax_load_reads_every_kind(world, kind):
    """Catches a kind that is refused or read as another (a bare name as a missing path, a
    pretrained name fetched instead of read from the cache, a workdir's nested directory missed)."""
    sources, expected, _ = world
    model, variables, spec = vgg_jax.load(sources[kind], arch="vgg16")
    assert_same_variables(variables, expected)
    assert (spec.arch, model.num_classes, model.image_size) == ("vgg16", 10, 32)
    assert spec.normalization == normalization.TORCHVISION


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_eval_members_and_train_init_from_read_every_kind(world, kind):
    """Catches eval or train.init_from resolving sources their own way (the old eval refused
    weight files and bare names; init_from refused weight files)."""
    sources, expected, _ = world
    member = methods.load_member(sources[kind], arch="vgg16")
    assert_same_variables(member.variables, expected)
    assert sources[kind] in member.source
    train = default.get_config().train
    train.update(init_from=sources[kind], init_layers="all")
    variables, convention = preinit.initial_variables(train, "vgg16", vgg_jax.vgg16(num_classes=10, image_size=32))
    assert_same_variables(variables, expected)  # weight files are read as model.arch's
    assert convention == normalization.TORCHVISION


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_nnx_and_lpips_load_every_kind(world, kind):
    """Catches nnx.load or lpips.load bypassing the resolver for some kind."""
    sources, expected, _ = world
    module, spec = vgg_jax.nnx.load(sources[kind], arch="vgg16")
    assert spec.arch == "vgg16"
    assert_same_variables(nnx.to_pure_dict(nnx.state(module, nnx.Param)), expected["params"])
    params = lpips.load(sources[kind], linear=lpips.installed_linear_path())
    convs = {layer: values for layer, values in expected["params"].items() if layer.startswith("conv")}
    assert_same_variables(params.variables["params"], convs)


@pytest.mark.slow
def test_predict_prints_the_same_for_every_kind(world, tmp_path, capsys):
    """Catches predict refusing a kind (it took only directories and pretrained:NAME) or
    loading different weights for one."""
    sources, _, _ = world
    image = tmp_path / "noise.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(image)
    outputs = []
    for kind in KINDS:
        assert predict.main(["--checkpoint", sources[kind], "--arch", "vgg16", str(image)]) == 0
        outputs.append(capsys.readouterr().out)
    assert len(outputs[0].splitlines()) == 6 and all(output == outputs[0] for output in outputs)


@pytest.mark.slow
def test_eval_cli_takes_a_weight_file_and_a_bare_pretrained_name(world):
    """Catches eval.py refusing the two kinds it used to turn away as missing directories. The
    nets load before the data are read, so the split named wrong (digits has 'train' and 'test')
    is the first error once both sources resolve; a full evaluation of two vgg16s takes a minute."""
    sources, _, cache = world
    args = [f"--checkpoint={sources['weight file']}", "--arch=vgg16", "--checkpoint=vgg16", "--dataset=digits",
            "--split=validation"]
    env = {**os.environ, download.HOME_VARIABLE: str(cache), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: digits has splits ('train', 'test'), not 'validation'"


def test_unusable_sources_are_named_in_one_line(world, tmp_path):
    """Catches a confusing error (a traceback from deep in orbax, a registry KeyError) for a
    source that is none of the kinds."""
    sources, _, _ = world
    with pytest.raises(ValueError, match="is a weight file: name its architecture"):
        loading.load(sources["weight file"])
    with pytest.raises(checkpoints.CheckpointError, match=r"'vgg17' is no checkpoint directory, weight file or "
                                                          r"pretrained set; the pretrained sets are vgg11, "):
        loading.load("vgg17")
    with pytest.raises(WeightsError, match="no pretrained weights named 'vgg17'"):
        loading.load("pretrained:vgg17")
    with pytest.raises(checkpoints.CheckpointError, match=f"no checkpoint directory at {tmp_path}/missing, nor"):
        loading.load(tmp_path / "missing")
