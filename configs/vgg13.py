"""vgg13 on ImageNet with the paper's recipe; the argument is the training scale: 256, 384 or 256-512."""

from configs.imagenet import get_imagenet_config


def get_config(scale="256"):
    return get_imagenet_config("vgg13", scale)
