"""Every model source: model directories and training runs, pretrained weights downloaded by
name, and weight files imported from torchvision / timm / Keras.

  vgg_jax.load(source)                   -> (model, variables, spec) from any of them (`loading`)
  vgg_jax.pretrained("vgg16")            -> the same, fetched once, then cached
  vgg_jax.import_weights(path, "vgg16")  -> (variables, normalization) from a file on disk

One concern per module: `loading` (the one resolver of a `source`), `model_directory` (the
ModelSpec; directories written once and read as untrusted input, fields checked by
`spec_fields`), `torch_files` (.pth without torch, restricted unpickler, `pickle_check`),
`keras_files` (.h5), `conversion` (file keys -> our variables), `registry` (names, URLs, digests),
`download` (fetching, verifying, the cache), `cli` (python -m vgg_jax.weights).
Imports the core, and the data wing only for `ModelSpec.preprocess`.
"""

from vgg_jax.weights.conversion import head_fields, import_to_checkpoint, import_weights
from vgg_jax.weights.download import cache_home, ensure_model, pretrained
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.registry import WEIGHT_SETS

__all__ = ["WEIGHT_SETS", "WeightsError", "cache_home", "ensure_model", "head_fields",
           "import_to_checkpoint", "import_weights", "pretrained"]
