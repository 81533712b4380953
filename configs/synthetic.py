"""Quickstart anywhere: the default model (vgg11_bn, width x0.25, 32x32) on the synthetic source.

`python train.py --config configs/synthetic.py` needs no dataset, no network and no TensorFlow:
10 generated class patterns (`vgg_jax.data.synthetic`). 'synthetic:CLASSES' sets the class count.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.name = "synthetic"
    config.data.source = "synthetic"
    config.data.mean_rgb = (128.0, 128.0, 128.0)  # the patterns' mid-grey and spread (0-255)
    config.data.std_rgb = (64.0, 64.0, 64.0)
    config.train.num_epochs = 10  # 31 steps per epoch at batch 32: 310 steps
    return config
