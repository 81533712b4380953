"""python -m vgg_jax.weights (see vgg_jax.weights.cli)."""

from vgg_jax.weights.cli import main

main()
