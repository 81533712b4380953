"""Evaluate as the paper does (Sec. 3.2, 4): single crop, dense, multi-crop and both, at test scales Q.

  python eval.py --config configs/X.py --workdir DIR           # the run's best (else latest) step
  python eval.py --config configs/X.py --checkpoint A --checkpoint B   # an ensemble of A and B
  python eval.py ... --scales 256,384,512 --out DIR

Prints the top-1/top-5 error table and writes it to eval_results.json and eval_results.csv in
--out (default: the workdir, else the current directory). The config gives the dataset and its
eval_split, and the training scales the default test scales come from.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
flags.DEFINE_string("workdir", None, "a training workdir to evaluate (and write the results to)")
flags.DEFINE_multi_string("checkpoint", [], "a workdir, model directory or pretrained:NAME; repeat for an ensemble")
flags.DEFINE_list("scales", [], "test scales Q, e.g. 256,384,512 (default: from config.data.scale_min "
                  "and scale_max: S-32, S, S+32 or Smin, (Smin+Smax)/2, Smax)")
flags.DEFINE_string("out", None, "directory for eval_results.json and eval_results.csv")
flags.DEFINE_integer("batch_size", 8, "images per batch (50 crops each for multi-crop); a multiple "
                     "of the device count")
flags.DEFINE_integer("num_images", None, "evaluate only the first N images of the split")


def main(argv):
    del argv
    from vgg_jax import checkpoints, evaluation, weights

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)
    FLAGS = flags.FLAGS
    paths = ([FLAGS.workdir] if FLAGS.workdir else []) + FLAGS.checkpoint
    if not paths:
        raise app.UsageError("give --workdir or at least one --checkpoint")
    try:
        scales = [int(scale) for scale in FLAGS.scales]
        paths = [weights.resolve(path) for path in paths]  # pretrained:NAME -> its cached model directory
        results = evaluation.run(FLAGS.config, paths, scales, batch_size=FLAGS.batch_size,
                                 num_images=FLAGS.num_images)
    except (checkpoints.CheckpointError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(evaluation.format_table(results))
    for path in evaluation.write_results(results, FLAGS.out or FLAGS.workdir or "."):
        print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
