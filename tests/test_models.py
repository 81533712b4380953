"""The model zoo against the paper's counts and independent torch references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from numerics import assert_float32_close
import vgg_jax
from vgg_jax.core.models import BLOCK_WIDTHS, LAYOUTS, local_response_norm, max_pool_2x2

# PAPER.md: exact parameter counts with a 1000-way head (BN variants count scale and bias).
PAPER_PARAM_COUNTS = {
    "vgg11": 132_863_336, "vgg11_lrn": 132_863_336, "vgg13": 133_047_848,
    "vgg16_conv1": 133_638_952, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}


def init_variables(model, size, seed=0, batch=1):
    return model.init(jax.random.key(seed), jnp.zeros((batch, size, size, 3)))


@pytest.mark.parametrize("arch", sorted(PAPER_PARAM_COUNTS))
def test_parameter_counts_match_the_paper(arch):
    model = vgg_jax.create_model(arch)
    shapes = jax.eval_shape(lambda: init_variables(model, 224))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == PAPER_PARAM_COUNTS[arch]


def test_layer_names_are_caffes():
    shapes = jax.eval_shape(lambda: init_variables(vgg_jax.vgg19_bn(), 224))
    convs_per_block = (2, 2, 4, 4, 4)  # config E, Table 1
    positions = [f"{b}_{i}" for b, n in enumerate(convs_per_block, 1) for i in range(1, n + 1)]
    expected = {f"conv{p}" for p in positions} | {f"bn{p}" for p in positions} | {"fc6", "fc7", "fc8"}
    assert set(shapes["params"]) == expected
    assert set(shapes["batch_stats"]) == {name for name in expected if name.startswith("bn")}


# --- LRN ------------------------------------------------------------------------------------

def test_lrn_matches_torch():
    x = np.random.default_rng(0).normal(scale=20.0, size=(2, 5, 6, 16)).astype(np.float32)
    reference = torch.nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)
    # Large activations so the squared-sum term matters (alpha * sum ~ 0.2 against k = 2); the
    # float64 reference leaves only our float32 rounding: 1e-6 relative, 1e-6 absolute.
    expected = reference(torch.from_numpy(x).double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(local_response_norm(jnp.asarray(x)), expected, atol=1e-6, rtol=1e-6)


# --- max-pooling ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 4)])  # odd sides: the last row/column is dropped
def test_max_pool_and_its_gradient_match_torch(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)  # no ties
    upstream = np.random.default_rng(1).normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    pooled, pullback = jax.vjp(max_pool_2x2, jnp.asarray(x))
    reference_input = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    reference = torch.nn.functional.max_pool2d(reference_input, 2)
    reference.backward(torch.from_numpy(upstream.astype(np.float32)).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(pooled, reference.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(pullback(jnp.asarray(upstream, jnp.float32))[0],
                                  reference_input.grad.permute(0, 2, 3, 1).numpy())


# --- parity with torchvision-layout torch networks -------------------------------------------

def torch_reference(arch_model, num_classes):
    """A torchvision-style VGG built from torch.nn (features.N / classifier.N), independent of ours."""
    layers, channels = [], 3
    for block, kernels in enumerate(LAYOUTS[arch_model.layout]):
        for index, kernel in enumerate(kernels):
            width = BLOCK_WIDTHS[block]
            layers.append(torch.nn.Conv2d(channels, width, kernel, padding=kernel // 2))
            if arch_model.batch_norm:
                layers.append(torch.nn.BatchNorm2d(width))
            layers.append(torch.nn.ReLU())
            if arch_model.lrn and block == 0 and index == 0:
                layers.append(torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
            channels = width
        layers.append(torch.nn.MaxPool2d(2, 2))
    window = arch_model.image_size // 32
    classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * window * window, 4096), torch.nn.ReLU(), torch.nn.Dropout(0.0),
        torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Dropout(0.0),
        torch.nn.Linear(4096, num_classes))
    return torch.nn.Sequential(torch.nn.Sequential(*layers), torch.nn.Flatten(), classifier)


def randomize_batch_stats(variables, seed):
    """Non-trivial running statistics, so eval-mode BN is really tested."""
    if "batch_stats" not in variables:
        return variables
    rng = np.random.default_rng(seed)
    stats = jax.tree.map(lambda leaf: jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32),
                         variables["batch_stats"])
    return {**variables, "batch_stats": stats}


def copy_into_torch(variables, reference):
    params, stats = variables["params"], variables.get("batch_stats", {})
    convs = [m for m in reference[0] if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in reference[0] if isinstance(m, torch.nn.BatchNorm2d)]
    conv_names = sorted((n for n in params if n.startswith("conv")),
                        key=lambda n: tuple(map(int, n[4:].split("_"))))
    with torch.no_grad():
        for index, name in enumerate(conv_names):
            convs[index].weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)))
            convs[index].bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))
            if norms:
                bn = "bn" + name[4:]
                norms[index].weight.copy_(torch.from_numpy(np.asarray(params[bn]["scale"])))
                norms[index].bias.copy_(torch.from_numpy(np.asarray(params[bn]["bias"])))
                norms[index].running_mean.copy_(torch.from_numpy(np.asarray(stats[bn]["mean"])))
                norms[index].running_var.copy_(torch.from_numpy(np.asarray(stats[bn]["var"])))
        linears = [m for m in reference[2] if isinstance(m, torch.nn.Linear)]
        # fc6 reads its window in (row, column, channel) order; torch.nn.Flatten of NCHW in
        # (channel, row, column) order: the rows of fc6's kernel are permuted to match.
        window = reference[2][0].in_features // convs[-1].out_channels
        side = int(round(window ** 0.5))
        fc6 = np.asarray(params["fc6"]["kernel"])
        fc6 = fc6.reshape(side, side, -1, fc6.shape[-1]).transpose(2, 0, 1, 3).reshape(fc6.shape)
        for linear, kernel, name in zip(linears, (fc6, params["fc7"]["kernel"], params["fc8"]["kernel"]),
                                        ("fc6", "fc7", "fc8")):
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).T)))
            linear.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))


def torch_logits(reference, images, train):
    reference.train(train)
    with torch.no_grad():
        return reference(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("arch, size", [("vgg11", 32), ("vgg11_lrn", 32), ("vgg16_conv1", 32), ("vgg16", 32),
                                        ("vgg16_bn", 32), ("vgg11", 64)])
def test_logits_match_torch_reference(arch, size):
    """Catches a layer, layout or BN difference from torchvision's VGG and, at 64 px (a 2x2
    fc6 window), fc6 flattening its window with rows and columns swapped."""
    # Inputs of 32 px (a 1x1 head window) and 64 px keep full width yet are fast.
    model = vgg_jax.create_model(arch, num_classes=10, image_size=size, dropout_rate=0.0,
                                 init_scheme="kaiming")
    images = jax.random.uniform(jax.random.key(1), (4, size, size, 3), minval=-1.0, maxval=1.0)
    variables = randomize_batch_stats(init_variables(model, size), seed=2)
    reference = torch_reference(model, 10)
    copy_into_torch(variables, reference)

    # The widest sum is a 3x3 conv over 512 channels; rounding adds up over every layer.
    terms, layers = 512 * 3 * 3, len(variables["params"])
    ours = model.apply(variables, images)
    assert_float32_close(ours, torch_logits(reference, images, train=False), terms, layers)
    if model.batch_norm:  # train mode: BN on batch statistics, running means updated alike
        ours, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        assert_float32_close(ours, torch_logits(reference, images, train=True), terms, layers)
        torch_mean = next(m for m in reference[0] if isinstance(m, torch.nn.BatchNorm2d)).running_mean
        np.testing.assert_allclose(updates["batch_stats"]["bn1_1"]["mean"], torch_mean.numpy(), atol=1e-6)


# --- the head, applied two ways --------------------------------------------------------------

def conv_head_reference(params, pool5, window):
    """The paper's fully-convolutional head written with lax convolutions: fc6 a 7x7 conv."""
    def conv(x, layer, size):
        kernel = params[layer]["kernel"].reshape(size, size, -1, params[layer]["kernel"].shape[-1])
        out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + params[layer]["bias"]
    x = jax.nn.relu(conv(pool5, "fc6", window))
    x = jax.nn.relu(conv(x, "fc7", 1))
    return conv(x, "fc8", 1)


