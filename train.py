"""Train a VGG: `python train.py [--config configs/X.py[:arg]] [--workdir DIR] [--config.a.b=v]`."""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, config.json and results.json "
                    "(default: runs/<config name>)")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process job; "
                    "otherwise jax.distributed picks up TPU/SLURM environments by itself")
flags.DEFINE_integer("num_processes", None, "processes in a multi-process job")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process job")


def ignore_closed_event_loops(unraisable):
    """After a failed asynchronous checkpoint write, tensorstore calls back into orbax's already
    closed event loops, once per array; the failure itself is reported as one error line."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def main(argv):
    del argv
    from vgg_jax import devices, sharding, training

    sharding.initialize_processes(flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("absl").addFilter(training.without_orbax_tracebacks)
    sys.unraisablehook = ignore_closed_event_loops
    devices.log_devices()
    workdir = flags.FLAGS.workdir or os.path.join("runs", flags.FLAGS.config.name)
    try:
        results = training.train_and_evaluate(flags.FLAGS.config, workdir)
    except training.USER_ERRORS as error:  # what the user can fix gets one line; bugs keep their traceback
        sys.exit(f"error: {error}")
    logging.info("done: %s", results)


if __name__ == "__main__":
    app.run(main)
