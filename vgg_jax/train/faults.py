"""What a training run survives, and how it ends when it cannot go on: stop signals (every
process stops at the same step), a diverging loss (stopped before anything of it is saved), and
a lost process of a multi-process job (one error line naming it and the step to resume from).
"""

from __future__ import annotations

import contextlib
import re
import signal

import jax
import numpy as np

from vgg_jax.core import checkpoints


class Diverged(RuntimeError):
    """The training loss became NaN or Inf, or far above its recent level (`divergence`)."""


class LostProcess(RuntimeError):
    """A collective with the other processes of a multi-process job failed: one of them is gone."""


# The divergence rule: a step's loss above DIVERGENCE_FACTOR x the recent level, the median of
# the last progress lines' mean losses (run_files.RECENT_LINES, kept in the checkpoints), and
# never below ln(classes), the loss of a uniform guess, where a fresh net starts.
DIVERGENCE_FACTOR = 10.0


# How a failed collective reads (CPU: gloo; any backend: jax.distributed's barriers, which orbax's
# multi-process saves use). NCCL's and ICI's wordings are not listed: untested here; a GPU or TPU
# job that loses a process ends by jax's heartbeat timeout instead (sharding.HEARTBEAT_TIMEOUT).
COLLECTIVE_FAILURE = re.compile(r"Gloo \w+ failed|Barrier (timed out|failed)|heartbeat timeout|stopped sending heartbeats")


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def agreed_stop(local_signal: str | None) -> str | None:
    """The stop decision every process takes together: a signal to any one process stops all
    of them at the same step (else the others would wait forever in the next all-reduce)."""
    if jax.process_count() == 1:
        return local_signal
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(local_signal is not None))
    if not np.any(flags):
        return None
    return local_signal or f"a signal to process {int(np.argmax(flags))}"


@contextlib.contextmanager
def closed_unless_lost(manager):
    """Closes the checkpoint manager however the run ends, except when a process of the job is
    lost: a failed collective becomes LostProcess, and the manager stays open, since closing it
    would wait for a save whose barriers wait for the lost process (until the heartbeat timeout)."""
    try:
        yield
    except Exception as error:
        lost = lost_process(error, manager.directory)
        if lost is None:
            checkpoints.close_quietly(manager)
            raise
        raise lost from error
    checkpoints.close_quietly(manager)


def lost_process(error: Exception, root) -> LostProcess | None:
    """LostProcess naming the process this one lost contact with and the newest committed step,
    if `error` (or its cause) is a failed collective of a multi-process job; else None."""
    if jax.process_count() == 1:
        return None
    chain, seen = [], error
    while seen is not None:
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    failure = next((text for text in chain if COLLECTIVE_FAILURE.search(text)), None)
    if failure is None:
        return None
    others = [i for i in range(jax.process_count()) if i != jax.process_index()]
    lost = (f"process {others[0]}" + (" (the coordinator)" if others[0] == 0 else "") if len(others) == 1
            else f"one of processes {others}")
    step = checkpoints.newest_committed_step(root)
    resume = (f"the newest committed step in {root} is {step}: restart every process to resume from it"
              if step is not None else f"no step was committed in {root}")
    return LostProcess(f"lost {lost}: a collective with it failed ({failure.strip().splitlines()[0][:300]}); {resume}")


def divergence(losses: list[float], recent: list[float], num_classes: int) -> tuple[int, str] | None:
    """(index, reason) of the first of `losses` that is NaN/Inf or above DIVERGENCE_FACTOR x the
    recent level (the median of the `recent` progress lines' losses; before the first line, the
    first loss: a new head on pretrained features may start far above a uniform guess; at least
    ln(num_classes)); else None."""
    start = losses[0] if losses and np.isfinite(losses[0]) else 0.0
    level = max(float(np.median(recent)) if recent else start, float(np.log(num_classes)))
    for index, loss in enumerate(losses):
        if not np.isfinite(loss):
            return index, "not finite"
        if loss > DIVERGENCE_FACTOR * level:
            return index, f"over {DIVERGENCE_FACTOR:g}x its recent level {level:.4g}"
    return None


def newest_good_checkpoint(manager) -> str:
    """Which checkpoint a resume would start from: every saved step passed the divergence check,
    so the newest committed one (a save in flight is let finish first)."""
    checkpoints.finish_saving(manager)
    step = checkpoints.newest_committed_step(manager.directory)
    if step is None:
        return f"no checkpoint was saved before it (none in {manager.directory})"
    return f"the newest good checkpoint is step {step} in {manager.directory}; resume from it with a lower learning rate"
