"""Random-access image sources (Grain's RandomAccessDataSource protocol: len and [index]).

A source holds one split's examples as in-memory pixels, encoded bytes or file paths, with
their labels and class names; `source[i]` is uint8 HxWx3 RGB pixels or an UnreadableImage.
Nothing is opened when a source is built: a folder's files are only listed, and a damaged file
is found when it is read, then counted in the split's SkippedFiles and replaced
(`vgg_jax.data.pipeline`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from vgg_jax.data import decode

MAX_LOGGED_PATHS = 10


class DatasetError(ValueError):
    """A dataset that cannot train: a missing, empty or unreadable folder or class; the message names it."""


@dataclasses.dataclass
class SkippedFiles:
    """Files of a split found unreadable so far in this process: left out, counted and reported."""

    found: set[str] = dataclasses.field(default_factory=set)

    @property
    def paths(self) -> list[str]:
        return sorted(self.found)

    @property
    def count(self) -> int:
        return len(self.found)

    def report(self, when: str) -> None:
        if self.found:
            shown = self.paths[:MAX_LOGGED_PATHS]
            more = f" and {self.count - len(shown)} more" if self.count > len(shown) else ""
            logging.warning("%s: skipped %d unreadable image files so far: %s%s", when, self.count, shown, more)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """In-memory uint8 pixels [n, h, w, 3] (the digits): nothing to decode, nothing fails."""

    items: np.ndarray
    labels: np.ndarray  # int32 [n]
    class_names: list[str]
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """What the skipped-files report names for example `index`."""
        return f"example {index}"

    def __getitem__(self, index: int) -> np.ndarray:
        return self.items[index]


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSource(ImageSource):
    """Encoded image bytes in memory (tfds's mock data), decoded when read."""

    max_pixels: int = decode.DEFAULT_MAX_PIXELS

    def __getitem__(self, index: int) -> np.ndarray:
        return decode.decode(self.items[index], self.max_pixels)


@dataclasses.dataclass(frozen=True, eq=False)
class FileSource(ImageSource):
    """Image files, listed (an object array of paths), read and decoded when indexed."""

    max_pixels: int = decode.DEFAULT_MAX_PIXELS

    def path(self, index: int) -> str:
        return str(self.items[index])

    def __getitem__(self, index: int) -> np.ndarray:
        return decode.load(self.path(index), self.max_pixels)


def file_source(files: dict[str, list[str]], class_names: list[str], max_pixels: int) -> FileSource:
    """The listed files of each class, labelled by the class's index in `class_names`."""
    paths = [path for name in class_names for path in files[name]]
    labels = np.array([label for label, name in enumerate(class_names) for _ in files[name]], np.int32)
    return FileSource(np.array(paths, dtype=object), labels, class_names, max_pixels=max_pixels)
