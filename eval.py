"""Evaluate as the paper does (Sec. 3.2, 4): single crop, dense, multi-crop and both, at test scales Q.

  python eval.py --workdir DIR                                  # a training run: its config.json, best step
  python eval.py --checkpoint A --checkpoint B                  # an ensemble of A and B
  python eval.py --checkpoint models/vgg16 --dataset imagenet2012 --data_dir ~/tensorflow_datasets
  python eval.py --checkpoint pretrained:vgg16 --dataset imagenet2012   # fetched on first use (or just vgg16)
  python eval.py --checkpoint vgg16-397923af.pth --arch vgg16 --dataset imagenet2012   # a weight file
  python eval.py ... --scales 256,384,512 --out DIR

Prints the top-1/top-5 error table and writes it to eval_results.json and eval_results.csv in
--out (default: the workdir, else the current directory). The data come from --config when it
is given, else from the first checkpoint's training config.json, else (imported or pretrained
weights) from --dataset. Default test scales: from the training scales (S-32, S, S+32 or Smin,
(Smin+Smax)/2, Smax); without them (imported weights) Q = 256, 384, 512 for a 224 crop.
--dataset, --data_dir and --split override the config's data source, tfds data_dir and eval_split.
Several processes (--coordinator, or a TPU pod / SLURM job) each evaluate their shard of the split.
"""

import os
import sys

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from vgg_jax.core import command_line

config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file (default: "
                                "the first checkpoint's config.json, else the digits config's fields)")
flags.DEFINE_string("workdir", None, "a training workdir to evaluate (and write the results to)")
flags.DEFINE_multi_string("checkpoint", [], "a workdir, model directory, weight file (with --arch), "
                          "pretrained:NAME or NAME; repeat for an ensemble")
flags.DEFINE_string("arch", None, "the architecture of --checkpoint weight files (.pth, .safetensors, .h5)")
flags.DEFINE_string("dataset", None, "data source: 'imagenet:PATH', 'folder:PATH', 'digits', 'synthetic' or a tfds name ('imagenet2012')")
flags.DEFINE_string("data_dir", None, "tfds data_dir")
flags.DEFINE_string("split", None, "the split to evaluate (default: the config's eval_split; "
                    "'validation' with --dataset and no training config)")
flags.DEFINE_list("scales", [], "test scales Q, e.g. 256,384,512 (default: from the training scales, "
                  "or 256,384,512 for imported weights)")
flags.DEFINE_string("out", None, "directory for eval_results.json and eval_results.csv")
flags.DEFINE_integer("batch_size", 8, "images per batch (50 crops each for multi-crop); a multiple "
                     "of the device count")
flags.DEFINE_integer("num_images", None, "evaluate only the first N images of the split")
command_line.define_process_flags()
flags.adopt_module_key_flags(command_line)  # listed by --help with the flags below


def training_config(path: str) -> ConfigDict | None:
    """The config.json a training run left in its workdir, if any (weight files and pretrained
    names have none)."""
    from vgg_jax.train import run_files

    if not os.path.isdir(path):
        return None
    try:
        config = run_files.read_run_config(path)
    except ValueError as error:
        raise ValueError(f"{error}; pass --config (or --dataset) instead") from error
    return None if config is None else ConfigDict(config)


def data_config(FLAGS, paths: list[str]) -> ConfigDict:
    """config.data from --config, the first run's config.json, or --dataset (imported weights)."""
    config = FLAGS.config if FLAGS["config"].present else training_config(paths[0])
    imported = config is None
    if imported:  # an imported model: no training scales, the data from the command line
        if not FLAGS.dataset:
            raise ValueError(f"{paths[0]} has no training config.json: give the dataset with "
                             "--dataset=NAME (e.g. imagenet2012, 'folder:PATH') or a --config")
        config = FLAGS.config
        config.data.update(scale_min=None, scale_max=None, eval_split="validation",
                           flip=True)  # ImageNet nets train with flips: the paper's test-time flips apply
    overrides = {"source": FLAGS.dataset, "data_dir": FLAGS.data_dir, "eval_split": FLAGS.split}
    config.data.update({key: value for key, value in overrides.items() if value is not None})
    root = os.path.expanduser(config.data.source.removeprefix("folder:"))
    if imported and config.data.source.startswith("folder:") and not os.path.isdir(os.path.join(root, config.data.eval_split)):
        # class folders directly under PATH, none held out for training: evaluate them all
        config.data.update(train_split=config.data.eval_split, val_fraction=0.0)
    return config


def parse_scales(values: list[str]) -> list[int]:
    try:
        return [int(value) for value in values]
    except ValueError:
        raise ValueError(f"--scales={','.join(values)}: give whole numbers of pixels, e.g. --scales=256,384,512") from None


def check_arguments(FLAGS) -> tuple[list[str], list[int]]:
    """(model sources, scales), or ValueError naming the bad argument (before the heavy imports)."""
    paths = ([FLAGS.workdir] if FLAGS.workdir else []) + FLAGS.checkpoint
    if not paths:
        raise ValueError("nothing to evaluate: give --workdir=DIR or --checkpoint=SOURCE")
    return paths, parse_scales(FLAGS.scales)


def main(argv):
    del argv
    command_line.configure_logging()
    FLAGS = flags.FLAGS
    try:
        paths, scales = check_arguments(FLAGS)
    except ValueError as error:
        sys.exit(f"error: {error}")
    import jax  # seconds to import

    from vgg_jax.core import checkpoints, devices
    from vgg_jax.evaluate import ensemble
    from vgg_jax.weights import loading

    command_line.initialize_processes()
    devices.log_devices()
    try:
        for path in paths:  # a wrong source is named before the data are looked for
            loading.classify(path)
        config = data_config(FLAGS, paths)
        results = ensemble.run(config, paths, scales, arch=FLAGS.arch, batch_size=FLAGS.batch_size,
                                 num_images=FLAGS.num_images)
    except (checkpoints.CheckpointError, ValueError) as error:  # WeightsError is a ValueError
        sys.exit(f"error: {error}")
    if jax.process_index() == 0:  # every process evaluated its shard; the table is the whole split's
        print(ensemble.format_table(results))
        for path in ensemble.write_results(results, FLAGS.out or FLAGS.workdir or "."):
            print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
