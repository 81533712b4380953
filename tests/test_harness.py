"""The training harness under faults and bad input: each fault is injected, and the run must
lose nothing (best step, results, readable checkpoints) and say what happened in one line."""

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

from configs import default
from test_input_pipeline import write_image
from test_training import quick_config
from vgg_jax.core import checkpoints, compilation
from vgg_jax.data import input_pipeline
from vgg_jax.train import configuration, faults, loop, reporting, run_files, steps
from vgg_jax.weights import model_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scripted_validation(monkeypatch, accuracies):
    """Validation returns these top-1 values in turn: bookkeeping is tested, not learning."""
    values = iter(accuracies)

    def validate(*args, **kwargs):
        top1 = next(values)
        return {"val_loss": 1.0 - top1, "val_top1": top1, "val_top5": 1.0, "val_count": 360}
    monkeypatch.setattr(steps, "validate", validate)


def leaves_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# --- best checkpoint and finished runs -------------------------------------------------------

@pytest.mark.slow
def test_best_step_is_kept_through_resumes_and_is_what_loaders_use(tmp_path, monkeypatch):
    # Evaluations at steps 4, 8, ... (eval_every_epochs = 4 steps of 44); the best is step 8.
    scripted_validation(monkeypatch, [0.5, 0.9, 0.6, 0.7, 0.65, 0.6, 0.55])
    config = quick_config(num_steps=12, eval_every_epochs=4 / 44, keep_checkpoints=1, schedule="cosine")
    loop.train_and_evaluate(config, str(tmp_path))
    for num_steps in (20, 28):  # two resumes, each evaluating twice more
        config.train.num_steps = num_steps
        results = loop.train_and_evaluate(config, str(tmp_path))
    root = checkpoints.model_root(tmp_path)
    assert sorted(checkpoints.step_metrics(root)) == [8, 28]  # latest 1 and the best survive
    assert checkpoints.default_step(root) == 8
    assert model_directory.load_variables(tmp_path)[2] == 8
    assert results["best_step"] == 8 and results["best_val_top1"] == 0.9
    assert results["val_step"] == 28 and results["val_top1"] == 0.55


@pytest.mark.slow
def test_a_finished_run_is_left_alone_and_continues_when_the_budget_grows(tmp_path, caplog):
    config = quick_config(num_steps=6, eval_every_epochs=100)
    first = loop.train_and_evaluate(config, str(tmp_path))
    results_file = tmp_path / "results.json"
    before = (results_file.read_text(), os.stat(results_file).st_mtime_ns)
    with caplog.at_level(logging.INFO, logger="vgg_jax.train"):
        again = loop.train_and_evaluate(config, str(tmp_path))
    assert "has finished (step 6 of 6)" in caplog.text
    assert again == first and (results_file.read_text(), os.stat(results_file).st_mtime_ns) == before
    config.train.num_steps = 8
    assert loop.train_and_evaluate(config, str(tmp_path))["step"] == 8
    assert json.loads(results_file.read_text())["step"] == 8


# --- the end of a run: signals, results.json --------------------------------------------------

class SlowWrite:
    """A checkpoint manager whose pending write takes `seconds` to finish."""
    directory = "/runs/default/checkpoints"

    def __init__(self, seconds):
        self.seconds = seconds

    def latest_step(self):
        return 440

    def wait_until_finished(self):
        time.sleep(self.seconds)


def test_a_slow_checkpoint_write_is_announced_while_it_is_awaited(monkeypatch, caplog):
    """Catches a silent pause after the final validation line: the final step's fsyncs take
    tens of seconds on a slow or busy disk. A write that ends in time says nothing."""
    monkeypatch.setattr(checkpoints, "ANNOUNCE_AFTER_S", 0.05)
    with caplog.at_level(logging.INFO, logger="vgg_jax.checkpoints"):
        checkpoints.finish_saving(SlowWrite(0.0))
        time.sleep(0.1)  # past the announcement's time: a cancelled one stays silent
        assert "waiting" not in caplog.text
        checkpoints.finish_saving(SlowWrite(0.3))
    assert "waiting for the checkpoint of step 440 to finish writing to /runs/default/checkpoints" in caplog.text


@pytest.mark.parametrize("moment", ["finish_saving", "write_results"])
def test_a_sigterm_after_the_last_step_still_leaves_results(moment, tmp_path, monkeypatch):
    """Catches signal handlers that are gone once the loop returns (issue 26): a SIGTERM while
    the final save was awaited or results.json written killed the run without results.json.
    The test's own handler stands for the default one (death) and records the signal if it gets it."""
    module = checkpoints if moment == "finish_saving" else run_files
    original = getattr(module, moment)

    def signalled_then(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)
    monkeypatch.setattr(module, moment, signalled_then)
    unhandled = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: unhandled.append(signum))
    try:
        results = loop.train_and_evaluate(quick_config(num_steps=4, eval_every_epochs=100), str(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not unhandled
    assert results["step"] == 4 and json.loads((tmp_path / "results.json").read_text()) == results


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_finished_workdir_without_readable_results_rebuilds_them(damage, tmp_path, monkeypatch, caplog):
    """Catches a finished workdir whose results.json was lost (a kill -9 between the final save
    and results.json) answering `done: {}` for good, a garbage results.json ending in a traceback,
    and the steps such a kill leaves: orbax deletes old steps only after committing the newest,
    here steps 2 and 6 of a run saved with a larger keep_checkpoints."""
    scripted_validation(monkeypatch, [0.9, 0.5, 0.6])  # evaluations at steps 4, 8, 12: the best is 4
    config = quick_config(num_steps=12, eval_every_epochs=4 / 44, checkpoint_every_steps=2, keep_checkpoints=6)
    first = loop.train_and_evaluate(config, str(tmp_path))
    results_file = tmp_path / "results.json"
    if damage == "missing":
        results_file.unlink()
    else:
        results_file.write_text('{"step": 1')
    config.train.keep_checkpoints = 3
    with caplog.at_level(logging.INFO, logger="vgg_jax.train"):
        rebuilt = loop.train_and_evaluate(config, str(tmp_path))
    assert rebuilt == {**first, "skipped_files": None} == json.loads(results_file.read_text())
    assert f"cannot read {results_file}" in caplog.text and "rebuilt it from the checkpoints' stored metrics" in caplog.text
    assert sorted(checkpoints.step_metrics(checkpoints.model_root(tmp_path))) == [4, 8, 10, 12]


# --- one run per workdir ---------------------------------------------------------------------

def test_a_planted_lock_file_is_read_bounded_and_shown_printable(tmp_path):
    """Catches the holder line read whole (a planted 64 MB train.lock read into the message) or
    shown as it is (terminal escapes, invalid UTF-8 as a UnicodeDecodeError traceback)."""
    lock = tmp_path / "train.lock"
    lock.write_bytes(b"\x1b[2Jhost evil\xff\xfe " + b"x" * (64 << 20))
    with open(lock, "rb") as held:  # another open file description: flock conflicts as another process's would
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(run_files.WorkdirInUse) as error:
            with run_files.workdir_lock(str(tmp_path)):
                pass
    message = str(error.value)
    assert "host evil" in message and len(message) < 400 + len(str(tmp_path)) * 2
    assert message.isprintable()
    assert lock.stat().st_size > 64 << 20  # the holder's file is left as it is


HOLD_LOCK = ("import sys, time; from vgg_jax.train import run_files\nwith run_files.workdir_lock(sys.argv[1]):\n"
             "    print('locked', flush=True); time.sleep(600)")


@pytest.mark.slow
def test_a_second_run_on_a_workdir_stops_at_once_and_a_killed_runs_lock_does_not_block(tmp_path):
    """Catches two runs training in one workdir (issue 26: duplicate curves, or one dying on the
    other's files), a refusal that does not name the other run's host and pid or is not one
    line, and a lock that outlives its holder (kill -9) and blocks the workdir for good."""
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        completed = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
                                    "--config.model.width=0.125", "--config.train.num_steps=1"],
                                   cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()  # SIGKILL: no chance to release the lock
        holder.wait()
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last == (f"error: {workdir} is in use by another training run (host {socket.gethostname()} pid "
                    f"{holder.pid}, lock {workdir / 'train.lock'}); wait for it to end or give another --workdir")
    assert os.listdir(workdir) == ["train.lock"]
    assert loop.train_and_evaluate(quick_config(num_steps=1, eval_every_epochs=100), str(workdir))["step"] == 1


# --- divergence ------------------------------------------------------------------------------

def test_the_divergence_rule():
    """Catches a finite blow-up passing unnoticed (issue 26: a loss of 2.6e6 saved as the resume
    point), a rule so tight that ordinary noise stops a run, and NaN/Inf passing."""
    uniform = np.log(10)  # the loss of a uniform guess over 10 classes: the floor of the level
    assert faults.divergence([2.2, 2.9, 10 * uniform - 0.01], [], 10) is None
    assert faults.divergence([2.2, 10 * uniform + 0.01], [], 10) == (1, f"over 10x its recent level {uniform:.4g}")
    assert faults.divergence([0.05, 20.0], [0.01, 0.02, 0.01], 10) is None  # from a low level: the floor
    # Before the first progress line the level is the first loss (a new head on pretrained
    # features, 2 classes: 7.8 is no divergence, and 10x it is).
    assert faults.divergence([7.8, 77.0], [], 2) is None
    assert faults.divergence([7.8, 79.0], [], 2) == (1, "over 10x its recent level 7.8")
    assert faults.divergence([39.0], [5.0, 4.0, 3.0], 10) is None  # the median of the recent lines, 4
    assert faults.divergence([41.0], [5.0, 4.0, 3.0], 10) == (0, "over 10x its recent level 4")
    assert faults.divergence([1.0, float("nan")], [1.0], 10) == (1, "not finite")
    assert faults.divergence([float("inf")], [], 10) == (0, "not finite")


def test_a_diverging_resume_saves_nothing_and_names_the_newest_good_checkpoint(finished_run, tmp_path):
    """Catches a blown-up step saved as the resume point (issue 26: learning rate 1000 on resume),
    a message that does not name the newest good checkpoint, and config.json taking the
    diverged run's settings."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run[0], workdir)
    config = quick_config(num_steps=30, checkpoint_every_steps=5, eval_every_epochs=100, learning_rate=1000.0)
    with pytest.raises(faults.Diverged) as raised:
        loop.train_and_evaluate(config, workdir)
    root = checkpoints.model_root(workdir)
    assert str(raised.value).endswith(f"stopped without saving it: the newest good checkpoint is step 10 in {root}; "
                                      "resume from it with a lower learning rate")
    assert sorted(checkpoints.step_metrics(root)) == [5, 10]
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["train"]["learning_rate"] == 0.05


# --- damaged checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 10-step run saved at steps 5 and 10, and its final variables."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    loop.train_and_evaluate(quick_config(num_steps=10, checkpoint_every_steps=5, eval_every_epochs=100), workdir)
    return workdir, model_directory.load_variables(workdir, 10)[0]


def largest_file(directory):
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def overwrite(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


DAMAGE = {
    "truncated array data": lambda step: truncate(largest_file(os.path.join(step, "state"))),
    "overwritten array data": lambda step: overwrite(largest_file(os.path.join(step, "state"))),
    "emptied meta": lambda step: open(os.path.join(step, "meta", "metadata"), "w").close(),
    "missing state": lambda step: shutil.rmtree(os.path.join(step, "state")),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_step_falls_back_to_the_newest_readable_one(damage, finished_run, tmp_path, caplog):
    source, final_variables = finished_run
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    os.remove(os.path.join(workdir, "results.json"))  # as if killed before finishing
    root = checkpoints.model_root(workdir)
    DAMAGE[damage](os.path.join(root, "10"))
    with caplog.at_level(logging.INFO, logger="vgg_jax.train"):
        results = loop.train_and_evaluate(
            quick_config(num_steps=10, checkpoint_every_steps=5, eval_every_epochs=100), workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "vgg_jax.train"]
    assert len(warnings) == 1 and "step 10" in warnings[0] and "damaged-10" in warnings[0], warnings
    assert "resumed from" in caplog.text and "at step 5" in caplog.text
    assert results["step"] == 10 and os.path.isdir(os.path.join(root, "damaged-10"))
    leaves_equal(model_directory.load_variables(workdir, 10)[0], final_variables)  # steps 6-10 replayed


def test_loading_a_damaged_step_is_one_clear_error(finished_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run[0], workdir)
    state = os.path.join(checkpoints.model_root(workdir), "10", "state")
    for directory, _, names in os.walk(state):
        for name in names:
            truncate(os.path.join(directory, name))
    with pytest.raises(checkpoints.UnreadableCheckpoint, match="step 10"):
        model_directory.load_variables(workdir, 10)


# --- a full disk -----------------------------------------------------------------------------

@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 24 MB tmpfs (room for a few checkpoints of the quick model) where mounting is allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"needs the right to mount (root, or a container with CAP_SYS_ADMIN) for a "
                    f"small tmpfs to fill: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory, leave=0):
    """Writes a file until the filesystem is full, then gives `leave` bytes back."""
    with open(os.path.join(directory, f"filler-{uuid.uuid4().hex}"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError as error:
            assert error.errno == errno.ENOSPC
        f.truncate(max(0, os.fstat(f.fileno()).st_size - leave))


def fill_at_save(monkeypatch, tiny_filesystem, save_number, room):
    """Fills the disk as the `save_number`-th save is called, leaving `room(state)` bytes."""
    saves = []
    original_save = checkpoints.save

    def save_then_fill(manager, step, state, *args, **kwargs):
        saves.append(step)
        if len(saves) == save_number:
            checkpoints.finish_saving(manager)  # the saves before it have committed
            fill(tiny_filesystem, leave=room(state))
        original_save(manager, step, state, *args, **kwargs)
    monkeypatch.setattr(checkpoints, "save", save_then_fill)


def full_disk_error(workdir):
    config = quick_config(num_steps=15, checkpoint_every_steps=5, eval_every_epochs=100)
    with pytest.raises(checkpoints.CheckpointSaveError) as raised:
        loop.train_and_evaluate(config, workdir)
    message = str(raised.value)
    assert "[Errno 28] No space left on device" in message and workdir in message and "\n" not in message
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    return message


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_the_previous_checkpoint_stays(tiny_filesystem, monkeypatch):
    """Catches a message that names no readable step or the wrong one, and a failed save that
    damages the committed step before it: step 5 commits, then the disk fills before step 10."""
    workdir = str(tiny_filesystem / "run")
    fill_at_save(monkeypatch, tiny_filesystem, save_number=2, room=lambda state: 0)
    assert full_disk_error(workdir).endswith("the newest readable step there is 5")
    assert model_directory.load_variables(workdir)[2] == 5  # intact, and what a resume would use


def test_a_disk_that_fills_while_the_first_save_is_in_flight_says_no_step_is_readable(tiny_filesystem, monkeypatch):
    """Catches a message claiming earlier checkpoints survive when the save that failed was the
    only one (the flaky run of issue 19): step 5's save starts with room for a quarter of the
    parameters, so it writes its small files and then runs out of space part-way."""
    workdir = str(tiny_filesystem / "run")

    def quarter_of_the_parameters(state):
        return sum(leaf.nbytes for leaf in jax.tree.leaves(state.params)) // 4
    fill_at_save(monkeypatch, tiny_filesystem, save_number=1, room=quarter_of_the_parameters)
    assert full_disk_error(workdir).endswith("no step there is readable")
    with pytest.raises(checkpoints.CheckpointError, match="holds no checkpoint steps"):
        model_directory.load_variables(workdir)


@pytest.fixture
def read_only_view(tmp_path):
    """A read-only bind mount of tmp_path/rw at tmp_path/ro, where mounting is allowed."""
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    mounted = subprocess.run(f"mount --bind {tmp_path / 'rw'} {tmp_path / 'ro'} && "
                             f"mount -o remount,ro,bind {tmp_path / 'ro'}", shell=True, capture_output=True)
    if mounted.returncode:
        pytest.skip(f"needs the right to mount (root, or a container with CAP_SYS_ADMIN) for a "
                    f"read-only bind mount: {mounted.stderr.decode().strip()}")
    yield tmp_path / "rw", tmp_path / "ro"
    subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=True)


@pytest.mark.slow
def test_a_read_only_workdir_stops_with_an_os_error_naming_the_file(read_only_view):
    writable, read_only = read_only_view
    config = quick_config(num_steps=4, eval_every_epochs=100)
    loop.train_and_evaluate(config, str(writable / "run"))
    os.remove(writable / "run" / "results.json")
    config.train.num_steps = 8
    with pytest.raises(OSError) as raised:
        loop.train_and_evaluate(config, str(read_only / "run"))
    assert raised.value.errno == errno.EROFS and str(read_only / "run") in str(raised.value)
    assert isinstance(raised.value, loop.USER_ERRORS)  # train.py prints it as one error line
    assert model_directory.load_variables(read_only / "run")[2] == 4


# --- config validation -----------------------------------------------------------------------

@pytest.mark.parametrize("section, field, value, expected", [
    ("train", "learning_rate", -1.0, "train.learning_rate=-1.0 must be a positive number"),
    ("train", "batch_size", 0, "train.batch_size=0 must be a positive integer"),
    ("train", "batch_size", 30, "train.batch_size=30 must be a multiple of devices x train.accum_steps (4)"),
    ("train", "eval_batch_size", 6, "train.eval_batch_size=6 must be a multiple of devices (4)"),
    ("train", "schedule", "linear", "train.schedule='linear' is unknown"),
    ("train", "max_lr_drops", -1, "train.max_lr_drops=-1 must be a count >= 0"),
    ("train", "momentum", 1.0, "train.momentum=1.0 must be in [0, 1)"),  # diverges: velocity never decays
    ("train", "momentum", -0.5, "train.momentum=-0.5 must be in [0, 1)"),
    ("model", "arch", "vgg17", "model.arch='vgg17' is unknown; choose one of vgg11"),
    ("model", "dropout_rate", 1.0, "model.dropout_rate=1.0 must be in [0, 1)"),
    ("model", "image_size", 48, "model.image_size=48 must be a multiple of 32"),
    ("data", "source", "folder:/no/such/folder", "no folder at /no/such/folder"),
    ("data", "source", "no_such_dataset", "is neither 'digits', 'folder:PATH', 'imagenet:PATH' nor a"),
    ("data", "scale_min", 16, "data.crop_size (32) exceeds data.scale_min (16)"),
])
def test_each_bad_config_value_is_named(section, field, value, expected):
    """Catches a config check removed or loosened (e.g. momentum's): the bad value would reach
    the optimiser and the run diverge or silently train with it."""
    config = quick_config()
    config[section][field] = value
    with pytest.raises(configuration.ConfigError, match="invalid config") as raised:
        configuration.validate(config, device_count=4)
    assert expected in str(raised.value)


def test_a_renamed_field_is_refused_by_its_old_name_and_old_run_files_read_under_the_new(tmp_path):
    """Catches a renamed config field (data.shuffle_buffer -> data.shuffle_window) that an old
    config file still sets being silently ignored (the run would use the default window), and an
    earlier run's config.json that eval.py could no longer read (a renamed field, or one added
    since: data.max_pixels, data.workers)."""
    config = quick_config()
    config.data.shuffle_buffer = 64
    with pytest.raises(configuration.ConfigError, match=r"data.shuffle_buffer was renamed data.shuffle_window"):
        configuration.validate(config, device_count=4)
    old = json.loads(quick_config().to_json_best_effort())
    old["data"]["shuffle_buffer"] = old["data"].pop("shuffle_window") + 1
    del old["data"]["max_pixels"], old["data"]["workers"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    data = run_files.read_run_config(str(tmp_path))["data"]
    assert data["shuffle_window"] == old["data"]["shuffle_buffer"] and "shuffle_buffer" not in data
    assert (data["max_pixels"], data["workers"]) == (40_000_000, 0)


def test_the_shipped_configs_are_valid(tmp_path):
    from configs import cats_vs_dogs, vgg16, vgg19_bn
    imagenet = [vgg16.get_config("256-512"), vgg19_bn.get_config("384")]
    for config in imagenet:  # their source is a path (imagenet:~/imagenet): one that exists here
        assert config.data.source.startswith("imagenet:")
        config.data.source = f"imagenet:{tmp_path}"
    for config in (default.get_config(), *imagenet, cats_vs_dogs.get_config("finetune")):
        configuration.validate(config, device_count=8)


@pytest.mark.slow
def test_train_cli_reports_a_bad_value_in_one_line_before_any_work(tmp_path):
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={tmp_path}",
         "--config.train.learning_rate=-1", "--config.train.batch_size=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: invalid config: ") and "train.learning_rate=-1" in last and "train.batch_size=0" in last
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("content", ["", '{"model": {"arch": "vgg11_bn", "wid'])
def test_an_unreadable_config_json_of_an_unfinished_run_is_one_error_naming_it(content, finished_run, tmp_path):
    """Catches a traceback (issue 26: ValueError) for an emptied or truncated config.json."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run[0], workdir)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(run_files.RunFileError) as raised:
        loop.train_and_evaluate(quick_config(num_steps=12, checkpoint_every_steps=5, eval_every_epochs=100), workdir)
    assert isinstance(raised.value, loop.USER_ERRORS) and "\n" not in str(raised.value)
    assert str(raised.value).startswith(f"cannot read {path}: ") and "restore it, or delete it" in str(raised.value)


@pytest.mark.parametrize("fault", ["empty", "unreadable"])
def test_a_class_folder_without_images_is_one_error_naming_it(fault, tmp_path):
    """Catches a traceback for an empty class folder (issue 26: ValueError) and a class whose
    every file is unreadable training with zero examples and only warnings."""
    for name in ("cat", "dog", "owl"):
        (tmp_path / name).mkdir()
    for name in ("cat", "dog"):
        write_image(tmp_path / name / "0.png", (200, 30, 30))
    if fault == "unreadable":
        for i in range(3):
            (tmp_path / "owl" / f"{i}.jpg").write_text("not an image")
    config = quick_config(num_steps=1)
    config.data.update(source=f"folder:{tmp_path}", val_fraction=0.5)
    with pytest.raises(input_pipeline.DatasetError) as raised:
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert isinstance(raised.value, loop.USER_ERRORS)
    expected = "is empty" if fault == "empty" else "none of its 3 files is an image"
    assert str(raised.value).startswith(f"class folder {tmp_path / 'owl'}") and expected in str(raised.value)


# --- resuming with another config ------------------------------------------------------------

@pytest.mark.slow
def test_a_resume_refuses_a_new_batch_size_and_applies_a_new_learning_rate(tmp_path, caplog):
    config = quick_config(num_steps=4, eval_every_epochs=100, schedule="plateau")
    loop.train_and_evaluate(config, str(tmp_path))
    config.train.num_steps = 8
    config.train.batch_size = 64
    with pytest.raises(checkpoints.CheckpointError, match="train.batch_size 32 -> 64"):
        loop.train_and_evaluate(config, str(tmp_path))
    config.train.batch_size = 32
    config.train.learning_rate = 0.01
    with caplog.at_level(logging.WARNING, logger="vgg_jax.train"):
        results = loop.train_and_evaluate(config, str(tmp_path))
    assert "train.learning_rate changed from 0.05 to 0.01" in caplog.text
    assert results["learning_rate"] == pytest.approx(0.01)


# --- small pieces ----------------------------------------------------------------------------

def test_images_per_second_leave_out_paused_time(monkeypatch):
    """Catches evaluation or checkpoint time counted in the training rate: 3 steps of 32 images
    over 5 s of which 1 s paused is 96 / 4 = 24 img/s (closed form, on a scripted clock)."""
    clock = iter([0.0, 1.0, 2.0, 5.0])
    monkeypatch.setattr(reporting.time, "monotonic", lambda: next(clock))
    rate = reporting.Throughput(step=0, batch_size=32)
    with rate.paused():
        pass
    assert rate.images_per_second(3) == pytest.approx(24.0)


def test_the_progress_rate_counts_the_global_batch(tmp_path, monkeypatch):
    """Catches img/s computed from the per-device batch (train.batch_size / devices): over the
    4 CPU devices the tests run on, the progress line would read a quarter of the real rate."""
    batch_sizes = []

    class Recording(reporting.Throughput):
        def __init__(self, step, batch_size):
            batch_sizes.append(batch_size)
            super().__init__(step, batch_size)
    monkeypatch.setattr(reporting, "Throughput", Recording)
    config = quick_config(num_steps=1, eval_every_epochs=100)
    loop.train_and_evaluate(config, str(tmp_path))
    assert jax.device_count() == 4 and batch_sizes == [config.train.batch_size]


def test_eta_shows_days():
    assert reporting.format_duration(3 * 86_400 + 4 * 3600 + 5 * 60 + 6) == "3d 04:05:06"
    assert reporting.format_duration(59.6) == "00:01:00"


def test_compiler_option_is_dropped_with_one_warning_when_jaxlib_rejects_it(monkeypatch, caplog):
    compilation.compiler_options.cache_clear()
    monkeypatch.setattr(compilation, "COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
    try:
        with caplog.at_level(logging.WARNING, logger="vgg_jax"):
            assert compilation.compiler_options("cpu") == {}
            assert compilation.compiler_options("cpu") == {}  # checked once
            assert float(compilation.jit(lambda x: x * 2)(3.0)) == 6.0
        assert caplog.text.count("this jaxlib rejects") == 1
        assert compilation.compiler_options("gpu") == {}
    finally:
        compilation.compiler_options.cache_clear()