@pytest.mark.slow
def test_dense_head_on_224_equals_fc_head():
    model = vgg_jax.vgg16(num_classes=7, width=0.125)
    images = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
    variables = init_variables(model, 224)
    fc = model.apply(variables, images)
    dense = model.apply(variables, images, dense=True)
    assert dense.shape == (2, 1, 1, 7)
    assert_float32_close(dense[:, 0, 0], fc, terms=7 * 7 * 64, layers=3)  # fc6's sum, head layers


def test_dense_head_on_384_is_the_convolutional_head():
    model = vgg_jax.vgg16(num_classes=5, width=0.125)
    images = jax.random.normal(jax.random.key(0), (1, 384, 384, 3))
    variables = init_variables(model, 224)
    scores = model.apply(variables, images, dense=True)
    assert scores.shape == (1, 6, 6, 5)
    pool5 = model.clone(include_top=False).apply(variables, images)
    expected = conv_head_reference(variables["params"], pool5, 7)
    assert_float32_close(scores, expected, terms=7 * 7 * 64, layers=3)


@pytest.mark.slow
def test_dense_head_accepts_non_square_images():
    model = vgg_jax.vgg11(num_classes=3, width=0.125, image_size=64)
    scores = model.apply(init_variables(model, 64), jnp.zeros((1, 64, 128, 3)), dense=True)
    assert scores.shape == (1, 1, 3, 3)


