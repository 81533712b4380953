"""Train a VGG.

  python train.py                                           # the offline quickstart -> runs/default
  python train.py --config configs/vgg16.py:256             # the paper's net D at S = 256 -> runs/vgg16_s256
  python train.py --workdir runs/quick --config.train.num_epochs=5 --config.model.dtype=bfloat16

Any config field can be overridden with --config.<section>.<field>=value; a run resumes from its
workdir. Several hosts: --coordinator=host:port --num_processes=N --process_id=i.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from vgg_jax.core import command_line

config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, config.json and results.json "
                    "(default: runs/<config name>)")
command_line.define_process_flags()
flags.adopt_module_key_flags(command_line)  # listed by --help with the flags below


def ignore_closed_event_loops(unraisable):
    """After a failed asynchronous checkpoint write, tensorstore calls back into orbax's already
    closed event loops, once per array; the failure itself is reported as one error line."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def main(argv):
    del argv
    from vgg_jax.core import checkpoints, devices
    from vgg_jax.train import faults, loop

    command_line.initialize_processes()
    command_line.configure_logging()
    logging.getLogger("absl").addFilter(checkpoints.without_orbax_tracebacks)
    sys.unraisablehook = ignore_closed_event_loops
    devices.log_devices()
    workdir = flags.FLAGS.workdir or os.path.join("runs", flags.FLAGS.config.name)
    try:
        results = loop.train_and_evaluate(flags.FLAGS.config, workdir)
    except loop.USER_ERRORS as error:  # what the user can fix gets one line; bugs keep their traceback
        sys.exit(f"error: {error}")
    except faults.LostProcess as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        # Now, before jax.distributed's shutdown at exit waits for the lost process (up to its
        # shutdown timeout) and its coordination client then aborts with a C++ stack trace.
        os._exit(1)
    logging.info("done: %s", results)


if __name__ == "__main__":
    app.run(main)
