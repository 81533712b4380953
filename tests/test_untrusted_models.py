"""Model directories and the pretrained cache as untrusted input (issue 25): every crafted
directory is refused in one line naming the directory, the field and the reason before any array
is read, and no writer of a directory deletes anything but an earlier output of its kind."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import vgg_jax
from random_nets import he_normal_variables
from test_weights import random_features_file
from vgg_jax import export, predict
from vgg_jax.core import checkpoints
from vgg_jax.core.normalization import PAPER, TORCHVISION
from vgg_jax.weights import cli, download, model_directory, registry, spec_fields, WeightsError

KWARGS = {"num_classes": 10, "width": 1 / 16, "image_size": 32}
NAMES = [f"class {i}" for i in range(10)]
SPEC = model_directory.ModelSpec("vgg11", KWARGS, NAMES, PAPER)


@pytest.fixture(scope="module")
def variables():
    return he_normal_variables(vgg_jax.vgg11(**KWARGS))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, variables):
    """A valid tiny model directory, as save_model writes it (orbax's OCDBT layout)."""
    path = tmp_path_factory.mktemp("saved") / "model"
    model_directory.save_model(path, variables, SPEC)
    return path


def copy_of(source, tmp_path):
    return shutil.copytree(source, tmp_path / "copy")


def meta_path(root):
    return os.path.join(root, "0", "meta", "metadata")


def edit_meta(root, change):
    with open(meta_path(root)) as f:
        meta = json.load(f)
    change(meta)
    with open(meta_path(root), "w") as f:
        json.dump(meta, f)


def save_as_zarr(root, variables, meta):
    """A model directory with one zarr array per folder (orbax without OCDBT): its .zarray files
    are plain JSON that anyone can edit."""
    handlers = {checkpoints.STATE: ocp.PyTreeCheckpointHandler(use_ocdbt=False),
                checkpoints.META: ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(root, options=options, item_handlers=handlers) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.PyTreeSave(variables), meta=ocp.args.JsonSave(meta)))
    return root


def edit_zarray(root, name, **fields):
    path = os.path.join(root, "0", "state", name, ".zarray")
    with open(path) as f:
        values = json.load(f)
    with open(path, "w") as f:
        json.dump({**values, **fields}, f)


@pytest.fixture
def no_restore(monkeypatch):
    """Fails the test if any array is restored."""
    def restore(*args, **kwargs):
        raise AssertionError("an array was restored before the directory was refused")
    monkeypatch.setattr(checkpoints, "read_state", restore)


def with_leaf(variables, layer, leaf, value):
    params = {**variables["params"], layer: {**variables["params"].get(layer, {}), leaf: value}}
    return {**variables, "params": params}


STORED = {  # name -> (variables change, .zarray edits {array folder: fields}, message)
    "declared shape [2**28]": (None, {"params.fc8.bias": {"shape": [2 ** 28], "chunks": [2 ** 28], "fill_value": 0.0}},
                               r"params/fc8/bias: stored shape \(268435456,\), the model's \(10,\)"),
    "an extra layer": (lambda v: with_leaf(v, "evil", "kernel", np.zeros(4, np.float32)),
                       {"params.evil.kernel": {"shape": [2 ** 28], "chunks": [2 ** 28], "fill_value": 0.0}},
                       r"'params/evil/kernel': not in this model"),
    "chunks larger than the array": (None, {"params.fc8.bias": {"chunks": [2 ** 28]}},
                                     r"params/fc8/bias: chunks \(268435456,\) larger than its shape \(10,\)"),
    "a complex64 parameter": (lambda v: with_leaf(v, "fc8", "bias", np.zeros(10, np.complex64)), {},
                              r"params/fc8/bias: stored as complex64; parameters must be one of float16, "),
    "an int32 parameter": (lambda v: with_leaf(v, "fc8", "bias", np.zeros(10, np.int32)), {},
                           r"params/fc8/bias: stored as int32"),
    "a missing layer": (lambda v: {"params": {k: w for k, w in v["params"].items() if k != "fc8"}}, {},
                        r"params/fc8/bias: missing"),
}


@pytest.mark.parametrize("attack", sorted(STORED))
def test_stored_shapes_and_dtypes_are_checked_against_the_spec_before_any_array_is_read(
        attack, variables, tmp_path, no_restore):
    """Catches the restore of what the files declare: a .zarray declaring [2**28] floats (whose
    one zstd chunk of 32 KB inflates to them) was restored, 2.3 GB, before the shape check; a
    complex64 parameter loaded with a warning."""
    change, edits, message = STORED[attack]
    root = save_as_zarr(tmp_path / "model", (change or (lambda v: v))(variables), {"spec": SPEC.to_dict()})
    for name, fields in edits.items():
        edit_zarray(root, name, **fields)
    with pytest.raises(checkpoints.CheckpointError, match=f"^the checkpoint at {root} step 0 does not fit "
                                                          rf"this model \(its spec's\): {message}"):
        model_directory.load_variables(root)


SPEC_FIELDS = {  # name -> (spec change, message after 'spec.')
    "image_size 8192": (lambda s: s["model_kwargs"].update(image_size=8192, include_top=False),
                        r"model_kwargs.image_size: 8192: must be a multiple of 32 in 32 .. 512"),
    "image_size 2**20": (lambda s: s["model_kwargs"].update(image_size=2 ** 20),
                         r"model_kwargs.image_size: 1048576: must be"),
    "image_size 48": (lambda s: s["model_kwargs"].update(image_size=48), r"model_kwargs.image_size: 48: must be"),
    "width NaN": (lambda s: s["model_kwargs"].update(width=float("nan")), r"model_kwargs.width: nan: must be"),
    "width 10**400 (too large for a float)": (lambda s: s["model_kwargs"].update(width=10 ** 400),
                                              r"model_kwargs.width: 1000000000\d+\.\.\.: must be a number"),
    "width 2": (lambda s: s["model_kwargs"].update(width=2), r"model_kwargs.width: 2: must be a number in \(0, 1\]"),
    "num_classes 0": (lambda s: s["model_kwargs"].update(num_classes=0), r"model_kwargs.num_classes: 0: must be"),
    "num_classes true": (lambda s: s["model_kwargs"].update(num_classes=True), r"model_kwargs.num_classes: True"),
    "num_classes 10**6": (lambda s: s["model_kwargs"].update(num_classes=10 ** 6),
                          r"model_kwargs.num_classes: 1000000: must be an integer in 1 .. 21843"),
    "an unknown model argument": (lambda s: s["model_kwargs"].update(evil=1),
                                  r"model_kwargs: 'evil': not a model argument a spec may set"),
    "model_kwargs a list": (lambda s: s.update(model_kwargs=[1]), r"model_kwargs: \[1\]: not a JSON object"),
    "an unknown arch": (lambda s: s.update(arch="vgg99\x1b[2J"), r"arch: 'vgg99\\x1b\[2J': not one of vgg11, "),
    "std 0": (lambda s: s["normalization"].update(std_rgb=[0.0, 1.0, 1.0]),
              r"normalization.std_rgb: \[0.0, 1.0, 1.0\]: each std must be > 0"),
    "std NaN": (lambda s: s["normalization"].update(std_rgb=[float("nan"), 1.0, 1.0]),
                r"normalization.std_rgb: \[nan, 1.0, 1.0\]: must be 3 finite numbers"),
    "mean Infinity": (lambda s: s["normalization"].update(mean_rgb=[float("inf"), 1.0, 1.0]),
                      r"normalization.mean_rgb: \[inf, 1.0, 1.0\]: must be 3 finite numbers"),
    "mean 10**400": (lambda s: s["normalization"].update(mean_rgb=[10 ** 400, 1, 1]),
                     r"normalization.mean_rgb: \[1000000000\d+: must be 3 finite numbers"),
    "bgr a string": (lambda s: s["normalization"].update(bgr="yes"), r"normalization.bgr: 'yes': must be true"),
    "no normalization": (lambda s: s.pop("normalization"), r"normalization: not a JSON object"),
    "terminal escapes in a class name": (lambda s: s["class_names"].__setitem__(3, "\x1b[2J\x1b[31mcat"),
                                         r"class_names\[3\]: '\\x1b\[2J\\x1b\[31mcat': must be 1 .. 256 printable"),
    "a right-to-left override": (lambda s: s["class_names"].__setitem__(0, "dog\u202egif.exe"),
                                 r"class_names\[0\]: 'dog\\u202egif.exe': must be"),
    "2 names for 10 classes": (lambda s: s.update(class_names=["a", "b"]), r"class_names: 2 names for 10 classes"),
}


@pytest.mark.parametrize("attack", sorted(SPEC_FIELDS))
def test_each_spec_field_is_bounded_and_named_in_one_line(attack, saved, tmp_path, no_restore):
    """Catches a spec read as trusted: image_size 8192 loaded at 1.07 GB and 2**20 ended in a
    MemoryError traceback; std 0 or NaN gave NaN scores; an unknown model argument was a
    TypeError; class names reached the terminal raw."""
    change, message = SPEC_FIELDS[attack]
    root = copy_of(saved, tmp_path)
    edit_meta(root, lambda meta: change(meta["spec"]))
    with pytest.raises(checkpoints.CheckpointError, match=f"^{root} step 0: spec.{message}") as refused:
        model_directory.load_variables(root)
    assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value) and "\u202e" not in str(refused.value)


def test_a_model_over_the_size_of_the_largest_vgg_is_refused_and_the_largest_import_is_not(saved, tmp_path, no_restore):
    """Catches a size bound that lets fc6 over a 16 x 16 window (vgg19 at 512 px: 2.3 GB) through,
    or one that refuses the largest model an import writes (vgg19_bn at 224 px, 21843 classes)."""
    root = copy_of(saved, tmp_path)
    edit_meta(root, lambda meta: meta["spec"].update(arch="vgg19", model_kwargs={"image_size": 512}, class_names=None))
    with pytest.raises(checkpoints.CheckpointError, match=rf"^{root} step 0: spec: its model's variables would "
                                                          r"take 2.31 GB, over the 1.07 GB of the largest VGG"):
        model_directory.load_variables(root)
    largest = vgg_jax.create_model("vgg19_bn", num_classes=spec_fields.MAX_CLASSES)
    model_directory.expected_variables(largest, root, 0)


def test_symbolic_links_and_special_files_in_a_model_directory_are_refused(saved, tmp_path, no_restore):
    """Catches reading through a link: a meta file linked to a file outside the directory was
    read and used; a FIFO would block the read forever."""
    root = copy_of(saved, tmp_path)
    outside = tmp_path / "outside.json"
    shutil.copy(meta_path(root), outside)
    os.remove(meta_path(root))
    os.symlink(outside, meta_path(root))
    with pytest.raises(checkpoints.CheckpointError, match=f"^{root}: '0/meta/metadata' is a symbolic link"):
        model_directory.load_variables(root)
    os.remove(meta_path(root))
    os.mkfifo(meta_path(root))
    with pytest.raises(checkpoints.CheckpointError, match=f"^{root}: '0/meta/metadata' is neither a file nor"):
        model_directory.load_variables(root)
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(saved, workdir / "checkpoints")
    with pytest.raises(checkpoints.CheckpointError, match="checkpoints is a symbolic link"):
        model_directory.load_variables(workdir)


def test_json_files_are_bounded_before_they_are_parsed(saved, tmp_path, no_restore):
    """Catches a meta item parsed whole whatever its size (60 MB of class names loaded)."""
    root = copy_of(saved, tmp_path)
    edit_meta(root, lambda meta: meta["spec"].update(class_names=["x" * 256] * 40000))
    with pytest.raises(checkpoints.CheckpointError, match=rf"^{root}: '0/meta/metadata' has \d+ bytes, over the "
                                                          "8388608 such a file may have"):
        model_directory.load_variables(root)


