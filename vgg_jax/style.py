"""Neural style transfer (Gatys, Ecker & Bethge, 2016, "Image Style Transfer Using Convolutional
Neural Networks") on VGG features.

An image is optimised, from the content image, so that its VGG activations match the content
image's at the content layers and its Gram matrices match the style image's at the style layers:

    total = content_weight * sum_l w_l mean((F_l - P_l)^2)
          + style_weight * sum_l w_l mean((G_l - A_l)^2)        G = F^T F / (C*H*W) per image
          + tv_weight * mean squared difference of neighbouring pixels (optional)

The Gram matrix is normalised as in PyTorch's neural style tutorial (divided by C*H*W, so its
entries are mean products and do not grow with the image); Gatys et al. divide the squared
error by 4 C^2 (H*W)^2 instead, which only rescales style_weight for a fixed image size. Layers
and their weights default to the paper's: style relu1_1 .. relu5_1 with w_l = 1/5, content
relu4_2. Gram matrices and losses are computed in float32 whatever the model's compute dtype:
at realistic activations (1e2-1e3) over thousands of positions, float16 sums overflow and
bfloat16 sums lose most of their digits. Images are float RGB pixels on a 0-255 scale; the
weights' input convention (`Normalization`) is applied inside. Gatys et al. use average pooling
(`model.clone(pool="avg")`): the same weights serve both.

    image = style.stylize(model, variables, normalization, content, style_image, steps=300)

`stylize` is a pure function (jittable inside other code); `Objective`, `start` and `step` are
its parts for loops that watch the loss (`python -m vgg_jax.stylize`).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

import vgg_jax
from vgg_jax.core.normalization import Normalization
from vgg_jax.features import extract_features

STYLE_LAYERS = {"relu1_1": 0.2, "relu2_1": 0.2, "relu3_1": 0.2, "relu4_1": 0.2, "relu5_1": 0.2}
CONTENT_LAYERS = {"relu4_2": 1.0}
OPTIMIZERS = ("lbfgs", "adam")
ADAM_LEARNING_RATE = 10.0  # pixels (0-255 scale) per step, as Johnson's neural-style


def gram_matrix(features: jax.Array) -> jax.Array:
    """(N, H, W, C) activations -> (N, C, C) float32 Gram matrices F^T F / (C*H*W)."""
    n, height, width, channels = features.shape
    flat = features.astype(jnp.float32).reshape(n, height * width, channels)
    gram = jnp.einsum("npc,npd->ncd", flat, flat, precision=jax.lax.Precision.HIGHEST)
    return gram / (channels * height * width)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """mean((F - P)^2) in float32."""
    return jnp.mean(jnp.square(features.astype(jnp.float32) - target.astype(jnp.float32)))


def style_loss(gram: jax.Array, target: jax.Array) -> jax.Array:
    """mean((G - A)^2) over the Gram matrices' entries."""
    return jnp.mean(jnp.square(gram - target))


def total_variation(image: jax.Array) -> jax.Array:
    """Mean squared difference of vertically and of horizontally neighbouring pixels (..., H, W, C)."""
    return (jnp.mean(jnp.square(image[..., 1:, :, :] - image[..., :-1, :, :]))
            + jnp.mean(jnp.square(image[..., :, 1:, :] - image[..., :, :-1, :])))


@struct.dataclass
class Objective:
    """The loss of one stylisation: the network, its targets and the weights. A pytree whose
    arrays jit and grad see; the network, convention and layer choice are static."""

    model: vgg_jax.VGG = struct.field(pytree_node=False)
    normalization: Normalization = struct.field(pytree_node=False)
    style_layers: tuple[tuple[str, float], ...] = struct.field(pytree_node=False)
    content_layers: tuple[tuple[str, float], ...] = struct.field(pytree_node=False)
    variables: dict
    style_grams: dict[str, jax.Array]
    content_features: dict[str, jax.Array]
    style_weight: float
    content_weight: float
    tv_weight: float

    def features(self, image: jax.Array, names) -> dict[str, jax.Array]:
        """Named activations of one (H, W, 3) pixel image."""
        return extract_features(self.model, self.variables, self.normalization.apply(image[None]), names)

    def terms(self, image: jax.Array) -> dict[str, jax.Array]:
        """{content, style, tv}: the weighted terms of the total loss at `image`, taken at its
        pixels clipped to [0, 255]: the picture that will be saved (out-of-range pixels get no
        gradient outwards, and the loss an optimiser lowers is the saved picture's)."""
        image = jnp.clip(image, 0.0, 255.0)
        names = tuple(dict(self.style_layers + self.content_layers))
        features = self.features(image, names)
        content = sum(weight * content_loss(features[name], self.content_features[name])
                      for name, weight in self.content_layers)
        style = sum(weight * style_loss(gram_matrix(features[name]), self.style_grams[name])
                    for name, weight in self.style_layers)
        return {"content": self.content_weight * content, "style": self.style_weight * style,
                "tv": self.tv_weight * total_variation(image)}

    def __call__(self, image: jax.Array) -> jax.Array:
        """The total loss at `image`, a scalar."""
        return sum(self.terms(image).values())


