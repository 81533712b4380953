"""Transfer learning: a new head on a restored backbone, frozen, then fine-tuned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vgg_jax
from configs import cats_vs_dogs, default, flowers
from vgg_jax.core.normalization import TORCHVISION
from vgg_jax.train import loop
from vgg_jax.weights import model_directory, registry


def shrink(config):
    """The same config on a tiny net at 32 px, for a CPU test."""
    config.model.update(width=0.125, image_size=32)
    config.data.update(crop_size=32, scale_min=32, scale_max=40, eval_scale=32)
    config.train.update(batch_size=8, eval_batch_size=8, num_steps=2, log_every=1)
    return config


def save_pretrained(directory, num_classes=1000):
    """A stand-in for imported ImageNet weights: a tiny vgg16 with torchvision normalisation,
    recorded as the cache records its conversion of the published file."""
    model = vgg_jax.vgg16(num_classes=num_classes, width=0.125, image_size=32)
    variables = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    spec = model_directory.ModelSpec("vgg16", {"num_classes": num_classes, "width": 0.125, "image_size": 32},
                                 None, TORCHVISION)
    published = registry.lookup("vgg16")
    model_directory.save_model(directory, variables, spec, {"file": published.file_name, "sha256": published.digest})
    return variables


@pytest.mark.slow
@pytest.mark.parametrize("config_module, classes", [(cats_vs_dogs, 2), (flowers, 5)])
def test_transfer_configs_train_a_new_head_on_mock_data(tmp_path, monkeypatch, config_module, classes):
    # The configs start from `pretrained:vgg16`: a weight cache that already holds it is used
    # as it is (no download).
    monkeypatch.setenv("VGG_JAX_HOME", str(tmp_path / "cache"))
    pretrained = save_pretrained(tmp_path / "cache" / "vgg16")
    config = shrink(config_module.get_config("head"))
    assert config.train.init_from == "pretrained:vgg16"
    with tfds.testing.mock_data(num_examples=16):
        loop.train_and_evaluate(config, str(tmp_path / "head"))
    variables, spec, _ = model_directory.load_variables(tmp_path / "head")
    assert spec.model_kwargs["num_classes"] == classes and spec.normalization == TORCHVISION
    assert variables["params"]["fc8"]["kernel"].shape[-1] == classes
    for layer in ("conv1_1", "conv5_3", "fc6", "fc7"):  # frozen backbone: bit-identical
        np.testing.assert_array_equal(variables["params"][layer]["kernel"], pretrained["params"][layer]["kernel"])

    if config_module is flowers:  # the finetune stage is shared code: once is enough
        return
    config = shrink(config_module.get_config("finetune"))
    config.train.init_from = str(tmp_path / "head")
    with tfds.testing.mock_data(num_examples=16):
        loop.train_and_evaluate(config, str(tmp_path / "finetune"))
    tuned, _, _ = model_directory.load_variables(tmp_path / "finetune")
    assert not np.array_equal(tuned["params"]["conv1_1"]["kernel"], pretrained["params"]["conv1_1"]["kernel"])


@pytest.mark.slow
def test_new_head_on_a_digits_trained_backbone_learns(tmp_path):
    config = default.get_config()
    config.model.width = 0.125
    config.train.update(batch_size=32, num_steps=120, eval_every_epochs=100)
    trained = loop.train_and_evaluate(config, str(tmp_path / "digits"))
    backbone, _, _ = model_directory.load_variables(tmp_path / "digits")

    config.train.update(num_steps=40, init_from=str(tmp_path / "digits"), init_layers="backbone",
                        backbone_lr_multiplier=0.0)
    results = loop.train_and_evaluate(config, str(tmp_path / "head"))
    head, _, _ = model_directory.load_variables(tmp_path / "head")
    np.testing.assert_array_equal(head["params"]["fc7"]["kernel"], backbone["params"]["fc7"]["kernel"])
    assert not np.allclose(head["params"]["fc8"]["kernel"], backbone["params"]["fc8"]["kernel"])
    # A fresh fc8 on frozen features recovers most of what the whole net had learnt.
    assert results["val_top1"] > 0.3 and results["val_top1"] > 0.5 * trained["val_top1"]
