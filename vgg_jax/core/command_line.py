"""What every command line shares. One style, absl flags (`--name=value` or `--name value`,
`--help`), because train.py and eval.py need ml_collections' `--config.a.b=v` overrides, which
are absl flags; the module CLIs (predict, weights, stylize, export) parse theirs the same way.
"""

from __future__ import annotations

import logging
import sys

from absl import flags


def define_process_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--coordinator, --num_processes, --process_id: a multi-process job started by hand."""
    flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process job; otherwise "
                        "jax.distributed picks up TPU/SLURM environments by itself", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "processes in a multi-process job", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "this process's index in a multi-process job", flag_values=flag_values)


def initialize_processes(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    from vgg_jax.core import sharding  # JAX: imported once the command line is known to be good

    sharding.initialize_processes(flag_values.coordinator, flag_values.num_processes, flag_values.process_id)


def parse(flag_values: flags.FlagValues, argv: list[str] | None, usage: str) -> list[str]:
    """The positional arguments of `argv` (default: sys.argv[1:]) once `flag_values` has read its
    flags. --help prints `usage` (with its examples) and the flags, and exits; a bad flag exits
    with one line (status 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(f"{usage.strip()}\n\nflags:\n{flag_values.get_help(include_special_flags=False)}")
        sys.exit(0)
    flag_values.unparse_flags()  # a fresh parse when called again in one process (tests)
    try:
        return flag_values(["", *argv])[1:]
    except flags.Error as error:
        print(f"error: {error} (see --help)", file=sys.stderr)
        sys.exit(2)


def configure_logging() -> None:
    """Timestamped INFO lines for train.py and eval.py, without other libraries' chatter: orbax
    logs every save through absl at INFO, and jax's backend probe logs a failed TPU/GPU probe
    ("Unable to initialize backend 'tpu'") on every CPU-only start; the one line naming the
    backend that is used comes from `devices.log_devices`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
