"""Dense, multi-crop, multi-scale and ensemble evaluation against direct model.apply computations."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from numerics import assert_float32_close, float32_tolerance
import vgg_jax
from configs import default
from vgg_jax.core import checkpoints, sharding
from vgg_jax.core.normalization import Normalization
from vgg_jax.data import digits
from vgg_jax.evaluate import ensemble, methods
from vgg_jax.weights import model_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = Normalization((77.9,) * 3, (95.9,) * 3)
IDENTITY = Normalization((0.0,) * 3, (1.0,) * 3)  # float test images are the model's input as they are


def tiny_model(arch="vgg11", **kwargs):
    return vgg_jax.create_model(arch, **{"num_classes": 10, "width": 0.125, "image_size": 32,
                                         "init_scheme": "glorot", **kwargs})


def init(model, seed=0):
    size = model.image_size
    return jax.tree.map(np.asarray, model.init(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32)))


def member(model, variables, normalization=DIGITS):
    spec = model_directory.ModelSpec("vgg11", {}, digits.CLASS_NAMES, normalization)
    return methods.Member(model, variables, spec, "test")


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def posterior_atol(model, variables, image):
    """Float32 rounding bound for posteriors of `image`: they move by no more than the logits
    do (softmax is 1-Lipschitz in the max norm), and the logits' bound scales with their size."""
    logits = np.asarray(model.apply(variables, image[None], dense=True))
    return float32_tolerance(logits, terms=9 * 64, layers=len(variables["params"]))  # widest: 3x3x64


