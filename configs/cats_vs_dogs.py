"""VGG-16 fine-tuned into a 2-class cats-vs-dogs classifier (tfds `cats_vs_dogs`).

`--config configs/cats_vs_dogs.py` (new head, frozen backbone), then `:finetune`.
"""

from configs.transfer import get_transfer_config


def get_config(stage="head"):
    return get_transfer_config("cats_vs_dogs", "cats_vs_dogs", stage)
