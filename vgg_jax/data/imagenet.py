"""imagenet:PATH: ILSVRC-2012 as downloaded, read in place (nothing converted).

PATH/train/nXXXXXXXX/*.JPEG (the 1000 train folders, as the train tar's per-class tars unpack),
and the validation images either flat in PATH/val/ with one of these ground-truth files in PATH,
or in PATH/val/nXXXXXXXX/ class folders:
  LOC_val_solution.csv                      Kaggle's: ImageId,PredictionString (the first word a WNID)
  ILSVRC2012_validation_ground_truth.txt    the devkit's: one ILSVRC2012_ID per line, in file order,
    with meta.mat beside it                 mapped to WNIDs through meta.mat's synsets
  val.txt                                   'FILENAME LABEL' lines, LABEL a WNID or a class index
Kaggle's own layout (PATH/ILSVRC/Data/CLS-LOC/train, .../val) is found too. Classes are the train
folders' WNIDs sorted: the class order of tfds's imagenet2012, torchvision and Keras, so imported
weights score correctly; with all 1000, class names are `class_names.imagenet_class_names()`.
"""

from __future__ import annotations

import csv
import functools
import os

import numpy as np

from vgg_jax.core import class_names as names
from vgg_jax.data import folders, sources
from vgg_jax.data.sources import DatasetError

PREFIX = "imagenet:"
KAGGLE_IMAGES = os.path.join("ILSVRC", "Data", "CLS-LOC")
DEVKIT_DATA = os.path.join("ILSVRC2012_devkit_t12", "data")


def images_root(root: str) -> str:
    """The folder holding train/ and val/: PATH itself, or Kaggle's ILSVRC/Data/CLS-LOC under it."""
    for candidate in (root, os.path.join(root, KAGGLE_IMAGES)):
        if os.path.isdir(os.path.join(candidate, "train")):
            return candidate
    raise DatasetError(f"imagenet dataset {root}: no train/ folder (nor {KAGGLE_IMAGES}/train) of nXXXXXXXX class folders")


def _kaggle_labels(path: str) -> dict[str, str]:
    with open(path, newline="") as file:
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(file)}


def _devkit_labels(path: str, val_files: list[str]) -> dict[str, str]:
    """The devkit's IDs (line i: the i-th validation file in name order) mapped to WNIDs by meta.mat."""
    from scipy import io  # scipy comes with scikit-learn

    synsets = io.loadmat(os.path.join(os.path.dirname(path), "meta.mat"), squeeze_me=True)["synsets"]
    wnids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    with open(path) as file:
        ids = [int(line) for line in file if line.strip()]
    if len(ids) != len(val_files):
        raise DatasetError(f"{path} has {len(ids)} labels for {len(val_files)} validation images")
    return {_stem(f): wnids[i] for f, i in zip(sorted(val_files), ids)}


def _text_labels(path: str, wnids: list[str]) -> dict[str, str]:
    labels = {}
    with open(path) as file:
        for line in file:
            if line.strip():
                name, label = line.split()
                labels[_stem(name)] = wnids[int(label)] if label.isdigit() else label
    return labels


def _stem(filename: str) -> str:
    return os.path.splitext(os.path.basename(filename))[0]


def val_labels(root: str, val_files: list[str], wnids: list[str]) -> dict[str, str]:
    """Validation file stem -> WNID, from the first ground-truth file found (module docstring)."""
    for name, read in (("LOC_val_solution.csv", _kaggle_labels),
                       ("ILSVRC2012_validation_ground_truth.txt", lambda p: _devkit_labels(p, val_files)),
                       (os.path.join(DEVKIT_DATA, "ILSVRC2012_validation_ground_truth.txt"),
                        lambda p: _devkit_labels(p, val_files)),
                       ("val.txt", lambda p: _text_labels(p, wnids))):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            try:
                return read(path)
            except (ValueError, KeyError, IndexError, OSError) as error:
                raise DatasetError(f"imagenet ground truth {path} is unreadable: {error}") from None
    raise DatasetError(f"imagenet dataset {root}: val/ is flat but no ground truth was found "
                     "(LOC_val_solution.csv, ILSVRC2012_validation_ground_truth.txt with meta.mat, or val.txt)")


def _validation(root: str, images: str, wnids: list[str], max_pixels: int) -> sources.FileSource:
    val = os.path.join(images, "val")
    if not os.path.isdir(val):
        raise DatasetError(f"imagenet dataset {root} has no val/ folder")
    entries = sorted(f for f in os.listdir(val) if not f.startswith("."))
    if any(os.path.isdir(os.path.join(val, f)) for f in entries):  # val/nXXXXXXXX/ class folders
        return sources.file_source(folders.class_files(val, wnids)[1], wnids, max_pixels)
    labels = val_labels(root, entries, wnids)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = [f for f in entries if labels.get(_stem(f)) not in index]
    if unknown:
        raise DatasetError(f"imagenet dataset {root}: {len(unknown)} validation files lack a known label, "
                         f"e.g. {unknown[0]} ({labels.get(_stem(unknown[0]))!r})")
    return sources.FileSource(np.array([os.path.join(val, f) for f in entries], dtype=object),
                              np.array([index[labels[_stem(f)]] for f in entries], np.int32), wnids,
                              max_pixels=max_pixels)


def display_names(wnids: list[str]) -> list[str]:
    """The readable ImageNet names when all 1000 classes are there, else the WNIDs."""
    return list(names.imagenet_class_names()) if len(wnids) == names.IMAGENET_CLASSES else wnids


@functools.lru_cache(maxsize=None)
def load_split(root: str, split: str, train_split: str, max_pixels: int) -> sources.FileSource:
    """The train split (`train_split`) or the validation split (any other name) at `root`."""
    if not os.path.isdir(root):
        raise DatasetError(f"imagenet dataset {root} does not exist: give data.source='imagenet:PATH' "
                         "with PATH holding train/ and val/")
    train = os.path.join(images_root(root), "train")
    wnids = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    if split == train_split:
        source = sources.file_source(folders.class_files(train, wnids)[1], wnids, max_pixels)
    else:
        source = _validation(root, os.path.dirname(train), wnids, max_pixels)
    return sources.FileSource(source.items, source.labels, display_names(wnids), max_pixels=max_pixels)
