"""The input pipeline end to end: sources, order, restarts (seeking, for tfds), sharding, padding and bad input."""

import io
import itertools
from collections import Counter

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from benchmarks import datasets
from configs.default import get_config
from vgg_jax.data import digits, input_pipeline as ip, pipeline


def data_config(**overrides):
    config = get_config().data
    config.update(overrides)
    return config


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def train(config, n, **kwargs):
    kwargs = {"global_batch_size": 16, "seed": 0, "process_index": 0,
              "process_count": 1, **kwargs}
    return take(ip.train_batches(config, **kwargs), n)


def test_digits_split_sizes_class_balance_and_pixels():
    (train_images, train_labels), (test_images, test_labels) = digits.load("train"), digits.load("test")
    assert train_images.shape == (1437, 32, 32, 3) and test_images.shape == (360, 32, 32, 3)
    reference = load_digits()
    class_fraction = np.bincount(reference.target) / 1797
    assert np.all(np.abs(np.bincount(test_labels) - 360 * class_fraction) <= 1)  # stratified
    # each image: the original's 0-16 pixels on 0-255, as 4x4 blocks, grey RGB
    expected = np.round(reference.images * 255 / 16).repeat(4, 1).repeat(4, 2)[..., None].repeat(3, -1)
    originals = Counter((image.astype(np.uint8).tobytes(), label) for image, label in zip(expected, reference.target))
    ours = Counter((image.tobytes(), label) for images, labels in [(train_images, train_labels),
                   (test_images, test_labels)] for image, label in zip(images, labels))
    assert ours == originals  # the two splits partition the 1797 images


def test_dataset_info_digits():
    info = ip.dataset_info(data_config())
    assert (info.num_classes, info.num_train, info.num_eval) == (10, 1437, 360)
    assert info.class_names == [str(i) for i in range(10)]


def test_train_epoch_is_a_permutation_of_the_split_without_augmentation():
    config = data_config(scale_min=32, scale_max=32, flip=False, color_shift_std=0.0)
    images, labels = digits.load("train")
    batches = train(config, 3, global_batch_size=479)  # 3 x 479 = 1437: exactly one epoch
    seen = np.concatenate([b["image"] for b in batches])
    seen_labels = np.concatenate([b["label"] for b in batches])
    order = np.lexsort(seen.reshape(len(seen), -1).T)
    expected_order = np.lexsort(images.reshape(len(images), -1).T)
    np.testing.assert_array_equal(seen[order], images[expected_order])  # S = crop = 32: the pixels as they are
    np.testing.assert_array_equal(np.sort(seen_labels), np.sort(labels))
    assert not np.array_equal(seen_labels, labels)  # shuffled


def test_train_batches_shapes_and_seeded_determinism():
    config = data_config()
    first, again, other = train(config, 2), train(config, 2), train(config, 2, seed=1)
    assert first[0]["image"].shape == (16, 32, 32, 3) and first[0]["image"].dtype == np.uint8
    assert first[0]["label"].dtype == np.int32
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["label"], other[0]["label"])


def test_restart_at_step_k_gives_the_uninterrupted_batches():
    config = data_config()
    k = 95  # past the first epoch boundary (1437 / 16 = 89.8 steps)
    uninterrupted = train(config, k + 3)[k:]
    restarted = train(config, 3, start_step=k)
    for a, b in zip(uninterrupted, restarted):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_processes_shards_partition_every_global_batch():
    """Catches processes that read overlapping shards of the split (an example twice in a global
    batch, another never), which differently augmented shards would hide. Without augmentation,
    3 processes of 479 images each (1437 = 3 x 479): each global batch, the three local batches
    put together, must be the whole split exactly once, and again at the next step."""
    config = data_config(scale_min=32, scale_max=32, flip=False, color_shift_std=0.0)
    images, labels = digits.load("train")
    split = Counter(zip(map(bytes, images), labels))  # uint8 pixels, as the host yields them
    shards = [train(config, 2, global_batch_size=1437, process_index=i, process_count=3) for i in range(3)]
    assert shards[0][0]["image"].shape == (479, 32, 32, 3)
    for step in range(2):
        seen = Counter((bytes(image), label) for shard in shards
                       for image, label in zip(shard[step]["image"], shard[step]["label"]))
        missing, repeated = split - seen, seen - split
        assert not missing and not repeated, f"step {step}: {missing.total()} missing, {repeated.total()} extra"
    with pytest.raises(ValueError, match="divisible"):
        train(config, 1, global_batch_size=15, process_count=2, process_index=0)