def dense_alone(model, variables, image):
    """Flip-averaged softmax of the mean class score map, one unpadded image at a time."""
    maps = [np.asarray(model.apply(variables, x[None], dense=True))[0] for x in (image, image[:, ::-1])]
    return np.mean([softmax(m.mean(axis=(0, 1))) for m in maps], axis=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-init digits model directory: evaluation is about arithmetic, not accuracy."""
    path = str(tmp_path_factory.mktemp("ckpt"))
    model = tiny_model()
    spec = model_directory.ModelSpec("vgg11", {"num_classes": 10, "width": 0.125, "image_size": 32,
                                           "init_scheme": "glorot"}, digits.CLASS_NAMES, DIGITS)
    model_directory.save_model(path, init(model), spec)
    return path


def test_dense_on_a_224_input_equals_the_single_crop_fc_head():
    model = vgg_jax.vgg11(num_classes=10, width=1 / 16, image_size=224, init_scheme="glorot")
    variables = init(model)
    image = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    scores, valid = vgg_jax.jit(methods.dense_score_maps, static_argnums=0)(
        model, variables, image, np.array([[224, 224]]))
    fc_logits = np.asarray(vgg_jax.jit(model.apply)(variables, image))
    assert scores.shape == (1, 1, 1, 10) and bool(valid.all())
    assert_float32_close(scores[:, 0, 0], fc_logits, terms=7 * 7 * 32, layers=3)  # fc6's sum, head layers
    np.testing.assert_allclose(methods.spatial_softmax(scores, valid), softmax(fc_logits),
                               atol=float32_tolerance(fc_logits, 7 * 7 * 32, 3))


def numpy_head(params, pool5, window):
    """Class scores (h, w, C) of pool5 features (H, W, c), in float64 numpy: fc6 reads each
    window x window window flattened in (row, column, channel) order, then fc7 and fc8."""
    weights = {layer: (np.asarray(params[layer]["kernel"], np.float64), np.asarray(params[layer]["bias"], np.float64))
               for layer in ("fc6", "fc7", "fc8")}
    rows, cols = pool5.shape[0] - window + 1, pool5.shape[1] - window + 1
    x = np.stack([[pool5[i:i + window, j:j + window].reshape(-1) for j in range(cols)] for i in range(rows)])
    for layer in ("fc6", "fc7"):
        x = np.maximum(x @ weights[layer][0] + weights[layer][1], 0)
    return x @ weights["fc8"][0] + weights["fc8"][1]


def test_every_method_on_a_multi_position_map_equals_a_numpy_head_over_the_trunks_features():
    """Catches the dense head visiting windows in the wrong order or flattening fc6's window
    with rows and columns swapped (invisible at a 1x1 window), and dense pooling as the mean of
    per-position softmaxes instead of the softmax of the mean scores (invisible with 1-2
    positions or near-uniform posteriors). A 64 px net (2x2 fc6 window) on a 96x128 image: a
    2x3 score map, with fc8 scaled so that the posteriors are far from uniform."""
    model = tiny_model(image_size=64)
    variables = jax.tree.map(np.array, init(model))
    variables["params"]["fc8"]["kernel"] *= 30
    image = np.random.default_rng(5).standard_normal((96, 128, 3)).astype(np.float32)
    _, posteriors = methods.scale_posteriors(member(model, variables, IDENTITY), [(image, 0)], scale=96,
                                                batch_size=4, mesh=sharding.data_mesh())
    trunk = model.clone(include_top=False)
    conv_params = {"params": {k: v for k, v in variables["params"].items() if not k.startswith("fc")}}
    head = lambda x: numpy_head(variables["params"], np.asarray(trunk.apply(conv_params, x[None]), np.float64)[0], 2)

    maps = [head(x) for x in (image, image[:, ::-1])]
    assert maps[0].shape == (2, 3, 10)
    dense = np.mean([softmax(m.mean(axis=(0, 1))) for m in maps], axis=0)
    centre = softmax(head(image[16:80, 32:96])[0, 0])
    atol = float32_tolerance(maps[0], terms=9 * 64, layers=len(variables["params"]))
    np.testing.assert_allclose(posteriors["dense"][0], dense, atol=atol, rtol=0)
    np.testing.assert_allclose(posteriors["single-crop"][0], centre, atol=atol, rtol=0)
    mean_of_softmaxes = np.mean([softmax(m).mean(axis=(0, 1)) for m in maps], axis=0)
    assert dense.max() > 0.25 and np.abs(mean_of_softmaxes - dense).max() > 10 * atol  # they can be told apart


def test_a_net_trained_without_flips_is_evaluated_without_mirrors():
    """Catches test-time flips applied to a net trained without them (data.flip=False, e.g. the
    digits quickstart, where a mirrored digit is another glyph): dense must be the softmax of the
    image's own mean scores (numpy head, as above) and multi-crop must average the 25 grid crops, not 50."""
    model = tiny_model(image_size=64)
    variables = jax.tree.map(np.array, init(model))
    variables["params"]["fc8"]["kernel"] *= 30
    image = np.random.default_rng(5).standard_normal((96, 128, 3)).astype(np.float32)
    _, posteriors = methods.scale_posteriors(member(model, variables, IDENTITY), [(image, 0)], scale=96,
                                                batch_size=4, mesh=sharding.data_mesh(), flips=False)
    trunk = model.clone(include_top=False)
    conv_params = {"params": {k: v for k, v in variables["params"].items() if not k.startswith("fc")}}
    head = lambda x: numpy_head(variables["params"], np.asarray(trunk.apply(conv_params, x[None]), np.float64)[0], 2)
    scores = head(image)
    atol = float32_tolerance(scores, terms=9 * 64, layers=len(variables["params"]))
    np.testing.assert_allclose(posteriors["dense"][0], softmax(scores.mean(axis=(0, 1))), atol=atol, rtol=0)
    offsets = [(y, x) for y in range(0, 33, 8) for x in range(0, 65, 16)]  # the 5x5 grid of 64 px crops
    crops = np.mean([softmax(head(image[y:y + 64, x:x + 64])[0, 0]) for y, x in offsets], axis=0)
    np.testing.assert_allclose(posteriors["multi-crop"][0], crops, atol=atol, rtol=0)


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_padded_dense_batch_equals_each_image_evaluated_alone(arch):
    model = tiny_model(arch)
    variables = init(model)
    rng = np.random.default_rng(1)
    landscape = [rng.standard_normal((32, w, 3)).astype(np.float32) for w in (33, 64)]
    portrait = [rng.standard_normal((h, 32, 3)).astype(np.float32) for h in (50,)]
    for images in (landscape, portrait):
        shapes = {methods.padded_shape(image.shape, 32, 32) for image in images}
        assert len(shapes) == 1  # one batch of one padded shape
        batch = methods.padded_batch(images, shapes.pop())
        got = np.asarray(methods.all_methods(model, IDENTITY, variables, **batch)["dense"])
        expected = [dense_alone(model, variables, image) for image in images]
        np.testing.assert_allclose(got, expected, atol=max(posterior_atol(model, variables, im) for im in images))

    # The zeroing inside the net matters: leaving the padded windows out of the average alone
    # would not be exact (a 33 px wide image padded to 64 has one valid window of two).
    image = landscape[0]
    padded = np.pad(image, ((0, 0), (0, 31), (0, 0)))[None]
    naive = softmax(np.asarray(model.apply(variables, padded, dense=True))[0, 0, 0])
    exact = softmax(np.asarray(model.apply(variables, image[None], dense=True))[0].mean(axis=(0, 1)))
    assert not np.allclose(naive, exact, atol=1e-4)


def test_crops_and_mirrors_cut_on_the_device_are_numpy_slices_of_each_padded_image():
    rng = np.random.default_rng(2)
    image, narrow = rng.standard_normal((40, 52, 3)).astype(np.float32), rng.standard_normal((40, 42, 3)).astype(np.float32)
    batch = methods.padded_batch([image, narrow], (40, 64))
    centre, crops = jax.jit(methods.multi_crops, static_argnums=2)(batch["images"], batch["sizes"], 32)
    assert centre.shape == (2, 1, 32, 32, 3) and crops.shape == (2, 50, 32, 32, 3)
    expected = {0: image[:32, :32], 2: image[:32, 10:42], 4: image[:32, 20:],
                12: image[4:36, 10:42], 20: image[8:, :32], 24: image[8:, 20:]}
    for index, window in expected.items():
        np.testing.assert_array_equal(crops[0, index], window)
        np.testing.assert_array_equal(crops[0, 25 + index], window[:, ::-1])
    np.testing.assert_array_equal(centre[0, 0], image[4:36, 10:42])
    np.testing.assert_array_equal(centre[1, 0], narrow[4:36, 5:37])
    np.testing.assert_array_equal(crops[1, 4], narrow[:32, 10:])  # the grid spans the image, not the padding
    mirrors = np.asarray(methods.mirrored(batch["images"], batch["sizes"]))
    np.testing.assert_array_equal(mirrors[1], np.pad(narrow[:, ::-1], ((0, 0), (0, 22), (0, 0))))
    odd = rng.standard_normal((47, 60, 3)).astype(np.float32)  # offsets that round: as np.round(np.linspace)
    _, odd_crops = methods.multi_crops(odd[None], np.array([[47, 60]]), 32)
    ys, xs = np.round(np.linspace(0, 47 - 32, 5)).astype(int), np.round(np.linspace(0, 60 - 32, 5)).astype(int)
    for k, (y, x) in enumerate((y, x) for y in ys for x in xs):
        np.testing.assert_array_equal(odd_crops[0, k], odd[y:y + 32, x:x + 32])
    crops = np.asarray(crops[0])

    model = tiny_model()
    variables = init(model)
    labels, posteriors = methods.scale_posteriors(
        member(model, variables, IDENTITY), [(image, 3)], scale=40, batch_size=4, mesh=sharding.data_mesh())
    by_apply = softmax(np.asarray(model.apply(variables, crops))).mean(axis=0)
    atol = posterior_atol(model, variables, image)
    np.testing.assert_allclose(posteriors["multi-crop"][0], by_apply, atol=atol)
    centre = image[4:36, 10:42]
    np.testing.assert_allclose(posteriors["single-crop"][0], softmax(np.asarray(model.apply(variables, centre[None])))[0], atol=atol)
    np.testing.assert_allclose(posteriors["dense"][0], dense_alone(model, variables, image), atol=atol)
    assert labels.tolist() == [3]


def test_flip_averaged_posteriors_are_the_same_for_the_mirrored_image():
    model = tiny_model()
    variables = init(model)
    image = np.random.default_rng(3).standard_normal((40, 58, 3)).astype(np.float32)
    _, posteriors = methods.scale_posteriors(
        member(model, variables, IDENTITY), [(image, 0), (image[:, ::-1], 0)], scale=40, batch_size=4,
        mesh=sharding.data_mesh())
    for method in ("dense", "multi-crop"):
        np.testing.assert_allclose(posteriors[method][0], posteriors[method][1],
                                   atol=posterior_atol(model, variables, image))
    one_way = [softmax(np.asarray(model.apply(variables, x[None], dense=True)).mean(axis=(1, 2)))
               for x in (image, image[:, ::-1])]
    assert not np.allclose(*one_way, atol=1e-4)  # so the averaging is what makes them equal


def test_choose_scales():
    config = default.get_config().data
    config.update(scale_min=32, scale_max=40)  # jittered S in [32, 40], crop 32
    assert ensemble.choose_scales(config, 32) == ([32, 36, 40], [])
    config.scale_max = 32  # fixed S = 32: S - 32 = 0 is below the crop
    assert ensemble.choose_scales(config, 32) == ([32, 64], [0])
    assert ensemble.choose_scales(config, 32, [48, 32, 48]) == ([48, 32], [])
    with pytest.raises(ValueError, match="Q=24 is smaller than the model's crop size 32"):
        ensemble.choose_scales(config, 32, [32, 24])


def test_ensemble_with_itself_and_with_a_renormalised_copy_equals_the_net():
    config = default.get_config()
    model = tiny_model()
    variables = init(model)
    # Inputs scaled by 1/2 and conv1_1 weights by 2 give the same net: only per-member
    # normalisation keeps the ensemble equal to the net.
    doubled = jax.tree.map(np.copy, variables)
    doubled["params"]["conv1_1"]["kernel"] *= 2
    halved = Normalization(DIGITS.mean_rgb, tuple(2 * s for s in DIGITS.std_rgb))
    one = member(model, variables)
    run = lambda members: ensemble.ensemble_posteriors(members, config.data, [32, 40], batch_size=4, num_images=8)
    labels, alone = run([one])
    for members in ([one, one], [one, member(model, doubled, halved)]):
        together_labels, together = run(members)
        np.testing.assert_array_equal(together_labels, labels)
        assert together.keys() == alone.keys()
        for key in alone:
            np.testing.assert_allclose(together[key], alone[key], atol=1e-5)
    _, different = run([one, member(model, doubled)])  # the wrong normalisation: not equal
    assert not np.allclose(different["dense", 32], alone["dense", 32], atol=1e-4)


def test_table_on_digits_rows_and_a_row_computed_directly(checkpoint):
    config = default.get_config()
    config.data.update(scale_min=32, scale_max=40)
    results = ensemble.run(config, [checkpoint], batch_size=8, num_images=24)
    assert results["scales"] == [32, 36, 40] and results["dropped_scales"] == []
    assert results["num_images"] == 24 and results["skipped_files"]["count"] == 0
    labels = [(row["method"], row["scales"]) for row in results["rows"]]
    assert labels == [(m, q) for m in methods.METHODS for q in ("32", "36", "40", "32,36,40")]
    for row in results["rows"]:
        assert 0 <= row["top5_error"] <= row["top1_error"] <= 100

    # Single crop at Q = 32 is the whole 32x32 digit through the fc head.
    model, variables, spec = model_directory.load_model(checkpoint)
    images, truth = digits.load("test")
    norm = spec.normalization
    x = (images[:24].astype(np.float32) - np.array(norm.mean_rgb, np.float32)) / np.array(norm.std_rgb, np.float32)
    logits = np.asarray(model.apply(variables, x))
    ranked = np.argsort(-logits, axis=1)
    row = results["rows"][0]
    assert row["top1_error"] == pytest.approx(100 * np.mean(ranked[:, 0] != truth[:24]))
    assert row["top5_error"] == pytest.approx(100 * np.mean([t not in r[:5] for t, r in zip(truth[:24], ranked)]))

    table = ensemble.format_table(results)
    assert "dense+multi-crop" in table and "32,36,40" in table


def test_error_rates_closed_form():
    posteriors = np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0],   # label 0: top-1
                           [0.3, 0.4, 0.1, 0.1, 0.05, 0.05, 0.0],   # label 0: top-5 only
                           [0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.15]])  # label 5: neither
    assert ensemble.error_rates(posteriors, np.array([0, 0, 5])) == pytest.approx((200 / 3, 100 / 3))


