"""folder:PATH datasets: PATH/<class>/<image>, listed at start-up, nothing decoded.

Classes are the sorted sub-folders. PATH/train and PATH/val (any split names) holding the
class folders give the splits; otherwise a seeded per-class fraction `val_fraction` of the
files is held out for evaluation, the same for every run.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from vgg_jax.data import decode, sources
from vgg_jax.data.sources import DatasetError

PREFIX = "folder:"


def class_files(root: str, class_names: list[str] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Class names (sorted sub-folders unless given) and each class's files, hidden ones aside."""
    if class_names is None:
        class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(class_names) < 2:
        raise DatasetError(f"folder dataset {root} needs at least two class sub-folders, found {class_names}")
    return class_names, {name: class_folder_files(os.path.join(root, name)) for name in class_names}


def class_folder_files(folder: str) -> list[str]:
    """The files of one class folder; DatasetError if it has none, or none whose header is an
    image's (checked until one passes: one file per class in a sound dataset; damaged files of a
    readable class are skipped and counted as they are read)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"class folder {folder} does not exist")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise DatasetError(f"class folder {folder} is empty: every class needs images")
    if not any(decode.looks_like_an_image(path) for path in files):
        raise DatasetError(f"class folder {folder}: none of its {len(files)} files is an image or readable")
    return files


def held_out(files: dict[str, list[str]], val_fraction: float, train: bool) -> dict[str, list[str]]:
    """Each class's train files, or its held-out ones: a seeded fraction, at least one left to train."""
    kept = {}
    for name, paths in files.items():
        order = np.random.default_rng(0).permutation(len(paths))
        chosen = set(order[:min(round(val_fraction * len(order)), len(order) - 1)])
        kept[name] = [path for i, path in enumerate(paths) if (i in chosen) != train]
    return kept


@functools.lru_cache(maxsize=None)
def load_split(root: str, split: str, train_split: str, val_fraction: float, max_pixels: int) -> sources.FileSource:
    """One split of the folder dataset at `root`; DatasetError naming the folder when it is unusable."""
    if not os.path.isdir(root):
        raise DatasetError(f"folder dataset {root} does not exist: give data.source='folder:PATH' with "
                         "PATH holding one sub-folder per class (or train/ and val/ holding them)")
    if os.path.isdir(os.path.join(root, train_split)):  # PATH/train, PATH/val, ... hold the classes
        class_names, _ = class_files(os.path.join(root, train_split))
        if not os.path.isdir(os.path.join(root, split)):
            raise DatasetError(f"folder dataset {root} has no {split}/ sub-folder")
        _, files = class_files(os.path.join(root, split), class_names)
        return sources.file_source(files, class_names, max_pixels)
    class_names, files = class_files(root)
    return sources.file_source(held_out(files, val_fraction, split == train_split), class_names, max_pixels)
