"""Writing a directory that must never destroy anything but an earlier one of its kind.

Every writer of a folder (model directories: imports, the pretrained cache; export's artefacts)
writes into a fresh temporary sibling and renames it into place: an interrupted write leaves
no half-written target, and the writer's library (orbax deletes older integer-named steps in
the directory it saves to) never sees the user's files. An existing target is replaced only
when it is empty or an earlier output of the same kind; anything else -- a file, a folder of
someone's photos, another run's checkpoints -- is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Callable, Iterator


class OccupiedError(ValueError):
    """The target exists and is not an earlier output of the same kind."""


def temporary_path(path: str) -> str:
    """A fresh hidden name beside `path` (`.<name>.<random>.partial`)."""
    parent, base = os.path.split(path)
    return os.path.join(parent, f".{base}.{uuid.uuid4().hex}.partial")


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def check_replaceable(target: str, is_same_kind: Callable[[str], bool], kind: str) -> None:
    """OccupiedError unless `target` is absent, an empty directory or one `is_same_kind` accepts."""
    if not os.path.lexists(target):
        return
    if os.path.islink(target) or not os.path.isdir(target):
        raise OccupiedError(f"{target} exists and is not a directory: choose another output directory")
    if os.listdir(target) and not is_same_kind(target):
        raise OccupiedError(f"{target} exists and is not {kind}: nothing was written; choose a new or "
                            "empty directory (its files are left as they are)")


@contextlib.contextmanager
def replacing(target: str | os.PathLike, is_same_kind: Callable[[str], bool], kind: str) -> Iterator[str]:
    """Yields a fresh temporary sibling of `target` to write into; once the block succeeds it
    takes `target`'s place, and the earlier output it replaces is removed. `kind` names what
    `is_same_kind` accepts, for the refusal ('a model directory')."""
    target = os.path.abspath(os.fspath(target))
    check_replaceable(target, is_same_kind, kind)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = temporary_path(target)
    try:
        yield temporary
        check_replaceable(target, is_same_kind, kind)  # again: the target may have changed meanwhile
        earlier = temporary_path(target)
        if os.path.isdir(target):
            os.rename(target, earlier)
        os.rename(temporary, target)
        remove(earlier)
    finally:
        remove(temporary)
