"""Offline quickstart: VGG config A (width x0.25) on scikit-learn's handwritten digits.

`python train.py` runs this. Needs no network: the digits ship with scikit-learn.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.arch = "vgg11"
    config.model.width = 0.25
    config.model.image_size = 32  # the crop the fc head is sized for (a 1x1 head window)
    config.model.dropout_rate = 0.5
    config.model.init_scheme = "glorot"
    config.model.dtype = "float32"

    config.data = ml_collections.ConfigDict()
    config.data.source = "digits"  # 'digits', a tfds name ('imagenet2012', 'tf_flowers'), or 'folder:PATH'
    config.data.data_dir = None  # tfds data_dir (ImageNet's manual download lives under it)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.val_fraction = 0.1  # folder datasets without train/ and val/ sub-folders
    config.data.crop_size = 32
    config.data.scale_min = 32  # training scale S: smallest side after isotropic rescale
    config.data.scale_max = 40  # == scale_min for single-scale training; > for jittering
    config.data.eval_scale = 32  # test scale Q for the validation pass during training
    config.data.flip = True
    config.data.color_shift_std = 0.1  # AlexNet PCA lighting; 0 disables
    config.data.mean_rgb = (33.0, 33.0, 33.0)  # the training set's mean RGB (0-255)
    config.data.std_rgb = (1.0, 1.0, 1.0)
    config.data.shuffle_buffer = 2048

    return config