def test_bad_checkpoints_are_named(tmp_path, checkpoint):
    config = default.get_config()
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint directory"):
        ensemble.run(config, [str(tmp_path / "missing")])
    wrong_arch = str(tmp_path / "wrong_arch")  # says vgg13, holds vgg11 weights
    model_directory.save_model(wrong_arch, init(tiny_model()), model_directory.ModelSpec(
        "vgg13", {"num_classes": 10, "width": 0.125, "image_size": 32}, None, DIGITS))
    with pytest.raises(checkpoints.CheckpointError, match="does not fit this model"):
        ensemble.run(config, [wrong_arch])
    imagenet = str(tmp_path / "imagenet")
    model_directory.save_model(imagenet, init(tiny_model(num_classes=1000)), model_directory.ModelSpec(
        "vgg11", {"num_classes": 1000, "width": 0.125, "image_size": 32}, None, DIGITS))
    with pytest.raises(checkpoints.CheckpointError, match="has 1000 classes but the dataset digits has 10"):
        ensemble.run(config, [checkpoint, imagenet])


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(4)
    for split, count in (("train", 1), ("val", 3)):
        for name in ("0", "1"):
            os.makedirs(tmp_path / split / name)
            for i in range(count):
                image = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "val" / "1" / "broken.jpg").write_bytes(b"not a jpeg")
    config = default.get_config()
    config.data.update(source=f"folder:{tmp_path}", eval_split="val")
    model = tiny_model(num_classes=2)
    results = ensemble.evaluate([member(model, init(model))], config.data, [32], batch_size=4)
    assert results["skipped_files"]["count"] == 1 and results["skipped_files"]["paths"][0].endswith("broken.jpg")
    assert results["num_images"] == 6
    assert "skipped 1 unreadable images" in ensemble.format_table(results)


