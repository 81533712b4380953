"""What a training run keeps in its workdir besides the arrays, and what may change on resume.

  config.json        the config of the newest saved step (a resume may change the learning rate only)
  results.json       the final metrics, best step, learning-rate drops and why the run ended
  train.lock         held by the run training there (train.lock.<i>: process i of a multi-process job)
  checkpoint 'meta'  `Progress`: the host-side record saved with every step
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
from typing import Any

import jax
import ml_collections

from vgg_jax.core import checkpoints
from vgg_jax.train import configuration, steps
from vgg_jax.weights import model_directory

log = logging.getLogger("vgg_jax.train")
RECENT_LINES = 8  # progress lines a checkpoint remembers (the divergence check's recent level)


class RunFileError(ValueError):
    """config.json or results.json of a workdir cannot be read; the message names the file."""


class WorkdirInUse(RuntimeError):
    """Another training run holds the workdir's lock; the message names its host and pid."""


@dataclasses.dataclass
class Progress:
    """The host-side record a checkpoint carries besides the state (its 'meta' item)."""
    spec: model_directory.ModelSpec
    best_top1: float = -1.0  # plateau tracking: best validation top-1 so far
    evals_without_gain: int = 0
    lr_drops: list = dataclasses.field(default_factory=list)  # [{"step", "learning_rate"}]
    last_eval: dict = dataclasses.field(default_factory=dict)  # the newest validation metrics
    stopped: str | None = None  # why training ended before num_steps (paper's schedule)
    recent_train: list = dataclasses.field(default_factory=list)  # the last progress lines' mean train metrics

    def meta(self) -> dict:
        return {**dataclasses.asdict(self), "spec": self.spec.to_dict()}

    def eval_metrics(self) -> dict:
        """The newest validation metrics, as orbax records them to rank checkpoints."""
        return {k: v for k, v in self.last_eval.items() if k.startswith("val_")}

    def with_train_line(self, means: dict) -> "Progress":
        return dataclasses.replace(self, recent_train=[*self.recent_train, means][-RECENT_LINES:])

    @classmethod
    def from_meta(cls, meta: dict) -> "Progress":
        fields = {k: v for k, v in meta.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**fields, "spec": model_directory.ModelSpec.from_dict(meta["spec"])})


# Config fields whose change on resume would change which examples the run sees, or its schedule.
REFUSED_CHANGES = ("train.batch_size", "train.seed", "train.accum_steps", "train.schedule", "train.step_epochs",
                   "data.source", "data.data_dir", "data.train_split")


def check_config_changes(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a resume whose config changes the example order or the schedule's kind; the
    learning rate may change (applied by apply_config_changes, and logged)."""
    previous = read_run_config(workdir)
    changed = [(field, old, new) for field, old, new in config_differences(previous, config)
               if field in REFUSED_CHANGES]
    if changed:
        listing = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in changed)
        raise checkpoints.CheckpointError(
            f"{workdir} was trained with another config ({listing}); resuming would change the "
            "examples or schedule it sees. Use the run's values or another --workdir")


def apply_config_changes(workdir: str, config: ml_collections.ConfigDict, state: steps.TrainState) -> steps.TrainState:
    """A changed train.learning_rate is applied from the resume step on (plateau schedule:
    it replaces the current, possibly divided, rate)."""
    previous = read_run_config(workdir)
    for field, old, new in config_differences(previous, config):
        if field == "train.learning_rate":
            log.warning("train.learning_rate changed from %g to %g since the last run: using %g from "
                        "step %d on", old, new, new, int(state.step))
            state = steps.with_learning_rate(state, new) if config.train.schedule == "plateau" else state
    return state


def config_differences(previous: dict | None, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    if previous is None:
        return []
    current = json.loads(config.to_json_best_effort())
    fields = [*REFUSED_CHANGES, "train.learning_rate"]
    differences = []
    for field in fields:
        section, name = field.split(".")
        old, new = previous.get(section, {}).get(name), current[section][name]
        if old is not None and old != new:
            differences.append((field, old, new))
    return differences


def read_run_config(workdir: str) -> dict | None:
    """The config.json a training run left in `workdir` (renamed fields under their new names);
    None where there is none (a model directory, a weight file); RunFileError (a ValueError)
    naming the file if it cannot be read."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return None
    return configuration.upgraded(read_json(path, "it records the run's settings, which a resume checks: "
                                                  "restore it, or delete it to resume without that check"))


def read_results(workdir: str) -> dict:
    """results.json of a finished run; RunFileError if it is missing or unreadable."""
    return read_json(os.path.join(workdir, "results.json"), "")


def read_json(path: str, advice: str) -> dict:
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunFileError(f"cannot read {path}: {error}" + (f"; {advice}" if advice else "")) from error
    if not isinstance(values, dict):
        raise RunFileError(f"cannot read {path}: it holds a JSON {type(values).__name__}, not an object")
    return values


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        write_atomically(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def write_results(workdir: str, results: dict) -> None:
    if jax.process_index() == 0:
        write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))


def write_atomically(path: str, text: str) -> None:
    """Readers (and a run killed while writing) see the old file or the new one, never a part."""
    partial = f"{path}.partial"
    try:
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


HOLDER_CHARS = 200  # what a second run reads of train.lock: a host and a pid, not whatever a planted file holds


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """One training run per workdir: an advisory lock (fcntl.flock) on workdir/train.lock for
    as long as the run lasts; each process of a multi-process job locks its own file. The kernel
    releases it however the holder ends (kill -9 included), so a stale lock never blocks. The
    holder writes its host and pid into the file for a second run's message. filelock would
    truncate the file on every attempt, erasing them."""
    os.makedirs(workdir, exist_ok=True)
    index = jax.process_index()
    path = os.path.join(workdir, "train.lock" if index == 0 else f"train.lock.{index}")
    with open(path, "a+", errors="replace") as f:  # a planted file's bytes read as text, not an error
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = "".join(c if c.isprintable() else "?" for c in f.read(HOLDER_CHARS).strip())
            holder = holder or "a process that has not written its name yet"
            raise WorkdirInUse(f"{workdir} is in use by another training run ({holder}, lock {path}); "
                               "wait for it to end or give another --workdir") from None
        f.truncate(0)
        f.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        yield


def check_same_model(meta: dict, spec: model_directory.ModelSpec, workdir: str) -> None:
    found = model_directory.ModelSpec.from_dict(meta["spec"])
    ours = (spec.arch, spec.model_kwargs["num_classes"], spec.model_kwargs["width"], spec.model_kwargs["image_size"])
    theirs = (found.arch, found.model_kwargs["num_classes"], found.model_kwargs["width"], found.model_kwargs["image_size"])
    if ours != theirs:
        raise checkpoints.CheckpointError(
            f"{workdir} holds a checkpoint of a different model (arch, classes, width, image_size) "
            f"= {theirs}, but the config asks for {ours}; use another --workdir")
