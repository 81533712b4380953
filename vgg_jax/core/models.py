"""VGG networks (Simonyan & Zisserman, Table 1) as one Flax Linen module and one layout table.

Layers carry the Caffe names of the authors' release (conv1_1 .. conv5_4, fc6, fc7, fc8, and
bn1_1 .. beside the convs of the batch-norm variants): checkpoints, pre-initialisation and
weight import key on them.

The head is stored once, as dense kernels, and applied to every window of
`head_window x head_window` positions of the last feature map. On the training crop the map is
exactly one window, so this is the fc head (flatten in NHWC order + matmul); on a larger image
it is the paper's fully-convolutional head (fc6 a 7x7 conv, fc7/fc8 1x1 convs) and yields the
class score map used by dense evaluation.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.core import winograd

# Kernel size of every conv, block by block; block b has width BLOCK_WIDTHS[b]. Config C's
# 1x1 convs are the only kernels that are not 3x3.
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
LAYOUTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "A": ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    "B": ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
    "C": ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)),
    "D": ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    "E": ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)),
}
FC_WIDTH = 4096
DOWNSAMPLING = 2 ** len(BLOCK_WIDTHS)  # five 2x2 pools

# The paper's LRN (AlexNet form): a / (k + alpha * sum over n neighbouring channels of a^2)^beta.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

INIT_SCHEMES = ("paper", "glorot", "kaiming")
CONV_ALGORITHMS = ("direct", "winograd")


def local_response_norm(x: jax.Array) -> jax.Array:
    """Cross-channel LRN with the paper's constants, computed in float32 for stability."""
    squares = jnp.square(x.astype(jnp.float32))
    half = LRN_SIZE // 2
    padded = jnp.pad(squares, [(0, 0)] * (x.ndim - 1) + [(half, LRN_SIZE - 1 - half)])
    window_sums = jax.lax.reduce_window(
        padded, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (LRN_SIZE,), (1,) * x.ndim, "VALID"
    )
    scale = (LRN_K + LRN_ALPHA * window_sums) ** LRN_BETA
    return (x.astype(jnp.float32) / scale).astype(x.dtype)


def pool_windows_2x2(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C): the 2x2 stride-2 windows of NHWC maps, an odd
    last row or column dropped (as `nn.max_pool(x, (2, 2), (2, 2))`). Pooling is a reduction
    over axes 2 and 4 of this view, which XLA:CPU differentiates 4-10x faster than a
    reduce_window (select-and-scatter for the max)."""
    n, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(n, height // 2, 2, width // 2, 2, channels)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2. Tied maxima share the gradient instead of one taking it
    all; after a ReLU ties are zeros, whose gradient the ReLU stops anyway."""
    return pool_windows_2x2(x).max(axis=(2, 4))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2: Gatys et al.'s choice for image synthesis, where it
    passes gradient to every position of a window."""
    return pool_windows_2x2(x).mean(axis=(2, 4))


POOLS = {"max": max_pool_2x2, "avg": avg_pool_2x2}


def sliding_windows(x: jax.Array, window: int) -> jax.Array:
    """(N, H, W, C) -> (N, H-w+1, W-w+1, w*w*C): every w x w window flattened in (h, w, c) order.

    When the map is exactly one window this is a plain NHWC flatten, so the dense head kernel
    applies unchanged both to a training crop and, fully convolutionally, to a whole image.
    """
    n, height, width, channels = x.shape
    out_h, out_w = height - window + 1, width - window + 1
    if (out_h, out_w) == (1, 1):
        return x.reshape(n, 1, 1, window * window * channels)
    shifted = [x[:, i : i + out_h, j : j + out_w, :] for i in range(window) for j in range(window)]
    return jnp.concatenate(shifted, axis=-1)


def initializers(scheme: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kernel/bias initialisers for (convs, dense layers) under one named scheme."""
    zeros = nn.initializers.zeros
    if scheme == "paper":  # N(0, variance 1e-2), zero biases (Sec. 3.1)
        init = dict(kernel_init=nn.initializers.normal(stddev=0.1), bias_init=zeros)
        return init, init
    if scheme == "glorot":
        init = dict(kernel_init=nn.initializers.glorot_uniform(), bias_init=zeros)
        return init, init
    if scheme == "kaiming":  # torchvision: He normal (fan_out) convs, N(0, 0.01) linears
        conv = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        return (dict(kernel_init=conv, bias_init=zeros),
                dict(kernel_init=nn.initializers.normal(stddev=0.01), bias_init=zeros))
    raise ValueError(f"unknown init_scheme {scheme!r}; choose one of {INIT_SCHEMES}")


