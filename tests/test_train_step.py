"""The jitted train step against closed-form SGD, and its parallel and accumulated forms."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import vgg_jax
from vgg_jax.core import sharding
from vgg_jax.train import loop, run_files, steps


def train_config(**overrides):
    train = ml_collections.ConfigDict(dict(
        learning_rate=0.05, momentum=0.9, weight_decay=5e-4, decay_biases_and_bn=False,
        schedule="plateau", backbone_lr_multiplier=1.0, plateau_patience=2, plateau_factor=0.1,
        plateau_min_delta=1e-3, max_lr_drops=3, num_steps=0, num_epochs=1, step_epochs=(), accum_steps=1))
    train.update(overrides)
    return train


def tiny(arch="vgg11", **kwargs):
    return vgg_jax.create_model(arch, num_classes=4, width=0.0625, image_size=32,
                                dropout_rate=0.0, init_scheme="glorot", **kwargs)


def batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 4, size).astype(np.int32)}


def run_steps(model, train, data, count=1, devices=None, seed=0, dtype=jnp.float32, variables=None):
    tx = steps.make_optimizer(train, steps_per_epoch=10)
    mesh = sharding.data_mesh(devices)
    state = steps.create_train_state(model, tx, seed, variables)
    state = jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)
    state = sharding.replicate(state, mesh)
    step = steps.jitted_train_step(model, tx, train)
    for _ in range(count):
        state, metrics = step(state, sharding.global_batch(data, mesh))
    return state, metrics


@pytest.mark.slow
def test_one_step_is_sgd_with_l2_on_weights_only():
    """Catches L2 decay applied to the biases too (Caffe's habit, which we leave out), a wrong
    decay or learning rate, and a loss that is not the batch's mean cross-entropy. Biases start
    non-zero (initialisers leave them at zero, where decaying them changes nothing) and the
    decay is large enough for wd * lr * bias to stand far above float32 rounding."""
    model, train, data = tiny(), train_config(weight_decay=0.05), batch()
    rng = np.random.default_rng(0)
    variables = model.init(jax.random.key(0), data["image"][:1])
    params = jax.tree_util.tree_map_with_path(  # biases ~ U(-1, 1): a decayed bias moves by up to 2.5e-3
        lambda path, w: rng.uniform(-1, 1, w.shape).astype(np.float32) if path[-1].key == "bias" else np.array(w),
        variables["params"])  # numpy copies: the train step donates its state's buffers

    def loss(params):
        logits = model.apply({"params": params}, data["image"])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), data["label"]])

    loss_value, grads = jax.jit(jax.value_and_grad(loss))(params)  # op by op, each op would compile: 8 s
    # First momentum step: v = g + wd * w (kernels only); w' = w - lr * v.
    expected = jax.tree_util.tree_map_with_path(
        lambda path, w, g: w - 0.05 * (g + (0.05 * w if path[-1].key == "kernel" else 0.0)), params, grads)
    state, metrics = run_steps(model, train, data, devices=jax.devices()[:1], variables={"params": params})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params, expected)
    np.testing.assert_allclose(metrics["loss"], loss_value, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_four_devices_equal_one_device(arch):
    # In float32 the two differ by rounding of the cross-device sums, which batch norm's
    # division by small batch deviations amplifies past any fixed bound; in float64 that
    # rounding is ~1e-16 relative, so sharding must reproduce one device to 1e-10.
    assert len(jax.devices()) >= 4, "tests/conftest.py asks for 4 CPU devices"
    with jax.enable_x64(True):
        model, train, data = tiny(arch, dtype=jnp.float64), train_config(), batch(16)
        data = {**data, "image": data["image"].astype(np.float64)}
        one, one_metrics = run_steps(model, train, data, count=3, devices=jax.devices()[:1], dtype=jnp.float64)
        four, four_metrics = run_steps(model, train, data, count=3, devices=jax.devices()[:4], dtype=jnp.float64)
    assert four.params["conv1_1"]["kernel"].sharding.mesh.devices.size == 4
    assert four.params["conv1_1"]["kernel"].dtype == np.float64
    np.testing.assert_allclose(four_metrics["loss"], one_metrics["loss"], rtol=1e-10)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 four.variables(), one.variables())


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    model, train, data = tiny(), train_config(), batch(8)
    full, _ = run_steps(model, train, data, count=2, devices=jax.devices()[:1])
    accumulated, _ = run_steps(model, train_config(accum_steps=4), data, count=2, devices=jax.devices()[:1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 accumulated.params, full.params)


@pytest.mark.slow
def test_frozen_backbone_moves_only_the_head_and_keeps_bn_statistics():
    model, data = tiny("vgg11_bn"), batch()
    train = train_config(backbone_lr_multiplier=0.0)
    initial = steps.create_train_state(model, steps.make_optimizer(train, 10), seed=0)
    state, _ = run_steps(model, train, data, count=2, devices=jax.devices()[:1])
    for layer, values in state.params.items():
        if layer == "fc8":
            assert not np.allclose(values["kernel"], initial.params[layer]["kernel"])
        else:
            jax.tree.map(np.testing.assert_array_equal, values, initial.params[layer])
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, initial.batch_stats)


@pytest.mark.slow
def test_frozen_backbone_gives_fc8_the_full_gradient_update():
    # Cutting the gradient below fc8 changes which gradients are computed, not fc8's own.
    model, data = tiny(), batch()
    train = train_config(backbone_lr_multiplier=0.0)
    frozen, _ = run_steps(model, train, data, count=2, devices=jax.devices()[:1])
    tx = steps.make_optimizer(train, steps_per_epoch=10)
    state = steps.create_train_state(model, tx, seed=0)
    step = vgg_jax.jit(functools.partial(steps.train_step, model=model, tx=tx, frozen_backbone=False))
    for _ in range(2):
        state, _ = step(state, data)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), frozen.params, state.params)


def test_plateau_divides_the_learning_rate_after_patience_then_stops_after_the_last_drop():
    model, train = tiny(), train_config(plateau_patience=2, max_lr_drops=2)
    state = steps.create_train_state(model, steps.make_optimizer(train, 10), seed=0)
    progress = run_files.Progress(spec=None)
    rates = []
    for step, accuracy in enumerate((0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.8, 0.8)):
        assert progress.stopped is None
        state, progress = loop.on_plateau(state, progress, accuracy, train, step)
        rates.append(steps.current_learning_rate(state))
    np.testing.assert_allclose(rates, [0.05, 0.05, 0.05, 0.005, 0.005, 0.005, 0.0005, 0.0005, 0.0005], rtol=1e-6)
    assert [drop["step"] for drop in progress.lr_drops] == [3, 6]
    # The third plateau comes after max_lr_drops=2 drops: the paper's schedule ends there.
    assert progress.stopped is None
    state, progress = loop.on_plateau(state, progress, 0.8, train, 9)
    assert "plateaued at 0.8000 after 2 learning-rate drops" in progress.stopped
    assert steps.current_learning_rate(state) == pytest.approx(0.0005)


def test_global_batch_not_divisible_by_devices_is_refused():
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        sharding.check_global_batch(6, sharding.data_mesh(jax.devices()[:4]))


def test_eval_step_scores_in_inference_mode():
    """Catches validation computed in training mode: with dropout on, two evaluations of the same
    batch differ; with batch statistics, an example's loss depends on the rest of its batch. In
    inference mode each example's sums are its own, so a batch's sums are the sum of its
    examples' sums evaluated one at a time."""
    model = vgg_jax.create_model("vgg11_bn", num_classes=4, width=0.0625, image_size=32,
                                 dropout_rate=0.5, init_scheme="glorot")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(1)  # running statistics far from any batch's own
    variables["batch_stats"] = jax.tree.map(
        lambda v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape), jnp.float32), variables["batch_stats"])
    data = {**batch(4), "mask": np.ones(4, bool)}
    evaluate = jax.jit(functools.partial(steps.eval_step, model=model))
    whole = jax.device_get(evaluate(variables, data))
    assert whole == jax.device_get(evaluate(variables, data))  # no dropout: the same twice
    alone = [jax.device_get(evaluate(variables, jax.tree.map(lambda x: x[i:i + 1], data))) for i in range(4)]
    # Batch sizes may take other conv kernels (float32 rounding ~1e-6 relative through 11 layers);
    # training mode changes the losses by O(1).
    np.testing.assert_allclose(whole["loss"], sum(a["loss"] for a in alone), rtol=1e-3)
    assert whole["top1"] == sum(a["top1"] for a in alone) and whole["count"] == 4