def test_eval_batches_cover_the_split_once_across_processes_with_padding():
    config = data_config()
    images, labels = digits.load("test")
    per_process = [list(ip.eval_batches(config, global_batch_size=48, process_index=i, process_count=3))
                   for i in range(3)]
    assert len({len(batches) for batches in per_process}) == 1  # equal step counts on every process
    seen_images, seen_labels = [], []
    for batches in per_process:
        for batch in batches:
            assert batch["image"].shape == (16, 32, 32, 3) and batch["mask"].dtype == bool
            seen_images.append(batch["image"][batch["mask"]])
            seen_labels.append(batch["label"][batch["mask"]])
    seen_images, seen_labels = np.concatenate(seen_images), np.concatenate(seen_labels)
    assert len(seen_labels) == 360
    # eval_scale == crop == 32: each image is the original's uint8 pixels, each seen exactly once
    expected = {(bytes(image.astype(np.uint8)), label) for image, label in zip(images, labels)}
    assert {(bytes(image), label) for image, label in zip(seen_images, seen_labels)} == expected


def test_eval_images_rescale_the_smallest_side():
    config = data_config()
    images = take(ip.eval_images(config, scale=48, process_index=0, process_count=1), 3)
    labels = digits.load("test")[1][:3]
    for (image, label), expected_label in zip(images, labels):
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and label == expected_label