class ConvBlock(nn.Module):
    """One block of VGG's conv stack: its convs (each with BN if batch_norm, then ReLU; LRN after
    conv1_1 if lrn), then the 2x2 max- or average-pool. Its layers are named conv{block}_{i}, bn{block}_{i}."""

    block: int
    kernels: tuple[int, ...]
    features: int
    batch_norm: bool
    lrn: bool
    use_running_average: bool
    init_scheme: str
    dtype: Any
    conv_algorithm: str = "direct"
    pool: str = "max"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv_init, _ = initializers(self.init_scheme)
        for index, kernel in enumerate(self.kernels, start=1):
            name = f"{self.block}_{index}"
            fast = self.conv_algorithm == "winograd" and kernel == 3 and winograd.pays(x)
            x = nn.Conv(self.features, (kernel, kernel), padding="SAME", dtype=self.dtype, name=f"conv{name}",
                        conv_general_dilated=winograd.conv_general_dilated if fast else None, **conv_init)(x)
            self.sow("intermediates", f"preact{name}", x)
            if self.batch_norm:  # torchvision's order: conv -> BN -> ReLU
                x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype, name=f"bn{name}")(x)
            x = nn.relu(x)
            self.sow("intermediates", f"relu{name}", x)
            if self.lrn and name == "1_1":
                x = local_response_norm(x)
                self.sow("intermediates", "norm1", x)
        x = POOLS[self.pool](x)
        self.sow("intermediates", f"pool{self.block}", x)
        return x


