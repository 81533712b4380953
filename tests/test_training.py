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
from vgg_jax import augmentation, checkpoints, input_pipeline, training
from vgg_jax.normalization import PAPER

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
    tx = training.make_optimizer(config.train, steps_per_epoch=1)
    state = training.create_train_state(model, tx, seed=0, variables=numpy_init(model))
    augment = augmentation.train_augmentation(config.data, PAPER, seed=0)
    new_state, metrics = vgg_jax.jit(lambda s, b: training.train_step(s, b, model=model, tx=tx, augment=augment))(state, batch)
    assert batch["image"].shape == (8, 32, 32, 3)
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
    assert not np.allclose(new_state.params["conv1_1"]["kernel"], state.params["conv1_1"]["kernel"])


def test_quickstart_config_learns(tmp_path):
    results = training.train_and_evaluate(quick_config(num_steps=90, eval_every_epochs=100), str(tmp_path))
    assert results["val_top1"] > 0.5  # chance is 0.1 on the ten digits
    assert json.load(open(tmp_path / "results.json"))["step"] == 90
    assert json.load(open(tmp_path / "config.json"))["model"]["arch"] == "vgg11_bn"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    model, variables, spec = checkpoints.load_model(tmp_path)
    assert spec.class_names == [str(d) for d in range(10)] and model.num_classes == 10


def train_cli(workdir, *overrides):
    """train.py in its own process, as a user runs it."""
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
            "--config.model.width=0.125", "--config.train.batch_size=32",
            "--config.train.num_steps=40", "--config.train.checkpoint_every_steps=5",
            "--config.train.eval_every_epochs=100", *overrides]
    # The same 4 devices as this pytest process (conftest.py): equal reduction orders, so a run
    # finished here can be compared bit for bit with one done in a subprocess.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(jax.device_count())}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, process, timeout=300):
    root = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
        if steps:
            return max(steps)
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.2)
    raise TimeoutError("no checkpoint appeared")


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    interrupted = str(tmp_path / "interrupted")
    process = train_cli(interrupted)
    wait_for_checkpoint(interrupted, process)
    process.send_signal(signal.SIGKILL)  # no chance to save: resume from the periodic checkpoint
    process.wait()
    process = train_cli(interrupted)  # resumes; then SIGTERM must save before exiting
    time.sleep(1.0)
    first = wait_for_checkpoint(interrupted, process)
    while wait_for_checkpoint(interrupted, process) == first:  # the resumed run saves again
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, process.stderr.read()[-3000:]
    terminated = json.load(open(os.path.join(interrupted, "results.json")))
    assert terminated["interrupted"] == "SIGTERM" and terminated["step"] < 40
    assert checkpoints.default_step(checkpoints.model_root(interrupted)) == terminated["step"]

    config = quick_config(num_steps=40, checkpoint_every_steps=5, eval_every_epochs=100)
    resumed = training.train_and_evaluate(config, interrupted)
    straight = training.train_and_evaluate(config, str(tmp_path / "straight"))
    assert resumed["step"] == straight["step"] == 40
    leaves_close(checkpoints.load_variables(interrupted)[0], checkpoints.load_variables(tmp_path / "straight")[0], 1e-6)


def tiny_variables(arch, seed, **kwargs):
    model = vgg_jax.create_model(arch, num_classes=10, width=0.125, image_size=32, **kwargs)
    return model, jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3))))


@pytest.mark.parametrize("target_arch", ["vgg16", "vgg19_bn"])
def test_preinit_copies_exactly_the_paper_layers(target_arch):
    source_arch = "vgg11_bn" if target_arch.endswith("_bn") else "vgg11"
    _, source = tiny_variables(source_arch, seed=1)
    _, target = tiny_variables(target_arch, seed=2)
    layers = checkpoints.layers_to_copy("net_a", target["params"])
    merged, copied = checkpoints.copy_layers(target, source, layers)
    assert copied == list(checkpoints.NET_A_LAYERS)
    for collection in merged:
        for name, value in merged[collection].items():
            owner = "conv" + name[2:] if name.startswith("bn") else name
            expected = source if owner in checkpoints.NET_A_LAYERS else target
            leaves_close(value, expected[collection][name], 0)


def test_preinit_through_training_logs_and_uses_net_a(tmp_path, caplog):
    model, source = tiny_variables("vgg11", seed=1)
    spec = checkpoints.ModelSpec("vgg11", {"num_classes": 10, "width": 0.125, "image_size": 32}, None, PAPER)
    checkpoints.save_model(tmp_path / "net_a", source, spec)
    config = quick_config(num_steps=1, eval_every_epochs=100, init_from=str(tmp_path / "net_a"))
    config.model.arch = "vgg13"
    with caplog.at_level("INFO", logger="vgg_jax.train"):
        training.train_and_evaluate(config, str(tmp_path / "b"))
    assert "conv1_1  copied from" in caplog.text and "conv1_2  random init" in caplog.text


def test_preinit_with_incompatible_shapes_names_the_layers():
    _, source = tiny_variables("vgg11", seed=1)
    wide = jax.tree.map(np.asarray, vgg_jax.vgg16(num_classes=10, width=0.25, image_size=32).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(checkpoints.CheckpointError, match="conv1_1: expected .*fc8"):
        checkpoints.copy_layers(wide, source, checkpoints.NET_A_LAYERS)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    config = quick_config(num_steps=30, checkpoint_every_steps=10, eval_every_epochs=100,
                          learning_rate=1e4)
    with pytest.raises(training.NonFiniteLoss, match=r"at step \d+"):
        training.train_and_evaluate(config, str(tmp_path))
    for step in os.listdir(tmp_path / "checkpoints"):
        variables, _, _ = checkpoints.load_variables(tmp_path, int(step))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))


def test_workdir_of_another_model_is_a_clear_error(tmp_path):
    training.train_and_evaluate(quick_config(num_steps=1, eval_every_epochs=100), str(tmp_path))
    config = quick_config(num_steps=2, eval_every_epochs=100)
    config.model.arch = "vgg13"
    with pytest.raises(checkpoints.CheckpointError, match="different model"):
        training.train_and_evaluate(config, str(tmp_path))
