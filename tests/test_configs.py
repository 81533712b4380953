"""The shipped configs against the paper's recipe (Sec. 3.1), written out here, not imported."""

import importlib

import pytest

PAPER_NETS = {"vgg11": "vgg11", "vgg11_lrn": "vgg11_lrn", "vgg13": "vgg13", "vgg16": "vgg16",
              "vgg16_conv1": "vgg16_conv1", "vgg19": "vgg19"}


@pytest.mark.parametrize("module, arch", sorted(PAPER_NETS.items()))
def test_paper_configs_train_with_the_papers_recipe(module, arch):
    """Catches a recipe value that a paper config inherits drifting in configs/default.py or
    configs/imagenet.py (e.g. the LR-drop factor 0.1 -> 0.5, momentum, L2, dropout, batch):
    Sec. 3.1 is SGD momentum 0.9, L2 5e-4, LR 1e-2 divided by 10 on a validation plateau, at
    most three drops, dropout 0.5 on fc6/fc7, batch 256, 224 crops, paper init."""
    config = importlib.import_module(f"configs.{module}").get_config()
    assert config.model.arch == arch and config.model.width == 1.0
    assert (config.model.dropout_rate, config.model.init_scheme, config.model.image_size) == (0.5, "paper", 224)
    train = config.train
    assert (train.momentum, train.weight_decay, train.learning_rate) == (0.9, 5e-4, 1e-2)
    assert (train.schedule, train.plateau_factor, train.max_lr_drops) == ("plateau", 0.1, 3)
    assert not train.decay_biases_and_bn and train.batch_size == 256
    assert (config.data.crop_size, config.data.scale_min, config.data.scale_max) == (224, 256, 256)


@pytest.mark.parametrize("scale, init_from, layers, learning_rate", [
    ("384", "runs/vgg16_s256", "all", 1e-3),
    ("256-512", "runs/vgg16_s384", "all", 1e-3),
])
def test_larger_scales_start_from_the_previous_scale_at_a_tenth_of_the_rate(scale, init_from, layers, learning_rate):
    """Catches the S=384 / multi-scale chain (Sec. 3.1: initialised from the S=256 net, resp.
    fine-tuned from S=384, at LR 1e-3) pointing at the wrong run or keeping LR 1e-2."""
    config = importlib.import_module("configs.vgg16").get_config(scale)
    assert (config.train.init_from, config.train.init_layers, config.train.learning_rate) == (
        init_from, layers, learning_rate)


def test_deeper_nets_start_from_net_a_and_net_a_from_scratch():
    """Catches the pre-initialisation rule of Sec. 3.1 being dropped from the configs."""
    assert importlib.import_module("configs.vgg11").get_config().train.init_from == ""
    deep = importlib.import_module("configs.vgg19").get_config()
    assert (deep.train.init_from, deep.train.init_layers) == ("runs/vgg11_s256", "net_a")