def test_non_square_folder_images_keep_their_aspect_in_both_evaluation_inputs(tmp_path):
    """Catches evaluation images squashed to Q x Q (the aspect ratio lost), or cropped off centre,
    which square images cannot show. PNGs of noise, one landscape and one portrait: at Q equal to
    the smallest side (32, the crop) nothing is resampled, so the dense/multi-crop input is each
    image itself and the validation input its centre 32x32; at Q = 48 the sides are in closed form."""
    rng = np.random.default_rng(6)
    shapes = {"wide": (32, 48, 3), "tall": (48, 32, 3)}
    originals = {}
    for name, shape in shapes.items():
        (tmp_path / name).mkdir()
        originals[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(originals[name]).save(tmp_path / name / "0.png")
    config = data_config(source=f"folder:{tmp_path}", train_split="val", eval_split="val", val_fraction=0.0)
    names = ip.dataset_info(config).class_names
    whole = list(ip.eval_images(config, scale=32, process_index=0, process_count=1))
    assert sorted(names[label] for _, label in whole) == ["tall", "wide"]
    for image, label in whole:
        np.testing.assert_array_equal(image, originals[names[label]])
    larger = list(ip.eval_images(config, scale=48, process_index=0, process_count=1))
    assert sorted(image.shape for image, _ in larger) == [(48, 72, 3), (72, 48, 3)]
    [batch] = ip.eval_batches(config, global_batch_size=2, process_index=0, process_count=1)
    for image, label in zip(batch["image"], batch["label"]):
        original = originals[names[label]]
        y, x = (original.shape[0] - 32) // 2, (original.shape[1] - 32) // 2
        np.testing.assert_array_equal(image, original[y:y + 32, x:x + 32])


@pytest.mark.parametrize("field,overrides", [
    ("crop_size", {"crop_size": 48}), ("scale_min", {"scale_min": 50, "scale_max": 40}),
    ("eval_scale", {"eval_scale": 24}),
])
def test_impossible_scales_are_config_errors(field, overrides):
    with pytest.raises(ValueError, match=f"data.{field}"):
        train(data_config(**overrides), 1)





def test_imagenet2012_under_mock_data():
    config = data_config(source="imagenet2012", train_split="train", eval_split="validation")
    with tfds.testing.mock_data(num_examples=8):
        info = ip.dataset_info(config)
        assert (info.num_classes, info.num_train, info.num_eval) == (1000, 8, 8)
        first, again = train(config, 2, global_batch_size=4), train(config, 2, global_batch_size=4)
        restarted = train(config, 1, global_batch_size=4, start_step=1)
        batches = list(ip.eval_batches(config, global_batch_size=6, process_index=0, process_count=1))
    assert first[0]["image"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(first[1]["image"], again[1]["image"])
    np.testing.assert_array_equal(first[1]["image"], restarted[0]["image"])
    assert [b["mask"].sum() for b in batches] == [6, 2]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """'synthetic_images' prepared as tfds prepares ImageNet: TFRecord shards (12 here), no cache."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    datasets.build_tfds(data_dir, num_train=150, num_val=12, num_classes=3, train_shards=12)
    return data_dir


def tfds_config(data_dir, **overrides):
    return data_config(**{"source": datasets.NAME, "data_dir": data_dir, "eval_split": "validation", **overrides})


def records(config, start, n, seed=0, process_index=0, process_count=1):
    """The first n encoded images of the raw train stream from position `start`."""
    split = ip._load_split(config, "train")
    stream = split.train_records(seed, start, process_index, process_count, config.shuffle_window)
    return list(stream.map(lambda record: split.parse(record)[0]).take(n).as_numpy_iterator())


def test_tfds_sizes_come_from_metadata_and_batches_restart_exactly(tfds_dir):
    config = tfds_config(tfds_dir)
    info = ip.dataset_info(config)
    assert (info.num_classes, info.num_train, info.num_eval) == (3, 150, 12)
    uninterrupted = train(config, 25, global_batch_size=12)  # two epochs of 150
    restarted = train(config, 2, global_batch_size=12, start_step=23)
    for a, b in zip(uninterrupted[23:], restarted):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    batches = list(ip.eval_batches(config, global_batch_size=8, process_index=0, process_count=1))
    assert [b["mask"].sum() for b in batches] == [8, 4]
    # 40x30 JPEGs: the dense/multi-crop input keeps the aspect (an image squashed to Q x Q would not)
    images = list(ip.eval_images(config, scale=45, process_index=0, process_count=1))
    assert len(images) == 12 and {image.shape for image, _ in images} == {(45, 60, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("window", [1, 16, 64, 1000])
def test_tfds_order_is_a_seekable_shuffle_of_whole_epochs(tfds_dir, window):
    config = tfds_config(tfds_dir, shuffle_window=window)
    split = ip._load_split(config, "train")
    in_order = list(split.records(0, 1).map(lambda record: split.parse(record)[0]).as_numpy_iterator())
    stream = records(config, 0, 3 * 150)
    epochs = [stream[i * 150:(i + 1) * 150] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(in_order)  # each epoch: every record once
    assert epochs[0] != in_order and epochs[0] != epochs[1] != epochs[2]  # shuffled, anew each epoch
    shard_ends = np.cumsum(split.builder.info.splits["train"].shard_lengths)
    shards = {int(np.searchsorted(shard_ends, in_order.index(record), side="right")) for record in epochs[0][:16]}
    assert shards != {0, 1} and len(shards) >= (2 if window <= 16 else 4)  # files shuffled, windows mixed
    for start in [1, 15, 16, 149, 150, 151, 307]:  # window edges, epoch edges, mid-epoch
        assert records(config, start, 20) == stream[start:start + 20]


def test_tfds_processes_share_every_epoch(tfds_dir):
    config = tfds_config(tfds_dir, shuffle_window=16)
    shares = [records(config, 0, 75, process_index=i, process_count=2) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(records(config, 0, 150))
    assert records(config, 80, 10, process_index=1, process_count=2) == records(
        config, 0, 90, process_index=1, process_count=2)[80:]


def test_tfds_user_errors_name_the_problem(tfds_dir):
    with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'"):
        ip.dataset_info(data_config(source="no_such_dataset", data_dir=tfds_dir))
    with pytest.raises(ValueError, match="no prepared split 'test'"):
        ip.dataset_info(tfds_config(tfds_dir, eval_split="test"))


# Folder datasets.

COLORS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def write_image(path, color, fmt="PNG", mode="RGB", size=(40, 30)):
    Image.new("RGB", size, color).convert(mode).save(path, fmt)


@pytest.fixture
def folder(tmp_path):
    """Two classes in every format a user may drop in, plus a truncated JPEG and a text file."""
    for name, color in COLORS.items():
        (tmp_path / name).mkdir()
        for i in range(5):
            write_image(tmp_path / name / f"{i}.png", color)
        write_image(tmp_path / name / "cmyk.jpg", color, "JPEG", "CMYK")
        write_image(tmp_path / name / "grey.bmp", color, "BMP", "L")
        write_image(tmp_path / name / "alpha.png", color, "PNG", "RGBA")
        write_image(tmp_path / name / "palette.gif", color, "GIF", "P")
    write_image(tmp_path / "cat" / "whole.jpg", (200, 30, 30), "JPEG", size=(300, 200))
    (tmp_path / "cat" / "truncated.jpg").write_bytes((tmp_path / "cat" / "whole.jpg").read_bytes()[:300])
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_dataset_skips_and_counts_bad_files_and_reads_every_format(folder, caplog):
    config = data_config(source=f"folder:{folder}", train_split="train", eval_split="val", val_fraction=0.3)
    info = ip.dataset_info(config)  # a listing: nothing is decoded yet
    assert info.class_names == ["cat", "dog"]
    assert info.num_train + info.num_eval == 21 and ip.skipped_files(config, "train").count == 0
    with caplog.at_level("WARNING"):
        batches = train(config, 2 * info.num_train // 4 + 1, global_batch_size=4, seed=3)  # past epoch 1
        evaluated = list(ip.eval_images(config, scale=30, process_index=0, process_count=1))
    assert all(batch["image"].shape == (4, 32, 32, 3) and set(batch) == {"image", "label"} for batch in batches)
    skipped = ip.skipped_files(config, "train").paths + ip.skipped_files(config, "val").paths
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped) == ["notes.txt", "truncated.jpg"]
    train_skipped = ip.skipped_files(config, "train").count
    if train_skipped:
        assert f"epoch 1: skipped {train_skipped} unreadable image files so far" in caplog.text
    assert len(evaluated) == info.num_eval - ip.skipped_files(config, "val").count
    for image, label in evaluated:
        color = np.array(COLORS[info.class_names[label]], float)
        grey = np.full(3, color @ [0.299, 0.587, 0.114])  # what the greyscale BMP holds
        mean = image.reshape(-1, 3).mean(0)
        assert min(np.abs(mean - color).max(), np.abs(mean - grey).max()) < 8  # CMYK, palette, ... -> RGB


def test_unreadable_files_are_replaced_in_the_stream_and_restarts_stay_exact(folder):
    """Catches an unreadable file dropped (positions shift, restarts diverge), repeated in place
    of a stand-in, replaced by a file outside the epoch's order, or one order for every epoch."""
    config = data_config(source=f"folder:{folder}", val_fraction=0.0)
    split = ip._load_split(config, "train")
    bad = {str(folder / "cat" / "truncated.jpg"), str(folder / "dog" / "notes.txt")}
    layout = pipeline.Layout(0, 1, 4)
    examples = pipeline.TrainExamples(split, pipeline.EpochOrder(layout.shard(split.num_examples), 0), layout, 0, config)

    def stream(start, n):
        return [(index, tuple(failed)) for index, _, failed in map(examples.read, range(start, start + n))]

    n = split.num_examples  # 21 listed, 19 readable
    epochs = stream(0, 3 * n)
    assert all(index >= 0 for index, _ in epochs)  # every position holds a readable image
    readable = Counter(path for path in split.items if path not in bad)
    for e in range(3):  # each epoch: every readable file, plus one stand-in per unreadable one
        seen = Counter(split.path(index) for index, _ in epochs[e * n:(e + 1) * n])
        assert not readable - seen and seen.total() == readable.total() + 2
    failed = {split.path(i) for _, indices in epochs for i in indices if i >= 0}
    assert failed == bad
    assert epochs[:n] != epochs[n:2 * n] != epochs[2 * n:]  # each epoch shuffled anew
    for start in [1, n - 1, n + 5]:
        assert stream(start, 10) == epochs[start:start + 10]


def truncated_jpeg() -> bytes:
    """A JPEG cut just after its headers: its header reads as an image's, its pixels do not decode."""
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(encoded, "JPEG")
    data = encoded.getvalue()
    return data[:data.index(b"\xff\xda") + 16]


def test_folder_start_up_decodes_nothing(tmp_path):
    """Catches a start-up that decodes every file (ImageNet: an hour): damaged files are found
    when read, not listed."""
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.jpg").write_bytes(truncated_jpeg())
    config = data_config(source=f"folder:{tmp_path}", val_fraction=0.0)
    assert ip.dataset_info(config).num_train == 6  # the old start-up check would reject every file
    with pytest.raises(ValueError, match="files in a row of the training order are unreadable"):
        train(config, 1, global_batch_size=2)


def test_folder_dataset_with_train_and_val_folders(tmp_path):
    for split, n in [("train", 3), ("val", 2)]:
        for name in ["a", "b", "c"]:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                write_image(tmp_path / split / name / f"{i}.png", (i, 0, 0))
    info = ip.dataset_info(data_config(source=f"folder:{tmp_path}", eval_split="val"))
    assert (info.class_names, info.num_train, info.num_eval) == (["a", "b", "c"], 9, 6)


def test_folder_dataset_errors(tmp_path):
    (tmp_path / "only").mkdir()
    write_image(tmp_path / "only" / "0.png", (0, 0, 0))
    with pytest.raises(ValueError, match="at least two"):
        ip.dataset_info(data_config(source=f"folder:{tmp_path}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        ip.dataset_info(data_config(source=f"folder:{tmp_path}"))
