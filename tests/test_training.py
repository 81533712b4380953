"""The training loop end to end: variants on mock ImageNet, learning, resume, pre-init, faults."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vgg_jax
from configs import default
from vgg_jax.core import checkpoints
from vgg_jax.core.normalization import PAPER
from vgg_jax.data import augmentation, input_pipeline
from vgg_jax.train import faults, loop, preinit, steps
from vgg_jax.weights import model_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_config(**train):
    config = default.get_config()
    config.model.width = 0.125
    config.train.update(dict(batch_size=32, eval_batch_size=128, log_every=10, **train))
    return config


def leaves_close(a, b, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol), a, b)


def numpy_init(model):
    """Random variables drawn by numpy: skips compiling model.init, ten times over here."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    return jax.tree.map(lambda s: np.abs(rng.normal(0.0, 0.1, s.shape)).astype(np.float32), shapes)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(vgg_jax.ARCHITECTURES))
def test_one_train_step_for_every_variant_on_mock_imagenet(arch):
    config = quick_config()
    config.data.update(source="imagenet2012", train_split="train", eval_split="validation",
                       crop_size=32, scale_min=32, scale_max=48, eval_scale=32,
                       mean_rgb=PAPER.mean_rgb, std_rgb=PAPER.std_rgb)
    with tfds.testing.mock_data(num_examples=8):
        batch = next(input_pipeline.train_batches(config.data, global_batch_size=8, seed=0))
    model = vgg_jax.create_model(arch, num_classes=1000, width=1 / 16, image_size=32, init_scheme="glorot")
    config.train.learning_rate = 1e-3
    tx = steps.make_optimizer(config.train, steps_per_epoch=1)
    state = steps.create_train_state(model, tx, seed=0, variables=numpy_init(model))
    augment = augmentation.train_augmentation(config.data, PAPER, seed=0)
    new_state, metrics = vgg_jax.jit(lambda s, b: steps.train_step(s, b, model=model, tx=tx, augment=augment))(state, batch)
    assert batch["image"].shape == (8, 32, 32, 3)
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
    assert not np.allclose(new_state.params["conv1_1"]["kernel"], state.params["conv1_1"]["kernel"])


@pytest.mark.slow
def test_quickstart_config_learns(tmp_path):
    results = loop.train_and_evaluate(quick_config(num_steps=90, eval_every_epochs=100), str(tmp_path))
    assert results["val_top1"] > 0.5  # chance is 0.1 on the ten digits
    assert json.load(open(tmp_path / "results.json"))["step"] == 90
    assert json.load(open(tmp_path / "config.json"))["model"]["arch"] == "vgg11_bn"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    model, variables, spec = model_directory.load_model(tmp_path)
    assert spec.class_names == [str(d) for d in range(10)] and model.num_classes == 10


def train_cli(workdir, log, *overrides):
    """train.py in its own process, as a user runs it; its log goes to the file `log`."""
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
            "--config.model.width=0.125", "--config.train.batch_size=32",
            "--config.train.num_steps=40", "--config.train.checkpoint_every_steps=5",
            "--config.train.eval_every_epochs=100", *overrides]
    # The same 4 devices as this pytest process (conftest.py): equal reduction orders, so a run
    # finished here can be compared bit for bit with one done in a subprocess.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(jax.device_count())}
    with open(log, "w") as stderr:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def newest_step(workdir):
    """The newest committed step (orbax renames a step's directory into place once it is written)."""
    root = os.path.join(workdir, "checkpoints")
    return max((int(n) for n in os.listdir(root) if n.isdigit()), default=0) if os.path.isdir(root) else 0


def wait_for_step_after(step, workdir, process, log, deadline):
    """The first committed step newer than `step`; fails as soon as the process exits or the deadline passes."""
    while newest_step(workdir) <= step:
        assert process.poll() is None, f"train.py exited ({process.returncode}) with no step after {step}:\n" \
                                       f"{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no step after {step} before the deadline:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return newest_step(workdir)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path, caplog):
    """Catches a restart that ignores the saved steps (or resumes from the wrong one), a SIGTERM
    that exits without saving, and a resume that is not the uninterrupted run bit for bit
    (optimiser state, step counter or data order not restored). Bounded: each wait has a deadline
    and fails as soon as the watched process exits."""
    deadline = time.monotonic() + 600
    interrupted = str(tmp_path / "interrupted")
    logs = [tmp_path / "killed.log", tmp_path / "terminated.log"]
    process = train_cli(interrupted, logs[0])
    try:
        wait_for_step_after(0, interrupted, process, logs[0], deadline)
        process.send_signal(signal.SIGKILL)  # no chance to save: resume from the periodic checkpoint
        process.wait(timeout=60)
        saved = newest_step(interrupted)
        process = train_cli(interrupted, logs[1])  # resumes; then SIGTERM must save before exiting
        wait_for_step_after(saved, interrupted, process, logs[1], deadline)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, logs[1].read_text()[-3000:]
    finally:
        process.kill()  # a failed wait leaves nothing running (a no-op once it has exited)
    assert f"resumed from {interrupted} at step {saved}" in logs[1].read_text()
    # A quiet start (catches jax's backend probe lines reaching the log): the backend used, once.
    first_lines = logs[0].read_text().splitlines()[:2]
    assert "backend cpu" in first_lines[0] and not any("Unable to initialize backend" in line for line in first_lines)
    terminated = json.load(open(os.path.join(interrupted, "results.json")))
    assert terminated["interrupted"] == "SIGTERM" and saved < terminated["step"] < 40
    assert checkpoints.default_step(checkpoints.model_root(interrupted)) == terminated["step"]

    config = quick_config(num_steps=40, checkpoint_every_steps=5, eval_every_epochs=100)
    with caplog.at_level("INFO", logger="vgg_jax.train"):
        resumed = loop.train_and_evaluate(config, interrupted)
    assert f"resumed from {interrupted} at step {terminated['step']}" in caplog.text
    straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
    assert resumed["step"] == straight["step"] == 40
    jax.tree.map(np.testing.assert_array_equal, model_directory.load_variables(interrupted)[0],
                 model_directory.load_variables(tmp_path / "straight")[0])


