"""VGG-16 transferred to the 5 classes of tfds `tf_flowers`.

`--config configs/flowers.py` (new head, frozen backbone), then `:finetune`.
"""

from configs.transfer import get_transfer_config


def get_config(stage="head"):
    return get_transfer_config("flowers", "tf_flowers", stage)
