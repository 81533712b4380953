"""A model from wherever it is: the one resolver of every `source` argument.

  runs/default                a training workdir: its best (else latest) step
  models/vgg16                a model directory (`vgg_jax.weights import`, export, a run's checkpoints/)
  vgg16-397923af.pth          a weight file that `import_weights` reads, with its architecture (arch=)
  pretrained:vgg16, vgg16     a pretrained set (`python -m vgg_jax.weights list`), fetched into the
                              cache on first use; an existing directory of that name comes first

`vgg_jax.load`, eval.py, predict, train.init_from, `lpips.load` and `nnx.load` all come here;
`spec.preprocess(image, scale)` then gives the model's input.
"""

from __future__ import annotations

import os

from vgg_jax.core import checkpoints, models
from vgg_jax.weights import conversion, download, model_directory, registry

PRETRAINED_PREFIX = "pretrained:"


def classify(source: str | os.PathLike) -> tuple[str, str]:
    """('directory', path), ('file', path) or ('pretrained', NAME); a CheckpointError naming a
    source that is none of them (checked before any reading)."""
    path = os.fspath(source)
    if path.startswith(PRETRAINED_PREFIX):
        return "pretrained", path[len(PRETRAINED_PREFIX):]  # an unknown NAME: WeightsError on loading
    if os.path.isdir(path):
        return "directory", path
    if os.path.isfile(path):
        return "file", path
    if os.sep in path or "/" in path or os.path.splitext(path)[1]:
        raise checkpoints.CheckpointError(f"no checkpoint directory at {path}, nor a weight file: give a training "
                                          "workdir, a model directory, a weight file or pretrained:NAME")
    if path not in registry.WEIGHT_SETS:
        raise checkpoints.CheckpointError(f"{path!r} is no checkpoint directory, weight file or pretrained set; "
                                          f"the pretrained sets are {', '.join(registry.WEIGHT_SETS)}")
    return "pretrained", path


def load_variables(source: str | os.PathLike, arch: str | None = None) -> tuple[dict, model_directory.ModelSpec, str]:
    """(variables, spec, origin) of `source` (see the module docstring); origin names what was
    read, e.g. 'runs/default (step 352)'. A source that is none of those raises CheckpointError,
    an unknown `pretrained:NAME` WeightsError (both ValueErrors), naming it."""
    kind, path = classify(source)
    if kind == "pretrained":
        variables, spec, step = download.load_pretrained(path)
        return variables, spec, f"{PRETRAINED_PREFIX}{path} (step {step})"
    if kind == "directory":
        variables, spec, step = model_directory.load_variables(path)
        return variables, spec, f"{path} (step {step})"
    if arch is None:
        raise ValueError(f"{path} is a weight file: name its architecture (arch='vgg16', --arch=vgg16)")
    variables, convention = conversion.import_weights(path, arch)
    fields = conversion.head_fields(variables["params"], models.create_model(arch))
    return variables, model_directory.ModelSpec(arch, fields, None, convention), f"{path} ({arch})"


def fitted_model(spec: model_directory.ModelSpec, variables: dict, origin: str, **overrides) -> models.VGG:
    """The model `spec` describes, checked to fit `variables` (a clear error naming `origin` if not)."""
    model = spec.build(**overrides)
    checkpoints.check_fits(model, variables, source=origin)
    return model


def load(source: str | os.PathLike, arch: str | None = None,
         **overrides) -> tuple[models.VGG, dict, model_directory.ModelSpec]:
    """(model, variables, spec) ready for `model.apply(variables, images)`, from any `source`
    (a workdir, a model directory, a weight file with its `arch`, `pretrained:NAME` or NAME);
    `overrides` are VGG fields (e.g. dtype). `spec.preprocess(image, scale)` feeds it."""
    variables, spec, origin = load_variables(source, arch)
    return fitted_model(spec, variables, origin, **overrides), variables, spec
