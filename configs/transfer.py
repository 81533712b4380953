"""Transfer learning from ImageNet weights (the original summary's VGG-16 cats-vs-dogs case).

Two stages, chosen by the config argument:
- `head` (default): start from torchvision's ImageNet VGG-16 (`train.init_from`, default
  `pretrained:vgg16`: downloaded and converted into the weight cache when the run starts, not
  when the config loads; any model directory works too), keep every layer but fc8, put a new
  fc8 for the dataset's classes, and train it with the backbone frozen;
- `finetune`: continue from the `head` run with all layers learning at a tenth of the rate.
The run inherits the input normalisation of the weights it starts from.
"""

import ml_collections

from configs import default


def get_transfer_config(name: str, dataset: str, stage: str, *, image_size: int = 224,
                        pretrained: str = "pretrained:vgg16") -> ml_collections.ConfigDict:
    if stage not in ("head", "finetune"):
        raise ValueError(f"unknown transfer stage {stage!r}; choose 'head' or 'finetune'")
    config = default.get_config()
    config.name = f"{name}_{stage}"
    config.model.update(arch="vgg16", width=1.0, image_size=image_size, dropout_rate=0.5,
                        init_scheme="paper")
    # These datasets ship one split: hold out its last 10% for validation.
    config.data.update(source=dataset, train_split="train[:90%]", eval_split="train[90%:]",
                       crop_size=image_size, scale_min=256 * image_size // 224,
                       scale_max=256 * image_size // 224, eval_scale=256 * image_size // 224,
                       color_shift_std=0.1, shuffle_window=4096)
    config.train.update(batch_size=64, num_epochs=5, schedule="cosine", eval_every_epochs=1.0,
                        eval_batch_size=128, log_every=20, checkpoint_every_steps=500)
    if stage == "head":
        config.train.update(init_from=pretrained, init_layers="backbone", learning_rate=1e-2,
                            backbone_lr_multiplier=0.0)
    else:
        config.train.update(init_from=f"runs/{name}_head", init_layers="all", learning_rate=1e-3,
                            backbone_lr_multiplier=1.0)
    return config
