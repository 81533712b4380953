"""Exported inference: the artefacts run in a process where vgg_jax and flax cannot be imported,
and give the model's logits and dense score maps."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from numerics import assert_float32_close
import vgg_jax
from vgg_jax import export
from vgg_jax.core.normalization import TORCHVISION
from vgg_jax.weights import model_directory

# image_size 64: a 2x2 head window, so the dense head really slides (a 1x1 window is a flatten).
KWARGS = {"num_classes": 7, "width": 0.125, "image_size": 64, "init_scheme": "glorot", "batch_norm": True}
NAMES = [f"class {i}" for i in range(7)]

# Runs the artefacts with jax and numpy only: a meta-path finder refuses vgg_jax and flax.
STANDALONE = r'''
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vgg_jax", "flax"):
            raise ImportError(f"{name} is not available here")

sys.meta_path.insert(0, Refuse())
for name in ("vgg_jax", "flax"):
    try:
        __import__(name)
        sys.exit(f"{name} could be imported")
    except ImportError:
        pass

import jax, numpy as np
folder, inputs, outputs = sys.argv[1:]
weights = dict(np.load(f"{folder}/weights.npz"))
spec = json.load(open(f"{folder}/model.json"))
artefact = {name: jax.export.deserialize(open(f"{folder}/{entry['file']}", "rb").read())
            for name, entry in spec["artefacts"].items()}
images = np.load(inputs)
results = {"batch1": artefact["logits"].call(weights, images["batch1"]),
           "batch5": artefact["logits"].call(weights, images["batch5"]),
           "dense": artefact["scores"].call(weights, images["dense"])}
np.savez(outputs, **{name: np.asarray(value) for name, value in results.items()})
print(f"jax {jax.__version__} without vgg_jax and flax: logits {results['batch1'].shape} and "
      f"{results['batch5'].shape} from one artefact, score maps {results['dense'].shape}; "
      f"{len(spec['class_names'])} class names; input {spec['input']['image_size']} px")
'''


def random_variable(path, leaf, rng=np.random.default_rng(0)):
    """He-normal kernels, small random biases, BN scales and running statistics away from 1 and 0."""
    name = jax.tree_util.keystr(path)
    ranges = {"'scale'": (0.5, 1.5), "'mean'": (-0.2, 0.2), "'var'": (0.5, 2.0)}
    if "kernel" in name:
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
    low, high = next((r for key, r in ranges.items() if name.endswith(f"[{key}]")), (-0.1, 0.1))
    return rng.uniform(low, high, leaf.shape).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A narrow batch-norm vgg11 with torchvision's convention, saved and exported by the CLI."""
    model = vgg_jax.vgg11_bn(**KWARGS)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    variables = jax.tree_util.tree_map_with_path(random_variable, shapes)
    source, out = tmp_path_factory.mktemp("model"), tmp_path_factory.mktemp("export")
    model_directory.save_model(source, variables, model_directory.ModelSpec("vgg11_bn", KWARGS, NAMES, TORCHVISION))
    assert export.main(["--checkpoint", str(source), "--out", str(out), "--platforms", "cpu"]) == 0
    return model, variables, out


def test_artefacts_run_without_the_library_and_match_the_model(exported, tmp_path):
    """Catches an artefact that needs vgg_jax/flax to load, a batch size baked in, a dense head
    that does not follow the input size, or a normalisation left out of (or doubled inside)
    the exported function."""
    model, variables, folder = exported
    rng = np.random.default_rng(0)
    images = {"batch1": rng.uniform(0, 255, (1, 64, 64, 3)), "batch5": rng.uniform(0, 255, (5, 64, 64, 3)),
              "dense": rng.uniform(0, 255, (2, 128, 96, 3))}
    images = {name: value.astype(np.float32) for name, value in images.items()}
    np.savez(tmp_path / "inputs.npz", **images)
    run = subprocess.run([sys.executable, "-c", STANDALONE, str(folder), str(tmp_path / "inputs.npz"),
                          str(tmp_path / "outputs.npz")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    results = np.load(tmp_path / "outputs.npz")
    apply = jax.jit(model.apply, static_argnames="dense")
    for name, dense in (("batch1", False), ("batch5", False), ("dense", True)):
        expected = np.asarray(apply(variables, TORCHVISION.apply(images[name]), dense=dense))
        assert results[name].shape == expected.shape
        assert np.std(expected) > 0  # a real signal, so the scaled bound means something
        assert_float32_close(results[name], expected, terms=9 * 64, layers=len(variables["params"]))
    assert results["dense"].shape == (2, 3, 2, 7)  # (128/32 - 2 + 1, 96/32 - 2 + 1) windows


def test_description_names_the_input_convention_and_classes(exported):
    """Catches a model.json that loses the class names or misstates the convention."""
    _, _, folder = exported
    description = json.loads((folder / "model.json").read_text())
    assert description["class_names"] == NAMES
    assert description["input"]["image_size"] == 64
    assert description["input"]["normalization_applied_inside"] == TORCHVISION.to_dict()
    assert description["platforms"] == ["cpu"]


def test_unreadable_source_is_a_one_line_error(tmp_path, capsys):
    """Catches a traceback for a missing checkpoint."""
    assert export.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error


def test_unknown_platform_is_one_line_before_loading(tmp_path, capsys):
    """Catches a misspelt platform passed on to jax.export (which takes any name) or a traceback."""
    with pytest.raises(SystemExit) as stopped:
        export.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                     "--platforms", "cpu,cdua"])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and error.startswith("error: flag --platforms=['cpu', 'cdua']:") and "\n" not in error
    assert not (tmp_path / "out").exists()