def tiny_variables(arch, seed, **kwargs):
    model = vgg_jax.create_model(arch, num_classes=10, width=0.125, image_size=32, **kwargs)
    return model, jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3))))


# Sec. 3.1, written out here: "the first four convolutional layers and the last three fully-
# connected layers" of net A (whose first four convs are conv1_1, conv2_1, conv3_1, conv3_2).
PAPER_NET_A_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]


@pytest.mark.parametrize("target_arch", ["vgg16", "vgg19_bn"])
def test_preinit_copies_exactly_the_paper_layers(target_arch):
    """Catches pre-initialisation from net A copying other layers than the paper's, e.g. silently
    skipping fc7 (the list is the paper's, not the library's constant)."""
    source_arch = "vgg11_bn" if target_arch.endswith("_bn") else "vgg11"
    _, source = tiny_variables(source_arch, seed=1)
    _, target = tiny_variables(target_arch, seed=2)
    layers = preinit.layers_to_copy("net_a", target["params"])
    merged, copied = preinit.copy_layers(target, source, layers)
    assert copied == PAPER_NET_A_LAYERS
    for collection in merged:
        for name, value in merged[collection].items():
            owner = "conv" + name[2:] if name.startswith("bn") else name
            expected = source if owner in PAPER_NET_A_LAYERS else target
            leaves_close(value, expected[collection][name], 0)


@pytest.mark.slow
def test_preinit_through_training_logs_and_uses_net_a(tmp_path, caplog):
    model, source = tiny_variables("vgg11", seed=1)
    spec = model_directory.ModelSpec("vgg11", {"num_classes": 10, "width": 0.125, "image_size": 32}, None, PAPER)
    model_directory.save_model(tmp_path / "net_a", source, spec)
    config = quick_config(num_steps=1, eval_every_epochs=100, init_from=str(tmp_path / "net_a"))
    config.model.arch = "vgg13"
    with caplog.at_level("INFO", logger="vgg_jax.train"):
        loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert "conv1_1  copied from" in caplog.text and "conv1_2  random init" in caplog.text


def test_preinit_with_incompatible_shapes_names_the_layers():
    _, source = tiny_variables("vgg11", seed=1)
    wide = jax.tree.map(np.asarray, vgg_jax.vgg16(num_classes=10, width=0.25, image_size=32).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(checkpoints.CheckpointError, match="conv1_1: expected .*fc8"):
        preinit.copy_layers(wide, source, preinit.NET_A_LAYERS)


def test_a_fresh_run_that_diverges_says_no_checkpoint_was_saved(tmp_path):
    """Catches a diverged step being saved, and the message claiming a good checkpoint that does
    not exist (issue 26: "the last good checkpoint is intact" with checkpoints/ empty)."""
    config = quick_config(num_steps=30, checkpoint_every_steps=10, eval_every_epochs=100,
                          learning_rate=1e4)
    with pytest.raises(faults.Diverged, match=r"^the training loss is \S+ at step \d+ ") as raised:
        loop.train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == [] and not os.path.exists(tmp_path / "config.json")
    assert str(raised.value).endswith(f"stopped without saving it: no checkpoint was saved before it "
                                      f"(none in {tmp_path / 'checkpoints'})")


def test_workdir_of_another_model_is_a_clear_error(tmp_path):
    loop.train_and_evaluate(quick_config(num_steps=1, eval_every_epochs=100), str(tmp_path))
    config = quick_config(num_steps=2, eval_every_epochs=100)
    config.model.arch = "vgg13"
    with pytest.raises(checkpoints.CheckpointError, match="different model"):
        loop.train_and_evaluate(config, str(tmp_path))
