"""Every command line answers --help with its examples and its flags, in one (absl) style."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("command,example,flags", [
    (["train.py"], "python train.py --config configs/vgg16.py:256", ["--workdir", "--coordinator", "--process_id"]),
    (["eval.py"], "python eval.py --checkpoint vgg16-397923af.pth --arch vgg16",
     ["--checkpoint", "--arch", "--coordinator", "--num_processes"]),
    (["-m", "vgg_jax.predict"], "python -m vgg_jax.predict --checkpoint pretrained:vgg16 cat.jpg",
     ["--checkpoint", "--arch", "--heatmap_scale"]),
    (["-m", "vgg_jax.weights"], "python -m vgg_jax.weights download vgg16", ["--out", "--arch", "--num_classes"]),
    (["-m", "vgg_jax.stylize"], "python -m vgg_jax.stylize content.jpg style.jpg --out out.png",
     ["--out", "--model", "--size", "--learning_rate", "--style_weight", "--content_weight", "--tv_weight"]),
    (["-m", "vgg_jax.export"], "python -m vgg_jax.export --checkpoint runs/default --out exported",
     ["--checkpoint", "--out", "--arch", "--platforms"]),
], ids=["train", "eval", "predict", "weights", "stylize", "export"])
def test_help_shows_an_example_and_the_flags(command, example, flags):
    """Catches a CLI whose --help fails, hides the shared multi-process flags, or shows no example."""
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]  # (absl's app.run exits 1 after --help)
    assert example in done.stdout
    for flag in flags:
        assert f"  {flag}:" in done.stdout


@pytest.mark.slow
def test_a_bad_flag_is_one_line():
    """Catches a module CLI that answers a mistyped flag with a traceback."""
    done = subprocess.run([sys.executable, "-m", "vgg_jax.predict", "--checkpoint=x", "--scale=big", "a.jpg"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: flag --scale=big:")
