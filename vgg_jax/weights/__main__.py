from vgg_jax.weights.cli import main

main()