@pytest.mark.slow
def test_without_top_returns_pool5_and_intermediates_are_named():
    model = vgg_jax.vgg16(width=0.125, image_size=32, num_classes=4)
    variables = init_variables(model, 32)
    images = jnp.ones((2, 32, 32, 3))
    features = model.clone(include_top=False).apply({"params": {
        k: v for k, v in variables["params"].items() if not k.startswith("fc")}}, images)
    assert features.shape == (2, 1, 1, 64)
    logits, state = model.apply(variables, images, mutable=["intermediates"])
    sown = {name: value[0] for name, value in state["intermediates"].items()}
    assert {"preact1_1", "relu1_2", "relu3_3", "relu5_3", "pool5", "relu6", "relu7", "scores"} <= set(sown)
    np.testing.assert_array_equal(sown["pool5"], features)
    np.testing.assert_array_equal(sown["relu1_1"], jnp.maximum(sown["preact1_1"], 0))
    np.testing.assert_array_equal(sown["scores"][:, 0, 0], logits)


# --- used from user code -----------------------------------------------------------------------

@pytest.mark.slow
def test_grad_inside_a_user_jitted_loss():
    model = vgg_jax.vgg11(num_classes=3, width=0.125, image_size=32, dropout_rate=0.5)
    variables = init_variables(model, 32)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 0])

    @jax.jit
    def loss_fn(params, rng):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grads = jax.grad(loss_fn)(variables["params"], jax.random.key(2))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # The fc8 bias gradient of a mean CE loss is closed-form: mean(softmax - onehot).
    logits = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    expected = jnp.mean(jax.nn.softmax(logits) - jax.nn.one_hot(labels, 3), axis=0)
    np.testing.assert_allclose(grads["fc8"]["bias"], expected, atol=1e-6)


def test_library_jit_keeps_convolutions_on_xla_with_the_same_results():
    # vgg_jax.jit compiles with COMPILER_OPTIONS (see vgg_jax.core.compilation): XLA's own CPU
    # convolutions rather than YNNPACK fusions, and the same logits as a plain jax.jit.
    model = vgg_jax.vgg11(num_classes=3, width=0.125, image_size=32)
    variables = init_variables(model, 32)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    ours = vgg_jax.jit(model.apply)
    program = ours.lower(variables, images).compile().as_text()
    assert "convolution(" in program and "ynn" not in program
    expected = jax.jit(model.apply)(variables, images)
    assert_float32_close(ours(variables, images), expected, terms=512 * 9, layers=len(variables["params"]))


@pytest.mark.slow
def test_vmap_over_images_equals_batched_apply():
    model = vgg_jax.vgg11_lrn(num_classes=3, width=0.125, image_size=32)
    variables = init_variables(model, 32)
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    one = jax.vmap(lambda image: model.apply(variables, image[None])[0])(images)
    assert_float32_close(one, model.apply(variables, images), terms=512 * 9, layers=len(variables["params"]))


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    # bf16 has an 8-bit mantissa; through 16 layers the logits stay within ~2% of their scale.
    f32 = vgg_jax.vgg16(num_classes=10, width=0.25, image_size=32, init_scheme="kaiming")
    bf16 = f32.clone(dtype=jnp.bfloat16)
    variables = init_variables(f32, 32)
    images = jax.random.normal(jax.random.key(3), (8, 32, 32, 3))
    reference = f32.apply(variables, images)
    low = bf16.apply(variables, images)
    assert low.dtype == jnp.bfloat16
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32
    error = jnp.max(jnp.abs(low.astype(jnp.float32) - reference)) / jnp.max(jnp.abs(reference))
    assert error < 0.02


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vgg16_bn"):
        vgg_jax.create_model("vgg17")


def test_wrong_channel_count_names_expected_shape():
    model = vgg_jax.vgg11(width=0.125, image_size=32)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_too_small_input_names_expected_shape():
    model = vgg_jax.vgg11(width=0.125)
    variables = jax.eval_shape(lambda: init_variables(model, 224))
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        model.apply(variables, jnp.zeros((1, 200, 200, 3)), dense=True)
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        model.apply(variables, jnp.zeros((1, 256, 256, 3)))


@pytest.mark.parametrize("bad", [dict(num_classes=0), dict(image_size=100), dict(dropout_rate=1.0),
                                 dict(width=0.0), dict(init_scheme="lecun")])
def test_bad_config_values_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        vgg_jax.vgg11(**bad)
