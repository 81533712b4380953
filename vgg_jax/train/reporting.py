"""Progress lines of a training run: images per second over step time only, and the ETA."""

from __future__ import annotations

import contextlib
import time


class Throughput:
    """Training images per second between progress lines, over train-step time only:
    evaluation and checkpointing run inside `paused()` and are left out."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size, self.step, self.since, self.excluded = batch_size, step, time.monotonic(), 0.0

    @contextlib.contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - start

    def images_per_second(self, step: int) -> float:
        now = time.monotonic()
        seconds = max(now - self.since - self.excluded, 1e-9)
        rate = (step - self.step) * self.batch_size / seconds
        self.step, self.since, self.excluded = step, now, 0.0
        return rate


def format_duration(seconds: float) -> str:
    """'3d 04:05:06' for long runs, '04:05:06' within a day."""
    days, rest = divmod(int(round(seconds)), 86_400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock
