"""The core without TensorFlow: imports, the synthetic source, TensorBoard events, the device
check's dry run (train.py: train, evaluate, save, SIGTERM, resume; eval.py) with TF blocked."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic as synthetic_config
from vgg_jax.core import devices
from vgg_jax.data import input_pipeline, synthetic
from vgg_jax.train import configuration
from vgg_jax.train.tensorboard_writer import ScalarWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ("vgg_jax", "vgg_jax.core.models", "vgg_jax.core.checkpoints", "vgg_jax.weights", "vgg_jax.train.loop",
        "vgg_jax.evaluate.ensemble", "vgg_jax.features", "vgg_jax.lpips", "vgg_jax.nnx", "vgg_jax.data.input_pipeline",
        "vgg_jax.data.preprocessing", "vgg_jax.train.configuration", "vgg_jax.data.synthetic", "vgg_jax.data.decode",
        "vgg_jax.data.transforms", "vgg_jax.data.sources", "vgg_jax.data.folders", "vgg_jax.data.imagenet",
        "vgg_jax.data.pipeline", "vgg_jax.data.tfds")


def run_without_tensorflow(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "benchmarks.without_tensorflow", *args], cwd=ROOT,
                          capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_the_core_imports_without_tensorflow():
    """Catches a module-level `import tensorflow` (or clu, tfds) in the model, training,
    evaluation, features, LPIPS, NNX, weights or the pipeline's modules."""
    code = "from benchmarks import without_tensorflow; without_tensorflow.block(); " + "; ".join(
        f"import {module}" for module in CORE)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow
def test_a_tfds_source_without_tensorflow_is_one_error_line(tmp_path):
    """Catches a traceback (or a silent fallback) where a tensorflow-datasets source is asked for
    without TensorFlow: train.py must end with one `error:` line naming the extra."""
    run = run_without_tensorflow("train.py", "--workdir", str(tmp_path), "--config.data.source=tf_flowers")
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[-1].startswith("error: invalid config: data.source='tf_flowers'") and ".[tfds]" in lines[-1], lines[-3:]


READ_WITHOUT_TENSORFLOW = """
import sys
from PIL import Image
from configs.default import get_config
from vgg_jax.data import input_pipeline as ip
from vgg_jax.train import configuration
root = sys.argv[1]
for name in ("a", "b"):
    for split in ("train", "val"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(f"{root}/{split}/n0000000{name}/0.JPEG")
for source in ("digits", f"folder:{root}", f"imagenet:{root}"):
    config = get_config().data
    config.update(source=source, eval_split="val" if ":" in source else "test")
    assert not configuration.data_problems(config), configuration.data_problems(config)
    batch = next(ip.train_batches(config, global_batch_size=2, seed=0, process_index=0, process_count=1))
    val = next(ip.eval_batches(config, global_batch_size=2, process_index=0, process_count=1))
    assert batch["image"].shape == val["image"].shape == (2, 32, 32, 3) and val["mask"].all(), source
from vgg_jax.weights import model_directory  # spec.preprocess, what predict and the README's examples call
spec = model_directory.ModelSpec("vgg11", {"num_classes": 2, "width": 0.125, "image_size": 32})
assert spec.preprocess(f"{root}/train/n0000000a/0.JPEG", 48).shape == (1, 48, 64, 3)
print("read without tensorflow")
"""


@pytest.mark.slow
def test_digits_folders_and_imagenet_folders_read_without_tensorflow(tmp_path):
    """Catches a TensorFlow import (or a tf.data fallback) on the default data path: the digits,
    a folder and an ImageNet layout (train/ and val/ class folders) give batches, and
    spec.preprocess a model input, with TF blocked."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / f"n0000000{name}").mkdir(parents=True)
    code = "from benchmarks import without_tensorflow; without_tensorflow.block()\n" + READ_WITHOUT_TENSORFLOW
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "read without tensorflow" in run.stdout, run.stderr[-2000:]


@pytest.mark.slow
def test_the_dry_run_trains_resumes_and_evaluates_without_tensorflow(tmp_path):
    """The device check's --cpu-dry-run (TensorFlow blocked): catches any section that fails or
    overruns, and in (d) a train.py run on the synthetic source that does not stop and save on
    SIGTERM, does not resume from that step, or whose workdir eval.py cannot evaluate."""
    run = subprocess.run(["bash", "benchmarks/device_check.sh", "--cpu-dry-run"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OUT": str(tmp_path)}, timeout=2100)  # > the sections budgets
    assert run.returncode == 0, run.stderr[-3000:]
    report = (tmp_path / "device_report.md").read_text()
    assert "FAILED" not in report and "budget" not in report, report
    for section in "abcde":
        assert f"## ({section})" in report
    assert "SIGTERM received: saved step" in report and "resumed from" in report, report
    assert "results.json: step 30," in report and "interrupted None" in report, report
    assert "eval.py --workdir (100 images, Q=36): exit 0" in report and "single-crop" in report, report
    assert "tests collected" in report and "exit 0" in report.split("## (e)")[1], report


def synthetic_data(**data):
    config = synthetic_config.get_config()
    config.data.update(data)
    return config.data


def test_a_resumed_synthetic_stream_repeats_the_uninterrupted_one():
    """Catches train examples keyed on anything but (seed, process, position): the batch at
    step 3 must be the same whether the stream starts at 0 or resumes at 3."""
    data = synthetic_data()
    kwargs = dict(global_batch_size=8, process_index=0, process_count=1)
    fresh = input_pipeline.train_batches(data, seed=0, **kwargs)
    for _ in range(3):
        next(fresh)
    expected = next(fresh)
    resumed = next(input_pipeline.train_batches(data, seed=0, start_step=3, **kwargs))
    np.testing.assert_array_equal(resumed["image"], expected["image"])
    np.testing.assert_array_equal(resumed["label"], expected["label"])
    other_seed = next(input_pipeline.train_batches(data, seed=1, start_step=3, **kwargs))
    other_process = next(input_pipeline.train_batches(data, seed=0, start_step=3, **{**kwargs, "process_index": 1,
                                                                                     "process_count": 2}))
    assert not np.array_equal(other_seed["image"], expected["image"])
    assert not np.array_equal(other_process["image"][:4], expected["image"][:4])


def test_a_crop_is_the_window_of_the_whole_picture(monkeypatch):
    """Catches a crop rendered at the wrong place or scale (offset divided by the crop, not the
    scale; x and y swapped): without noise, a 32 x 32 view at (5, 11) of the picture at S = 48
    equals that window of the whole picture at 48."""
    monkeypatch.setattr(synthetic, "NOISE", 0.0)
    for label in range(3):
        whole = synthetic.render(10, synthetic.View(label, 48, 0, 0, 48, (0,)))
        crop = synthetic.render(10, synthetic.View(label, 48, 5, 11, 32, (1,)))
        np.testing.assert_array_equal(crop, whole[5:37, 11:43])
    assert not np.array_equal(whole, whole.transpose(1, 0, 2))  # a transposition would show


def test_a_nearest_class_mean_separates_the_synthetic_classes():
    """Catches labels not tied to the pictures (a label drawn apart from the class rendered, or
    classes that look alike): class means of 400 train crops classify the 500 validation
    images far above chance (0.1), so a network has something to learn."""
    data = synthetic_data()
    train = next(input_pipeline.train_batches(data, global_batch_size=400, seed=0,
                                              process_index=0, process_count=1))
    means = np.stack([train["image"][train["label"] == c].mean(0) for c in range(10)])
    val = next(input_pipeline.eval_batches(data, global_batch_size=500,
                                           process_index=0, process_count=1))
    distances = ((val["image"][:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert val["mask"].all() and len(val["label"]) == 500
    assert np.mean(distances.argmin(1) == val["label"]) > 0.9
    assert np.array_equal(np.bincount(val["label"]), np.full(10, 50))


def test_the_validation_split_is_dealt_once_over_processes_with_masked_padding():
    """Catches a process skipping or repeating validation images, or padding counted as real."""
    data = synthetic_data(source="synthetic:3")  # 150 images
    seen = []
    for index in range(4):
        batches = list(input_pipeline.eval_batches(data, global_batch_size=64,
                                                   process_index=index, process_count=4))
        assert len(batches) == 3  # ceil(ceil(150 / 4) / 16) batches for every process
        seen += [label for batch in batches for label in batch["label"][batch["mask"]]]
    assert np.array_equal(np.bincount(seen), [50, 50, 50])


@pytest.mark.parametrize("source, problem", [("synthetic:1", "CLASSES >= 2"), ("synthetic:ten", "CLASSES >= 2"),
                                             ("synthetic", None), ("synthetic:100", None)])
def test_synthetic_source_names_are_checked(source, problem):
    """Catches a malformed class count accepted (or a valid one refused) by the config check."""
    problems = configuration.source_problems(source)
    assert (problem in problems[0]) if problem else problems == []


def read_scalars(directory, name=None):
    """(step, tag, plugin, value) of the scalars in `name`, default the directory's one event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    if name is None:
        (name,) = [f for f in os.listdir(directory) if f.startswith("events.out.tfevents")]
    rows = []
    for event in EventFileLoader(os.path.join(directory, name)).Load():
        for value in event.summary.value:
            rows.append((event.step, value.tag, value.metadata.plugin_data.plugin_name,
                         tensor_util.make_ndarray(value.tensor)))
    return rows


def test_tensorboard_scalars_are_what_tf_summary_writes(tmp_path):
    """Catches events TensorBoard would show differently from TensorFlow's own writer (which
    clu used before): another tag, a float64 or non-scalar tensor, a missing scalars plugin."""
    tf = pytest.importorskip("tensorflow")
    scalars = {5: {"train_loss": 2.25, "learning_rate": 0.01}, 10: {"val_top1": 0.875, "val_count": 360}}
    ours = ScalarWriter(str(tmp_path / "ours"))
    for step, values in scalars.items():
        ours.write_scalars(step, values)
    ours.close()
    with tf.summary.create_file_writer(str(tmp_path / "tf")).as_default():
        for step, values in scalars.items():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
    tf.summary.flush()
    theirs = read_scalars(tmp_path / "tf")
    assert len(theirs) == 4
    for (step, tag, plugin, value), (t_step, t_tag, t_plugin, t_value) in zip(read_scalars(tmp_path / "ours"), theirs):
        assert (step, tag, plugin, value.dtype, value.shape) == (t_step, t_tag, t_plugin, t_value.dtype, t_value.shape)
        assert value == t_value


def test_tensorboard_events_are_written_without_importing_tensorflow_where_it_is_installed(tmp_path):
    """Catches the event file opened through tensorboard.compat.tf (EventFileWriter's
    tf.io.gfile), which imports all of an installed TensorFlow: seconds at every run's start,
    its oneDNN banner, and a slower exit. Also catches a second writer of the same second
    overwriting the first's file."""
    pytest.importorskip("tensorflow")
    code = ("import sys; from vgg_jax.train.tensorboard_writer import ScalarWriter\n"
            "for step in (1, 2):\n    w = ScalarWriter(sys.argv[1]); w.write_scalars(step, {'loss': 0.5}); w.close()\n"
            "print('tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stdout + run.stderr[-2000:]
    steps = sorted(step for name in os.listdir(tmp_path) for step, *_ in read_scalars(tmp_path, name))
    assert steps == [1, 2]



@pytest.mark.parametrize("gpu_on_host", [True, False])
def test_a_cpu_jax_on_a_gpu_host_warns_once_with_the_install_line(gpu_on_host, monkeypatch, caplog):
    """Catches a GPU host training on its CPU without a word (a CPU-only jax installed there),
    or the warning shown on a host without a GPU."""
    monkeypatch.setattr(devices, "host_has_nvidia_gpu", lambda: gpu_on_host)
    with caplog.at_level(logging.INFO, logger="vgg_jax"):
        devices.log_devices()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "backend cpu: 4 devices (4 x cpu), 1 process" in caplog.text  # conftest's four CPU devices
    assert len(warnings) == (1 if gpu_on_host else 0)
    assert not gpu_on_host or 'jax[cuda13]' in warnings[0]
