"""TensorBoard scalars without TensorFlow: event records written with the tensorboard package's
own record format, on a plain file.

tensorboard's `EventFileWriter` opens its file through `tensorboard.compat.tf`, which is all of
TensorFlow whenever TensorFlow is installed (the `tfds` extra): 2-5 s at the start of a run, its
oneDNN banner, and ~1 s more at exit. So the file is a Python one and each event a
length-prefixed, CRC-checked record (`RecordWriter`), written and flushed as it comes (a few
hundred bytes per progress line). Each scalar is stored as `tf.summary.scalar` stores it: a
float32 scalar tensor under its tag, marked for the scalars plugin.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_FILE_NUMBERS = itertools.count()  # two writers of one process in one second get two files


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> event_pb2.Event:
    values = [summary_pb2.Summary.Value(tag=tag, metadata=_SCALAR, tensor=tensor_util.make_tensor_proto(np.float32(value)))
              for tag, value in scalars.items()]
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values))


def event_file_name(wall_time: float) -> str:
    """TensorBoard's naming: it reads files named events.out.tfevents.*, in name order."""
    return f"events.out.tfevents.{int(wall_time):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}"


class ScalarWriter:
    """Scalars by step into a new event file in `logdir`; with logdir None (processes other than
    0 of a multi-process run) nothing is written."""

    def __init__(self, logdir: str | None):
        self._records = None
        if logdir is not None:
            os.makedirs(logdir, exist_ok=True)
            now = time.time()
            # "x": a new file, never one of an earlier run
            self._records = RecordWriter(open(os.path.join(logdir, event_file_name(now)), "xb"))
            self._write(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._records is not None:
            self._write(scalar_event(step, scalars, time.time()))

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
