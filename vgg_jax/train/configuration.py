"""One check of a whole training config before anything heavy runs (data, compilation).

Each problem is a ConfigError naming the field, the value and what would be valid, so that
train.py can end with one `error: ...` line instead of a traceback minutes into a run. All
problems are reported together.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from vgg_jax.core import models
from vgg_jax.data import input_pipeline, synthetic
from vgg_jax.data.decode import DEFAULT_MAX_PIXELS
from vgg_jax.data.lazy_tensorflow import MissingTensorFlow, tf, tfds

SCHEDULES = ("plateau", "step", "cosine")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and how to fix it."""


# Fields renamed since a release: an old name in a config file is refused, naming the new one
# (silently ignoring it would train with the default); config.json files of earlier runs are read
# under the new names (`upgraded`).
RENAMED = {"data.shuffle_buffer": ("data.shuffle_window", "records of tfds shards are shuffled within "
                                   "windows of this many; image folders and other indexed sources "
                                   "permute every epoch whole")}


# Fields added since a release, with the value that reproduces what earlier runs did: filled into
# config.json files that predate them (eval.py reads a run's data config from there).
ADDED = {"data.max_pixels": DEFAULT_MAX_PIXELS, "data.workers": 0}


def renamed_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    for old, (new, meaning) in RENAMED.items():
        section, name = old.split(".")
        if name in config.get(section, {}):
            problems.append(f"{old} was renamed {new} ({meaning}): rename it in the config")
    return problems