def objective(model: vgg_jax.VGG, variables: dict, normalization: Normalization, content: jax.Array,
              style: jax.Array, *, style_layers: Mapping[str, float] = STYLE_LAYERS,
              content_layers: Mapping[str, float] = CONTENT_LAYERS, style_weight: float = 1e6,
              content_weight: float = 1.0, tv_weight: float = 0.0) -> Objective:
    """The loss of stylising `content` (H, W, 3) after `style` (any size), pixels on a 0-255
    scale. The default style_weight balances torchvision-normalised weights (pretrained:vgg19),
    as PyTorch's tutorial; weights in Caffe's convention (std 1) have ~58x larger activations."""
    blank = Objective(model, normalization, tuple(style_layers.items()), tuple(content_layers.items()),
                      variables, {}, {}, style_weight, content_weight, tv_weight)
    style_features = blank.features(jnp.asarray(style, jnp.float32), tuple(style_layers))
    content_features = blank.features(jnp.asarray(content, jnp.float32), tuple(content_layers))
    return blank.replace(style_grams={name: gram_matrix(value) for name, value in style_features.items()},
                         content_features=content_features)


def make_optimizer(name: str, learning_rate: float = ADAM_LEARNING_RATE) -> optax.GradientTransformationExtraArgs:
    """optax's L-BFGS (its zoom line search picks each step; learning_rate unused) or Adam."""
    if name == "lbfgs":
        return optax.lbfgs()
    if name == "adam":
        return optax.with_extra_args_support(optax.adam(learning_rate))
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def start(content: jax.Array, optimizer: str, learning_rate: float = ADAM_LEARNING_RATE):
    """(image, optimizer state) before the first step: the content image's pixels."""
    image = jnp.asarray(content, jnp.float32)
    return image, make_optimizer(optimizer, learning_rate).init(image)


def step(loss: Objective, image: jax.Array, state, optimizer: str,
         learning_rate: float = ADAM_LEARNING_RATE):
    """One optimiser step: (image, state, loss at the image it started from)."""
    transform = make_optimizer(optimizer, learning_rate)
    if optax.tree.get(state, "value") is not None:  # L-BFGS's line search already evaluated it
        value, grad = optax.value_and_grad_from_state(loss)(image, state=state)
    else:
        value, grad = jax.value_and_grad(loss)(image)
    updates, state = transform.update(grad, state, image, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(image, updates), state, value


def stylize(model: vgg_jax.VGG, variables: dict, normalization: Normalization, content: jax.Array,
            style: jax.Array, *, steps: int = 300, optimizer: str = "lbfgs",
            learning_rate: float = ADAM_LEARNING_RATE, **loss_options) -> jax.Array:
    """`content` (H, W, 3) restyled after `style`: (H, W, 3) float32 pixels in [0, 255].
    `loss_options` are `objective`'s (layers and weights). The optimised pixels are not
    projected back into [0, 255] between steps (that would break L-BFGS's curvature pairs); the
    loss sees them clipped, as they are returned."""
    loss = objective(model, variables, normalization, content, style, **loss_options)

    def one_step(carry, _):
        image, state, _ = step(loss, *carry, optimizer, learning_rate)
        return (image, state), None

    (image, _), _ = jax.lax.scan(one_step, start(content, optimizer, learning_rate), length=steps)
    return jnp.clip(image, 0.0, 255.0)
