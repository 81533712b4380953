"""Pretrained VGG weights: downloaded by name, or imported from torchvision / timm / Keras files.

  vgg_jax.pretrained("vgg16")            -> (model, variables, spec), fetched once, then cached
  vgg_jax.import_weights(path, "vgg16")  -> (variables, normalization) from a file on disk

One concern per module: `torch_files` (.pth without torch, restricted unpickler), `keras_files`
(.h5), `conversion` (file keys -> our variables, model directories), `registry` (names, URLs,
digests), `download` (fetching, verifying, the cache), `cli` (python -m vgg_jax.weights).
"""

from vgg_jax.weights.conversion import head_fields, import_to_checkpoint, import_weights
from vgg_jax.weights.download import cache_home, ensure_model, pretrained
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.registry import WEIGHT_SETS

__all__ = ["WEIGHT_SETS", "WeightsError", "cache_home", "ensure_model", "head_fields",
           "import_to_checkpoint", "import_weights", "pretrained"]