def test_nan_or_infinite_parameters_are_refused(variables, tmp_path):
    """Catches weights that make every score NaN loading without a word."""
    root = tmp_path / "model"
    model_directory.save_model(root, with_leaf(variables, "fc7", "bias", np.full(16 * 16, np.inf, np.float32)), SPEC)
    with pytest.raises(checkpoints.CheckpointError, match=f"^{root} step 0: params/fc7/bias: NaN or infinite"):
        model_directory.load_variables(root)


def test_predict_refuses_a_model_without_its_head_in_one_line(variables, tmp_path, capsys):
    """Catches predict failing deep inside (an IndexError traceback) on a headless model."""
    root = tmp_path / "headless"
    headless = {"params": {k: v for k, v in variables["params"].items() if k.startswith("conv")}}
    spec = model_directory.ModelSpec("vgg11", {**KWARGS, "include_top": False}, None, PAPER)
    model_directory.save_model(root, headless, spec)
    assert predict.main(["--checkpoint", str(root), str(tmp_path / "any.jpg")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {root} (step 0) has no classifier head (include_top=False): predict needs fc6-fc8\n"


# --- the pretrained cache -----------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch, variables):
    """A registry entry 'tiny' and a cache whose 'tiny' is a directory recorded as converted from
    its file (as download.convert_into records it)."""
    weights = registry.WeightSet("tiny", "vgg11", "http://127.0.0.1:9/tiny-0123abcd.pth", "sha256", "0123abcd", PAPER)
    monkeypatch.setitem(registry.WEIGHT_SETS, "tiny", weights)
    monkeypatch.setenv(download.HOME_VARIABLE, str(tmp_path / "cache"))
    model_directory.save_model(tmp_path / "cache" / "tiny", variables, SPEC,
                           {"file": weights.file_name, "sha256": "0123abcd" + "5" * 56})
    return tmp_path / "cache" / "tiny"


def test_the_cache_loads_what_it_converted(cache, variables):
    """Catches a check that refuses the cache's own directories."""
    loaded, spec, _ = download.load_pretrained("tiny")
    assert spec == SPEC
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


PLANTS = {
    "planted without a record": lambda root, variables: model_directory.save_model(root, variables, SPEC),
    "recorded from another file": lambda root, _: edit_meta(root, lambda m: m["source"].update(sha256="0" * 64)),
    "spec edited": lambda root, _: edit_meta(root, lambda m: m["spec"]["normalization"].update(mean_rgb=[0, 0, 0])),
    "arrays replaced": lambda root, variables: replace_arrays(root, variables),
    "width 1/16 with std 0": lambda root, _: edit_meta(
        root, lambda m: m["spec"]["normalization"].update(std_rgb=[0, 1, 1])),
}


def replace_arrays(root, variables):
    """Other arrays under the directory's own meta item (its record and spec kept)."""
    meta = json.load(open(meta_path(root)))
    changed = jax.tree.map(lambda a: a + np.float32(1e-3), variables)
    shutil.rmtree(root)
    model_directory.save_model(root, changed, SPEC)
    json.dump(meta, open(meta_path(root), "w"))


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_or_edited_cache_directory_is_refused_with_how_to_get_it_again(plant, cache, variables):
    """Catches `pretrained:NAME` loading whatever directory sits at $VGG_JAX_HOME/NAME."""
    if plant == "planted without a record":
        shutil.rmtree(cache)
    PLANTS[plant](cache, variables)
    with pytest.raises(WeightsError, match=f"^{cache} exists and is not a vgg11 model directory: remove it and run "
                                           r"`python -m vgg_jax.weights download tiny` to fetch and convert it again"):
        vgg_jax.load("pretrained:tiny")


def test_download_says_a_planted_directory_is_not_ready(cache, variables, capsys):
    """Catches `weights download NAME` answering 'ready' for a directory the cache did not convert."""
    shutil.rmtree(cache)
    model_directory.save_model(cache, variables, SPEC)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["download", "tiny"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {cache} exists and is not a vgg11 model directory: remove it and run ")
    assert err.endswith("(it has no record of a conversion from tiny-0123abcd.pth)\n")


# --- writers delete nothing -------------------------------------------------------------------

def users_folder(path):
    """A folder of someone's own files, with integer-named sub-folders as orbax's steps have."""
    (path / "2019").mkdir(parents=True)
    (path / "2019" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    for step in ("0", "7"):  # a training run's steps, as orbax names them
        (path / step).mkdir()
        (path / step / "_CHECKPOINT_METADATA").write_text("{}")
    (path / "other").mkdir()
    (path / "other" / "notes.txt").write_text("mine")
    return path


def contents(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    return random_features_file("vgg11", tmp_path_factory.mktemp("file"))[1]


def run_import(out, weight_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["import", str(weight_file), "--arch", "vgg11", "--out", str(out)])
    return exit_.value.code, capsys.readouterr().err


def test_import_into_a_folder_of_the_users_files_deletes_nothing(weight_file, tmp_path, capsys):
    """Catches orbax's keep-newest rule deleting every integer-named folder (other checkpoints,
    a `2019/` folder of photos) of an existing --out; and --out naming a file, which was a
    CheckpointSaveError traceback."""
    folder = users_folder(tmp_path / "mine")
    before = contents(folder)
    code, err = run_import(folder, weight_file, capsys)
    assert code == 1 and err == (f"error: {folder} exists and is not a model directory: nothing was written; choose "
                                 "a new or empty directory (its files are left as they are)\n")
    assert contents(folder) == before and sorted(os.listdir(tmp_path)) == ["mine"]
    (tmp_path / "file.txt").write_text("mine")
    code, err = run_import(tmp_path / "file.txt", weight_file, capsys)
    assert code == 1
    assert err == f"error: {tmp_path / 'file.txt'} exists and is not a directory: choose another output directory\n"
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_import_replaces_an_earlier_import_and_leaves_its_neighbours(weight_file, tmp_path, capsys):
    """Catches a writer that cannot overwrite its own earlier output, or touches the folders beside it."""
    users_folder(tmp_path)
    out = tmp_path / "models" / "vgg11"
    for _ in range(2):
        cli.main(["import", str(weight_file), "--arch", "vgg11", "--out", str(out)])
        assert capsys.readouterr().out.startswith(f"wrote {out}: vgg11")
    assert os.listdir(out) == ["0"] and sorted(os.listdir(tmp_path)) == ["0", "2019", "7", "models", "other"]
    assert os.listdir(tmp_path / "models") == ["vgg11"]  # no temporaries left
    assert model_directory.load_variables(out)[1].normalization == TORCHVISION


def test_export_replaces_only_an_earlier_export(tmp_path):
    """Catches export writing its files into (or over) a folder that holds anything else."""
    folder = users_folder(tmp_path / "mine")
    before = contents(folder)
    artefacts = {"logits.jax": b"serialised"}
    with pytest.raises(ValueError, match=f"^{folder} exists and is not an export folder: nothing was written"):
        export.write(str(folder), artefacts, {"w": np.zeros(2)}, {})
    assert contents(folder) == before
    out = tmp_path / "exported"
    export.write(str(out), artefacts, {"w": np.zeros(2)}, {"old": 1})
    export.write(str(out), artefacts, {"w": np.ones(2)}, {"new": 1})
    assert sorted(os.listdir(out)) == ["logits.jax", "model.json", "weights.npz"]
    assert json.load(open(out / "model.json")) == {"new": 1}
    assert sorted(os.listdir(tmp_path)) == ["exported", "mine"]