class VGG(nn.Module):
    """A VGG network. `__call__(images, train=False, dense=False)` on NHWC images.

    - `dense=False`: the final feature map must be exactly one head window (a 224x224 input for
      the default image_size); returns logits (N, num_classes).
    - `dense=True`: any image of at least image_size pixels per side; returns the class score
      map (N, h, w, num_classes) of the fully-convolutional head.
    - `include_top=False`: returns the pool5 feature map instead.
    - `frozen_backbone=True` (transfer learning, with train=True): every layer but fc8 acts as
      fixed: batch norm uses its running statistics and no gradient flows below fc8, so a
      train step runs the backbone forward only.
    Every named activation is sown into the 'intermediates' collection (see `vgg_jax.features`):
    preact1_1 (a conv's output before BN/ReLU), relu1_1, norm1 (A-LRN), pool1, ..., pool5,
    relu6 and relu7 (fc6/fc7 after ReLU), scores (fc8). Sown names differ from the layer
    names because Flax keeps one namespace per module.
    """

    layout: str = "D"
    num_classes: int = 1000
    batch_norm: bool = False
    lrn: bool = False  # the A-LRN configuration: LRN after the first conv layer
    dropout_rate: float = 0.5
    image_size: int = 224  # the training crop; the head window is image_size // 32
    width: float = 1.0  # width multiplier (not in the paper), for small data and tests
    include_top: bool = True
    init_scheme: str = "paper"
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32
    remat: bool = False  # recompute each conv block's activations in the backward pass (less memory)
    # "winograd": F(4x4, 3x3) on the float32 3x3 layers where it is faster on CPU (vgg_jax.core.winograd)
    conv_algorithm: str = "direct"
    # "avg": average instead of max pooling (Gatys et al.'s style transfer); the same weights serve both
    pool: str = "max"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown VGG layout {self.layout!r}; choose one of {sorted(LAYOUTS)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.image_size < DOWNSAMPLING or self.image_size % DOWNSAMPLING:
            raise ValueError(f"image_size must be a positive multiple of {DOWNSAMPLING}, got {self.image_size}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.conv_algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"unknown conv_algorithm {self.conv_algorithm!r}; choose one of {CONV_ALGORITHMS}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {sorted(POOLS)}")
        initializers(self.init_scheme)  # fail early on an unknown scheme
        super().__post_init__()

    @property
    def head_window(self) -> int:
        return self.image_size // DOWNSAMPLING

    def scaled(self, channels: int) -> int:
        return max(1, round(channels * self.width))

    def check_input(self, images: jax.Array, dense: bool) -> None:
        size = self.image_size
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NHWC RGB images of shape (N, H, W, 3), got {images.shape}")
        height, width = images.shape[1:3]
        if not self.include_top:  # the conv stack alone takes any image of at least 32 px
            size = DOWNSAMPLING
        if dense or not self.include_top:
            if height < size or width < size:  # not min(): symbolic sizes (jax.export) compare one at a time
                raise ValueError(
                    f"images of shape {images.shape} are too small: the head needs at least "
                    f"(N, {size}, {size}, 3)")
        elif (height // DOWNSAMPLING, width // DOWNSAMPLING) != (self.head_window,) * 2:
            raise ValueError(
                f"the fc head expects (N, {size}, {size}, 3) images, got {images.shape}; "
                "use dense=True for the fully-convolutional head on larger images")

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, dense: bool = False,
                 frozen_backbone: bool = False) -> jax.Array:
        self.check_input(images, dense)
        # nn.remat recomputes a block's activations in the backward pass instead of keeping them;
        # share_scope keeps the block's layers directly under VGG (conv1_1, not ConvBlock_0/conv1_1).
        block_class = nn.remat(ConvBlock) if self.remat else ConvBlock
        x = images.astype(self.dtype)
        for block, kernels in enumerate(LAYOUTS[self.layout], start=1):
            conv_block = block_class(block, kernels, self.scaled(BLOCK_WIDTHS[block - 1]), self.batch_norm,
                                     self.lrn, not train or frozen_backbone, self.init_scheme, self.dtype,
                                     self.conv_algorithm, self.pool)
            nn.share_scope(self, conv_block)
            x = conv_block(x)
        if not self.include_top:
            return x
        scores = self.head(x, train, frozen_backbone)
        return scores if dense else scores[:, 0, 0, :]

    def head(self, features: jax.Array, train: bool, frozen_backbone: bool) -> jax.Array:
        """fc6, fc7, fc8 on every head window of the pool5 map: (N, h, w, C) -> scores."""
        _, dense_init = initializers(self.init_scheme)
        fc = functools.partial(nn.Dense, dtype=self.dtype, **dense_init)
        x = sliding_windows(features, self.head_window)
        for layer in (6, 7):
            x = nn.relu(fc(self.scaled(FC_WIDTH), name=f"fc{layer}")(x))
            self.sow("intermediates", f"relu{layer}", x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if frozen_backbone:
            x = jax.lax.stop_gradient(x)
        scores = fc(self.num_classes, name="fc8")(x)
        self.sow("intermediates", "scores", scores)
        return scores


# Named constructors: partials over the one VGG module (config letters from the paper).
vgg11 = functools.partial(VGG, layout="A")
vgg11_lrn = functools.partial(VGG, layout="A", lrn=True)
vgg13 = functools.partial(VGG, layout="B")
vgg16_conv1 = functools.partial(VGG, layout="C")
vgg16 = functools.partial(VGG, layout="D")
vgg19 = functools.partial(VGG, layout="E")
vgg11_bn = functools.partial(VGG, layout="A", batch_norm=True)
vgg13_bn = functools.partial(VGG, layout="B", batch_norm=True)
vgg16_bn = functools.partial(VGG, layout="D", batch_norm=True)
vgg19_bn = functools.partial(VGG, layout="E", batch_norm=True)

ARCHITECTURES = {
    "vgg11": vgg11, "vgg11_lrn": vgg11_lrn, "vgg13": vgg13, "vgg16_conv1": vgg16_conv1,
    "vgg16": vgg16, "vgg19": vgg19, "vgg11_bn": vgg11_bn, "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn, "vgg19_bn": vgg19_bn,
}


def create_model(arch: str, **kwargs) -> VGG:
    """The VGG named `arch` (one of ARCHITECTURES), with VGG's fields as keyword arguments."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)
