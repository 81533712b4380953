"""The Grain data path (vgg_jax/data): decoding against tf.image, the pixel limit, worker
counts, and ImageNet's validation ground truth."""

import io
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image
from sklearn.datasets import load_sample_image

from configs.default import get_config
from vgg_jax.data import decode, imagenet, input_pipeline as ip, transforms


def data_config(**overrides):
    config = get_config().data
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def photo_jpeg():
    """A 500x375 photo (ImageNet's typical size) as a quality-90 JPEG."""
    image = Image.fromarray(load_sample_image("china.jpg")).resize((500, 375), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_pixels_agree_with_the_tf_image_path(photo_jpeg):
    """Catches a decoder or resize that drifts from tf.image's pixels (another DCT, chroma
    upsampling, filter, window rounding or an off-by-one crop).
    Decoding: both are libjpeg-turbo with the fast integer DCT and fancy upsampling: equal.
    Resizing: both are the triangle (bilinear, antialiased) filter; Pillow rounds its horizontal
    pass to uint8 before the vertical one (an error within +-0.5 level, averaged by vertical
    weights that sum to 1), tf.image keeps float32: the exact values differ by at most 0.5, so the
    rounded pixels by at most 1 level, and on average by at most E|U(-0.5, 0.5)| = 0.25.
    End to end: tf.data decodes only the crop window, and libjpeg-turbo's cropped decode
    upsamples chroma at the window's left and right edges from the edge itself; that reaches 2
    source columns, which the filter (radius <= the shrink factor, here <= 375 / 224) spreads
    over output columns 0-2 and 221-223. Inside them, the resize bounds hold."""
    tf = pytest.importorskip("tensorflow")
    from vgg_jax.data import preprocessing as pp

    ours = decode.decode(photo_jpeg)
    np.testing.assert_array_equal(ours, pp.decode(tf.constant(photo_jpeg)).numpy())
    rng = np.random.default_rng(0)
    for scale in (224, 256, 384, 512):  # shrinking and enlarging windows
        offset = rng.random(2)
        crop = transforms.crop(ours, scale, 224, offset).astype(int)
        y, x, side = transforms.crop_window(*ours.shape[:2], scale, 224, offset)
        resized = pp.to_pixels(tf.image.resize(ours[y:y + side, x:x + side], [224, 224], antialias=True)).numpy()
        assert np.abs(crop - resized).max() <= 1 and np.abs(crop - resized).mean() <= 0.25, scale
        today = pp.to_pixels(pp.decode_crop(tf.constant(photo_jpeg), scale, 224, offset)).numpy()
        inside = np.abs(crop - today)[:, 3:-3]
        assert inside.max() <= 1 and inside.mean() <= 0.25, scale
    whole = transforms.rescale_smallest_side(ours, 256).astype(int)
    theirs = pp.to_pixels(pp.rescale_smallest_side(ours, 256)).numpy()
    assert whole.shape == theirs.shape == (256, 341, 3)
    assert np.abs(whole - theirs).max() <= 1 and np.abs(whole - theirs).mean() <= 0.25


def huge_jpeg(side=20000):
    """A 16x16 JPEG whose frame header (SOF0) declares side x side pixels."""
    data = bytearray(simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)  # after marker, length, precision
    return bytes(data)


def huge_png(side=20000):
    """A 1x1 PNG whose IHDR declares side x side pixels (CRC fixed, so it parses)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    """Catches a 20000 x 20000 image (a few KB here, 1.2 GB decoded) being decoded: the header's
    size must refuse it first, for JPEG (simplejpeg) and other formats (Pillow's lazy open)."""
    assert simplejpeg.decode_jpeg_header(huge_jpeg())[:2] == (20000, 20000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", no_decoding)
    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    for data, side in ((huge_jpeg(), 20000), (huge_png(8000), 8000)):  # Pillow's own limit: 179 MP
        with pytest.raises(decode.UnreadableImage, match=f"{side} x {side} pixels, over the limit of 40000000"):
            decode.decode(data)
    with pytest.raises(decode.UnreadableImage, match="over the limit of 255"):
        decode.decode(huge_jpeg(16), max_pixels=255)


def test_a_file_too_large_for_the_pixel_limit_is_not_read(tmp_path):
    """Catches a file read whole before its size is checked: with max_pixels 10 no image needs
    more than 8 bytes a pixel plus a 1 MiB header."""
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (decode.HEADER_BYTES + 81))
    with pytest.raises(decode.UnreadableImage, match="more than an image of at most 10 pixels holds"):
        decode.read_file(str(path), max_pixels=10)


def write_folder(root, damaged=()):
    """Two classes of six noise JPEGs (every crop differs), plus `damaged` (name, bytes) in class a."""
    rng = np.random.default_rng(0)
    for name in ["a", "b"]:
        (root / name).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
            (root / name / f"{i}.jpg").write_bytes(simplejpeg.encode_jpeg(pixels))
    for name, data in damaged:
        (root / "a" / name).write_bytes(data)


def test_an_oversized_image_in_a_folder_is_skipped_counted_and_replaced(tmp_path):
    """Catches an image over data.max_pixels trained on (or its position dropped): it is
    counted with the damaged files, and every batch stays full."""
    write_folder(tmp_path, damaged=[("huge.jpg", huge_jpeg()), ("empty.jpg", b"")])
    config = data_config(source=f"folder:{tmp_path}", val_fraction=0.0, scale_min=32, scale_max=40)
    batches = list(zip(range(8), ip.train_batches(config, global_batch_size=4, seed=0, process_index=0,
                                                  process_count=1)))
    assert all(batch["image"].shape == (4, 32, 32, 3) for _, batch in batches)
    assert sorted(p.rsplit("/", 1)[1] for p in ip.skipped_files(config, "train").paths) == ["empty.jpg", "huge.jpg"]


def test_batches_are_the_same_bytes_for_any_worker_count(tmp_path):
    """Catches batches that depend on how elements are read (threads or a worker process): an
    element keyed on anything but (seed, position), or elements reordered between workers."""
    write_folder(tmp_path)
    config = data_config(source=f"folder:{tmp_path}", val_fraction=0.0, scale_min=32, scale_max=48)
    runs = []
    for workers in (0, 2):
        config.workers = workers
        stream = ip.train_batches(config, global_batch_size=3, seed=5, start_step=2, process_index=0, process_count=1)
        runs.append([batch for _, batch in zip(range(5), stream)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.fixture
def imagenet_root(tmp_path):
    """Three train classes and five flat validation images; the WNIDs sort differently from the
    devkit's ILSVRC2012_IDs, as the real ones do."""
    wnids = ["n01440764", "n01443537", "n02102040"]  # tench, goldfish, springer: classes 0, 1, 2
    for wnid in wnids:
        (tmp_path / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / wnid / f"{wnid}_1.JPEG")
    (tmp_path / "val").mkdir()
    truth = [2, 0, 1, 2, 1]  # class of ILSVRC2012_val_0000000{i + 1}
    for i in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    return tmp_path, wnids, truth


def write_devkit(root, wnids, truth):
    from scipy import io

    ids = {"n02102040": 1, "n01440764": 2, "n01443537": 3}  # the devkit's own numbering
    synsets = np.array([(ids[w], w) for w in wnids], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    io.savemat(root / "meta.mat", {"synsets": synsets})
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[wnids[c]]}\n" for c in truth))


@pytest.mark.parametrize("ground_truth", ["kaggle", "devkit", "text_wnid", "text_index"])
def test_imagenet_validation_labels_follow_the_sorted_wnid_order(imagenet_root, ground_truth):
    """Catches validation labels in the ground-truth file's own numbering (the devkit's IDs),
    or files matched to the wrong line: each must be the index of its WNID among the sorted
    train folders, the order of tfds, torchvision and Keras."""
    root, wnids, truth = imagenet_root
    stems = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(5)]
    if ground_truth == "kaggle":
        rows = [f"{stem},{wnids[c]} 1 2 3 4 {wnids[c]} 5 6 7 8" for stem, c in zip(stems, truth)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    elif ground_truth == "devkit":
        write_devkit(root, wnids, truth)
    else:
        labels = [wnids[c] if ground_truth == "text_wnid" else str(c) for c in truth]
        (root / "val.txt").write_text("".join(f"{stem}.JPEG {label}\n" for stem, label in zip(stems, labels)))
    config = data_config(source=f"imagenet:{root}", train_split="train", eval_split="validation")
    source = ip._load_split(config, "validation")
    assert [p.rsplit("/", 1)[1][:-5] for p in source.items] == stems
    assert source.labels.tolist() == truth and source.class_names == wnids
    info = ip.dataset_info(config)
    assert (info.num_classes, info.num_train, info.num_eval) == (3, 3, 5)


def test_imagenet_without_ground_truth_is_one_clear_error(imagenet_root):
    """Catches a flat validation folder read without labels (every image class 0, say)."""
    root, _, _ = imagenet_root
    with pytest.raises(ValueError, match="val/ is flat but no ground truth was found"):
        imagenet.load_split(str(root), "validation", "train", 10 ** 6)