def eval_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_eval_cli_on_an_imported_model_with_the_dataset_on_the_command_line(tmp_path, checkpoint):
    # A model directory (no training config.json), as `vgg_jax.weights import` writes: the data
    # come from --dataset, the default scales are 256, 384, 512 in proportion to the 32 crop.
    done = eval_cli(f"--checkpoint={checkpoint}", "--dataset=digits", "--split=test", "--num_images=8",
                    f"--out={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dense+multi-crop" in done.stdout and "37,55,73" in done.stdout
    assert "img/s" in done.stderr or "it/s" in done.stderr  # the progress bar
    results = json.load(open(tmp_path / "eval_results.json"))
    assert results["scales"] == [37, 55, 73] and results["split"] == "test" and results["num_images"] == 8
    with open(tmp_path / "eval_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results["rows"]) == 4 * 4
    assert [float(r["top1_error"]) for r in rows] == pytest.approx([r["top1_error"] for r in results["rows"]])


@pytest.fixture(scope="module")
def best_is_not_latest(tmp_path_factory):
    """A training workdir whose best step (4, val_top1 0.9) predicts class 0 for every image and
    whose latest step (8, val_top1 0.5) class 1: which one a tool used shows in its answers."""
    workdir = str(tmp_path_factory.mktemp("best_is_not_latest"))
    model = tiny_model()
    kwargs = {"num_classes": 10, "width": 0.125, "image_size": 32, "init_scheme": "glorot"}
    meta = {"spec": model_directory.ModelSpec("vgg11", kwargs, digits.CLASS_NAMES, DIGITS).to_dict()}
    manager = checkpoints.open_manager(os.path.join(workdir, "checkpoints"))
    for step, top1, favoured in ((4, 0.9, 0), (8, 0.5, 1)):
        variables = jax.tree.map(np.array, init(model))
        variables["params"]["fc8"]["bias"][favoured] = 1e3  # beats any logit of a random net
        checkpoints.save(manager, step, variables, meta, {"val_top1": top1})
    checkpoints.finish_saving(manager)
    manager.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(default.get_config().to_dict(), f)
    return workdir


@pytest.mark.slow
def test_eval_cli_on_a_workdir_evaluates_its_best_step_not_its_latest(tmp_path, best_is_not_latest):
    """Catches eval.py (load_member) taking a workdir's latest step instead of its best one."""
    done = eval_cli(f"--workdir={best_is_not_latest}", "--scales=32", "--num_images=16", f"--out={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(tmp_path / "eval_results.json"))
    assert results["checkpoints"] == [f"{best_is_not_latest} (step 4)"]
    labels = digits.load("test")[1][:16]
    best, latest = 100 * np.mean(labels != 0), 100 * np.mean(labels != 1)
    assert best != latest  # the two steps' answers can be told apart on these images
    assert [row["top1_error"] for row in results["rows"]] == pytest.approx([best] * len(results["rows"]))


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--checkpoint=/no/such/dir"], "error: no checkpoint directory at /no/such/dir"),
    (["--scales=256,big"], "error: --scales=256,big: give whole numbers"),
    (["--dataset=no_such_dataset"], "error: unknown dataset 'no_such_dataset'"),
    ([], "error: {checkpoint} has no training config.json: give the dataset with --dataset"),
])
def test_eval_cli_user_errors_are_one_line(checkpoint, args, message):
    args = args if any(a.startswith("--checkpoint") for a in args) else [f"--checkpoint={checkpoint}", *args]
    done = subprocess.run([sys.executable, "-c", "import sys, eval; eval.app.run(eval.main, argv=sys.argv)", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(message.format(checkpoint=checkpoint))


@pytest.mark.slow
def test_two_processes_evaluate_their_shards_and_gather_the_whole_table(tmp_path, checkpoint):
    from tests.test_multiprocess import free_port

    args = [f"--checkpoint={checkpoint}", "--dataset=digits", "--split=test", "--scales=32",
            "--num_images=12", "--batch_size=2", f"--out={tmp_path}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    coordinator = f"--coordinator=127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, os.path.join(ROOT, "eval.py"), *args, coordinator,
                                   "--num_processes=2", f"--process_id={index}"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert "wrote" in outputs[0][0] and "wrote" not in outputs[1][0]  # process 0 writes the table
    together = json.load(open(tmp_path / "eval_results.json"))
    config = default.get_config()
    config.data.update(scale_min=None, scale_max=None)
    alone = ensemble.run(config, [checkpoint], [32], batch_size=4, num_images=12)
    assert together["num_images"] == alone["num_images"] == 12
    for a, b in zip(together["rows"], alone["rows"]):
        assert a == pytest.approx(b)  # every image once, whichever process evaluated it
