"""A model from wherever it is: a model directory, a weight file, or a pretrained name.

The one place that resolves the `source` argument of `vgg_jax.lpips.load` and `vgg_jax.nnx.load`.
"""

from __future__ import annotations

import os

import vgg_jax
from vgg_jax import checkpoints, weights


def load(source: str | os.PathLike, arch: str | None = None) -> tuple[vgg_jax.VGG, dict, checkpoints.ModelSpec]:
    """(model, variables, spec) from a model directory or training workdir, a weight file that
    `import_weights` reads (its architecture `arch` named), or a name `vgg_jax.pretrained` knows."""
    path = os.fspath(source)
    if os.path.isdir(path):
        return checkpoints.load_model(path)
    if os.path.isfile(path):
        if arch is None:
            raise ValueError(f"{path} is a weight file: name its architecture, e.g. arch='vgg16'")
        variables, convention = weights.import_weights(path, arch)
        fields = weights.head_fields(variables["params"], vgg_jax.create_model(arch))
        spec = checkpoints.ModelSpec(arch, fields, None, convention)
        return spec.build(), variables, spec
    pretrained = getattr(vgg_jax, "pretrained", None)  # looked up here: it may come after this module
    if pretrained is None or "/" in path or os.sep in path or os.path.splitext(path)[1]:
        raise ValueError(f"no model directory or weight file at {path}")
    return pretrained(path)