def upgraded(run_config: dict) -> dict:
    """A config.json of an earlier run with the renamed fields under their new names and the
    added ones at their defaults."""
    run_config = {section: dict(values) if isinstance(values, dict) else values
                  for section, values in run_config.items()}
    for old, (new, _) in RENAMED.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        if old_name in run_config.get(old_section, {}):
            run_config[new_section][new_name] = run_config[old_section].pop(old_name)
    for field, value in ADDED.items():
        section, name = field.split(".")
        if isinstance(run_config.get(section), dict):
            run_config[section].setdefault(name, value)
    return run_config


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ConfigError listing every invalid field of a training config."""
    device_count = jax.device_count() if device_count is None else device_count
    problems = renamed_problems(config)
    if problems:  # the other checks read the new names
        raise ConfigError("invalid config: " + "; ".join(problems))
    problems = model_problems(config.model) + data_problems(config.data) + train_problems(
        config.train, device_count)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def model_problems(model) -> list[str]:
    problems = []
    if model.arch not in models.ARCHITECTURES:
        problems.append(f"model.arch={model.arch!r} is unknown; choose one of {', '.join(sorted(models.ARCHITECTURES))}")
    problems += positive("model.width", model.width)
    if not isinstance(model.image_size, int) or model.image_size < 32 or model.image_size % 32:
        problems.append(f"model.image_size={model.image_size!r} must be a multiple of 32 (five 2x2 poolings), at least 32")
    if not 0 <= model.dropout_rate < 1:
        problems.append(f"model.dropout_rate={model.dropout_rate!r} must be in [0, 1)")
    problems += one_of("model.dtype", model.dtype, DTYPES)
    problems += one_of("model.init_scheme", model.init_scheme, models.INIT_SCHEMES)
    if not isinstance(model.num_classes, int) or model.num_classes < 0:
        problems.append(f"model.num_classes={model.num_classes!r} must be 0 (the dataset's) or a positive count")
    problems += one_of("model.conv_algorithm", model.conv_algorithm, models.CONV_ALGORITHMS)
    if not isinstance(model.remat, bool):
        problems.append(f"model.remat={model.remat!r} must be True or False")
    return problems


def data_problems(data) -> list[str]:
    problems = source_problems(data.source)
    for field in ("crop_size", "scale_min", "scale_max", "eval_scale"):
        problems += positive(f"data.{field}", data[field], integer=True)
    if not problems:
        try:
            input_pipeline.check_config(data)
        except ValueError as error:
            problems.append(str(error))
    problems += positive("data.max_pixels", data.max_pixels, integer=True)
    if isinstance(data.workers, bool) or not isinstance(data.workers, int) or data.workers < 0:
        problems.append(f"data.workers={data.workers!r} must be a count >= 0 (0: threads in this process)")
    if not 0 < data.val_fraction < 1:
        problems.append(f"data.val_fraction={data.val_fraction!r} must be in (0, 1)")
    if data.color_shift_std < 0:
        problems.append(f"data.color_shift_std={data.color_shift_std!r} must be >= 0 (0 disables it)")
    if len(data.mean_rgb) != 3 or len(data.std_rgb) != 3 or min(data.std_rgb) <= 0:
        problems.append(f"data.mean_rgb={tuple(data.mean_rgb)} and data.std_rgb={tuple(data.std_rgb)} "
                        "must have three values each, std > 0")
    return problems


def source_problems(source: str) -> list[str]:
    if not isinstance(source, str) or not source:
        return [f"data.source={source!r} must be 'synthetic[:CLASSES]', 'digits', 'folder:PATH', "
                "'imagenet:PATH' or a tfds name"]
    try:
        if source == "digits" or synthetic.num_classes(source):
            return []
    except ValueError as error:
        return [str(error)]
    for prefix in (input_pipeline.FOLDER_PREFIX, input_pipeline.IMAGENET_PREFIX):
        if source.startswith(prefix):
            root = os.path.expanduser(source[len(prefix):])
            return [] if os.path.isdir(root) else [f"data.source={source!r}: no folder at {os.path.abspath(root)}"]
    try:  # every other name is a tfds dataset, read with tf.data
        tf.load()
        tfds.load()
    except MissingTensorFlow as error:
        return [f"data.source={source!r}: {error}"]
    try:
        tfds.builder_cls(source.split("/")[0].split(":")[0])
    except Exception:  # tfds raises DatasetNotFoundError and friends
        return [f"data.source={source!r} is neither 'digits', 'folder:PATH', 'imagenet:PATH' nor a "
                "tensorflow-datasets name (nor 'synthetic[:CLASSES]')"]
    return []


def train_problems(train, device_count: int) -> list[str]:
    problems = positive("train.learning_rate", train.learning_rate)
    problems += positive("train.batch_size", train.batch_size, integer=True)
    problems += positive("train.accum_steps", train.accum_steps, integer=True)
    problems += positive("train.eval_batch_size", train.eval_batch_size, integer=True)
    problems += positive("train.log_every", train.log_every, integer=True)
    problems += positive("train.keep_checkpoints", train.keep_checkpoints, integer=True)
    problems += positive("train.eval_every_epochs", train.eval_every_epochs)
    if not problems:
        # Each micro-batch of gradient accumulation is itself sharded over every device.
        for field, divisor, what in (("batch_size", device_count * train.accum_steps, "devices x train.accum_steps"),
                                     ("eval_batch_size", device_count, "devices")):
            if train[field] % divisor:
                problems.append(f"train.{field}={train[field]} must be a multiple of {what} ({divisor})")
    if not 0 <= train.momentum < 1:
        problems.append(f"train.momentum={train.momentum!r} must be in [0, 1)")
    if train.weight_decay < 0 or train.backbone_lr_multiplier < 0:
        problems.append("train.weight_decay and train.backbone_lr_multiplier must be >= 0")
    if train.num_steps < 0 or (train.num_steps == 0 and not train.num_epochs > 0):
        problems.append(f"train.num_steps={train.num_steps} / train.num_epochs={train.num_epochs}: "
                        "give num_epochs > 0, or num_steps > 0")
    problems += one_of("train.schedule", train.schedule, SCHEDULES)
    if not 0 < train.plateau_factor < 1:
        problems.append(f"train.plateau_factor={train.plateau_factor!r} must be in (0, 1)")
    problems += positive("train.plateau_patience", train.plateau_patience, integer=True)
    if not isinstance(train.max_lr_drops, int) or train.max_lr_drops < 0:
        problems.append(f"train.max_lr_drops={train.max_lr_drops!r} must be a count >= 0")
    if train.checkpoint_every_steps < 0:
        problems.append(f"train.checkpoint_every_steps={train.checkpoint_every_steps} must be >= 0 (0: only at evaluations)")
    return problems


def positive(field: str, value, integer: bool = False) -> list[str]:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        return [f"{field}={value!r} must be a positive {'integer' if integer else 'number'}"]
    return []


def one_of(field: str, value, choices) -> list[str]:
    return [] if value in choices else [f"{field}={value!r} is unknown; choose one of {', '.join(choices)}"]
