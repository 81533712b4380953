"""Random networks for tests, drawn in numpy: compiling model.init's random ops would take
longer than the tests that use them."""

import jax
import jax.numpy as jnp
import numpy as np


def he_normal_variables(model, seed: int = 0, image_size: int = 32) -> dict:
    """`model`'s variables at an `image_size` input (it fixes fc6's shape when the model has its
    head): He-normal kernels, biases uniform in [-0.1, 0.1] (non-zero, so that a bias-handling
    bug shows)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    rng = np.random.default_rng(seed)

    def random_leaf(leaf):
        if len(leaf.shape) == 1:
            return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree.map(random_leaf, shapes)
