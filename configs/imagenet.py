"""The paper's ImageNet recipe (Sec. 3.1), shared by configs/vgg11.py .. vgg19.py.

The training scale is the config argument: `--config configs/vgg16.py:256` (fixed S=256),
`:384` (fixed S=384, initialised from the S=256 run at LR 1e-3) or `:256-512` (scale jittering,
fine-tuned from the S=384 run). Each run's workdir defaults to runs/<name>, which is where the
next link of the chain looks for its initialisation.
"""

import ml_collections

from configs import default

NET_A = "vgg11"


def parse_scale(argument: str) -> tuple[int, int]:
    low, _, high = str(argument or "256").partition("-")
    return int(low), int(high or low)


def get_imagenet_config(arch: str, argument: str) -> ml_collections.ConfigDict:
    scale_min, scale_max = parse_scale(argument)
    config = default.get_config()
    tag = f"s{scale_min}" if scale_min == scale_max else f"s{scale_min}-{scale_max}"
    config.name = f"{arch}_{tag}"

    config.model.update(arch=arch, width=1.0, image_size=224, dropout_rate=0.5, init_scheme="paper")
    config.data.update(
        # ILSVRC-2012 as downloaded (train/ class folders, val/ with its ground truth: README, Data);
        # --config.data.source=imagenet2012 reads tfds's prepared TFRecords instead (the tfds extra).
        source="imagenet:~/imagenet", train_split="train", eval_split="validation", crop_size=224,
        scale_min=scale_min, scale_max=scale_max, eval_scale=(scale_min + scale_max) // 2,
        color_shift_std=0.1, mean_rgb=(123.68, 116.779, 103.939), std_rgb=(1.0, 1.0, 1.0),
        shuffle_window=16_384)
    config.train.update(
        batch_size=256, num_epochs=74, learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="plateau", plateau_patience=2, step_epochs=(), eval_every_epochs=1.0, eval_batch_size=512,
        log_every=100, checkpoint_every_steps=2000)

    if (scale_min, scale_max) == (256, 256):
        if arch not in (NET_A, "vgg11_lrn") and not arch.endswith("_bn"):
            # Deeper nets start from net A's first four convs and three FC layers (BN nets,
            # not in the paper, train from scratch).
            config.train.update(init_from=f"runs/{NET_A}_s256", init_layers="net_a")
    elif (scale_min, scale_max) == (384, 384):
        config.train.update(init_from=f"runs/{arch}_s256", init_layers="all", learning_rate=1e-3)
    else:
        config.train.update(init_from=f"runs/{arch}_s384", init_layers="all", learning_rate=1e-3)
    return config
