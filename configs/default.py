"""Offline quickstart: VGG config A with batch norm (width x0.25) on scikit-learn's digits.

`python train.py` runs this. Needs no network: the digits ship with scikit-learn.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.name = "default"  # the run's default workdir is runs/<name>

    config.model = ml_collections.ConfigDict()
    config.model.arch = "vgg11_bn"  # BN: 98.9-99.7% in 10 epochs (seeds 0-2); plain vgg11 ~96% in 20
    config.model.width = 0.25
    config.model.image_size = 32  # the crop the fc head is sized for (a 1x1 head window)
    config.model.dropout_rate = 0.0  # 1437 images, 10 epochs: dropout only slows this
    config.model.init_scheme = "glorot"
    config.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16'
    config.model.num_classes = 0  # 0: the dataset's
    config.model.conv_algorithm = "direct"  # 'winograd': F(4x4, 3x3) where it pays on CPU (float32)
    config.model.remat = False  # recompute conv blocks in the backward pass: vgg16 ~38% fewer temporaries, 6-21% slower

    config.data = ml_collections.ConfigDict()
    config.data.source = "digits"  # 'digits', 'synthetic[:CLASSES]', 'folder:PATH', 'imagenet:PATH' or a tfds name ('tf_flowers')
    config.data.data_dir = None  # tfds data_dir (ImageNet's manual download lives under it)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.val_fraction = 0.1  # folder datasets without train/ and val/ sub-folders
    config.data.crop_size = 32
    config.data.scale_min = 32  # training scale S: smallest side after isotropic rescale
    config.data.scale_max = 36  # == scale_min for single-scale training; > for jittering
    config.data.eval_scale = 32  # test scale Q for the validation pass during training
    config.data.flip = False  # a mirrored digit is another glyph (a mirrored 7 is no 7): flips cost ~1% here
    config.data.color_shift_std = 0.1  # AlexNet PCA lighting; 0 disables
    config.data.mean_rgb = (77.9, 77.9, 77.9)  # the digits training split's mean RGB (0-255)
    config.data.std_rgb = (95.9, 95.9, 95.9)  # and its std: unit-scale inputs train faster here
    config.data.max_pixels = 40_000_000  # larger images (from their header) are skipped and counted like damaged ones
    config.data.workers = 0  # Grain worker processes; 0: threads in this process (measured fastest on 2 cores)
    config.data.shuffle_window = 2048  # tfds sources: records shuffled within windows of this many (others: whole epochs)

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = 32  # global, over all devices and processes
    config.train.accum_steps = 1  # micro-batches per step, for batches that do not fit
    config.train.num_epochs = 10
    config.train.num_steps = 0  # > 0 overrides num_epochs
    config.train.learning_rate = 0.05
    config.train.momentum = 0.9
    config.train.weight_decay = 5e-4
    config.train.decay_biases_and_bn = False
    config.train.schedule = "cosine"  # 'plateau' (the paper's), 'step' or 'cosine'
    config.train.plateau_patience = 2  # evaluations without gain before LR / 10
    config.train.plateau_factor = 0.1
    config.train.plateau_min_delta = 1e-3
    config.train.max_lr_drops = 3  # the paper: three drops, then training stops at the next plateau
    config.train.step_epochs = ()  # LR / 10 at these epochs, for schedule='step'
    config.train.backbone_lr_multiplier = 1.0  # transfer: 0 freezes all but fc8
    config.train.init_from = ""  # copy layers from: a workdir, model directory, pretrained:NAME or a weight file of model.arch
    config.train.init_layers = "net_a"  # 'net_a' (paper), 'all', 'backbone', or 'conv1_1,fc6,...'
    config.train.eval_every_epochs = 2.0
    config.train.eval_batch_size = 256
    config.train.log_every = 50
    config.train.checkpoint_every_steps = 0  # besides every evaluation
    config.train.keep_checkpoints = 3

    return config
