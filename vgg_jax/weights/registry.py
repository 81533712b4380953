"""Pretrained weight sets by name: the publisher's URL and digest, the architecture, the input.

torchvision: the URLs of torchvision 0.29's `torchvision/models/vgg.py` (VGG11_Weights ..
VGG19_BN_Weights, IMAGENET1K_V1). Each file name ends in `-<first hex digits of the file's
SHA-256>.pth`; torch.hub's `check_hash` compares that prefix, and so do we.

Keras: the "with top" (classifier included) files of keras 3.15's
`keras/src/applications/vgg16.py` and `vgg19.py` (WEIGHTS_PATH). Their `file_hash` is 32 hex
digits, which Keras' `get_file(hash_algorithm="auto")` checks as an MD5; so do we.
"""

from __future__ import annotations

import dataclasses
import re

from vgg_jax.core import normalization
from vgg_jax.core.normalization import Normalization
from vgg_jax.weights.errors import WeightsError


@dataclasses.dataclass(frozen=True)
class WeightSet:
    name: str
    arch: str
    url: str
    algorithm: str  # hashlib name
    digest: str  # the file's hex digest, or its leading digits (torchvision)
    normalization: Normalization  # what the importer derives from the format; checked on import

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


TORCHVISION_HOST = "https://download.pytorch.org/models/"
KERAS_HOST = "https://storage.googleapis.com/tensorflow/keras-applications/"


def torchvision(arch: str, file_name: str) -> WeightSet:
    """A torchvision set; the SHA-256 prefix is read from the file name as torch.hub does."""
    prefix = re.search(r"-([a-f0-9]+)\.", file_name).group(1)
    return WeightSet(arch, arch, TORCHVISION_HOST + file_name, "sha256", prefix, normalization.TORCHVISION)


def keras(arch: str, md5: str) -> WeightSet:
    url = f"{KERAS_HOST}{arch}/{arch}_weights_tf_dim_ordering_tf_kernels.h5"
    return WeightSet(f"{arch}_keras", arch, url, "md5", md5, normalization.CAFFE_BGR)


WEIGHT_SETS = {weights.name: weights for weights in (
    torchvision("vgg11", "vgg11-8a719046.pth"),
    torchvision("vgg11_bn", "vgg11_bn-6002323d.pth"),
    torchvision("vgg13", "vgg13-19584684.pth"),
    torchvision("vgg13_bn", "vgg13_bn-abd245e5.pth"),
    torchvision("vgg16", "vgg16-397923af.pth"),
    torchvision("vgg16_bn", "vgg16_bn-6c64b313.pth"),
    torchvision("vgg19", "vgg19-dcbb9e9d.pth"),
    torchvision("vgg19_bn", "vgg19_bn-c79401a0.pth"),
    keras("vgg16", "64373286793e3c8b2b4e3219cbf3544b"),
    keras("vgg19", "cbe5617147190e668d6c5d5026f83318"),
)}


def lookup(name: str) -> WeightSet:
    if name not in WEIGHT_SETS:
        raise WeightsError(f"no pretrained weights named {name!r}; choose one of {', '.join(WEIGHT_SETS)}")
    return WEIGHT_SETS[name]
