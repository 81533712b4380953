"""TensorBoard scalars without TensorFlow: the tensorboard package's own event-file writer.

As torch.utils.tensorboard does, events are written with `EventFileWriter` (a background thread
appends length-prefixed, CRC-checked records to workdir/events.out.tfevents.*). Each scalar is
stored as `tf.summary.scalar` stores it: a float32 scalar tensor under its tag, marked for the
scalars plugin, so TensorBoard shows the same tags and values as before.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> event_pb2.Event:
    values = [summary_pb2.Summary.Value(tag=tag, metadata=_SCALAR, tensor=tensor_util.make_tensor_proto(np.float32(value)))
              for tag, value in scalars.items()]
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values))


class ScalarWriter:
    """Scalars by step into an event file in `logdir`; with logdir None (processes other than
    0 of a multi-process run) nothing is written."""

    def __init__(self, logdir: str | None):
        self._writer = EventFileWriter(logdir) if logdir is not None else None

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is not None:
            self._writer.add_event(scalar_event(step, scalars, time.time()))

    def close(self) -> None:
        """Flushes the pending events and closes the file."""
        if self._writer is not None:
            self._writer.close()
