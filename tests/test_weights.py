"""Weight import against independent references: torch networks in torchvision's and timm's
layouts, Keras' applications, and files crafted to be wrong or hostile."""

import importlib
import os
import pickle
import zipfile

import h5py
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors

from numerics import assert_float32_close
import vgg_jax
from vgg_jax.core import normalization
from vgg_jax.weights import head_fields, import_weights, model_directory, WeightsError
from vgg_jax.weights.cli import main

# torchvision's configuration lists (numbers: conv widths, 'M': max-pool), written out here so
# the importer's walk over our layout table is checked against torchvision's own numbering.
TORCHVISION_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def torch_features(arch):
    """torchvision's `features`: conv3x3 [-> BN] -> ReLU, max-pools between blocks."""
    layers, channels = [], 3
    for item in TORCHVISION_CFGS[arch.removesuffix("_bn")]:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
            continue
        layers.append(torch.nn.Conv2d(channels, item, 3, padding=1))
        if arch.endswith("_bn"):
            layers.append(torch.nn.BatchNorm2d(item))
        layers.append(torch.nn.ReLU())
        channels = item
    return torch.nn.Sequential(*layers)


class TorchvisionVGG(torch.nn.Module):
    """torchvision's VGG module tree (features / avgpool / classifier). `window` is the pool5 map
    side the classifier takes: 7 as torchvision (a 224 input), smaller for fast tests."""

    def __init__(self, arch, window=7, num_classes=1000):
        super().__init__()
        self.features = torch_features(arch)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(window)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(512 * window * window, 4096), torch.nn.ReLU(), torch.nn.Dropout(),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Dropout(),
            torch.nn.Linear(4096, num_classes))
        randomize(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TimmVGG(torch.nn.Module):
    """timm's VGG module tree: fc6/fc7 as convs (`pre_logits.fc1` a window x window conv,
    `pre_logits.fc2` 1x1), global average pooling, then the `head.fc` linear."""

    def __init__(self, arch, window=7, num_classes=1000):
        super().__init__()
        self.features = torch_features(arch)
        self.pre_logits = torch.nn.Module()
        self.pre_logits.fc1 = torch.nn.Conv2d(512, 4096, window)
        self.pre_logits.fc2 = torch.nn.Conv2d(4096, 4096, 1)
        self.head = torch.nn.Module()
        self.head.fc = torch.nn.Linear(4096, num_classes)
        randomize(self)

    def forward(self, x):
        x = torch.relu(self.pre_logits.fc1(self.features(x)))
        x = torch.relu(self.pre_logits.fc2(x))
        return self.head.fc(x.mean(dim=(2, 3)))


def random_features_file(arch, directory):
    """torchvision's `features` of `arch` with He-normal weights (`randomize`), and the same saved
    as a .pth under `directory` with torchvision's key names."""
    features = torch_features(arch)
    randomize(features)
    path = directory / f"{arch}.pth"
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path)
    return features, path


@torch.no_grad()
def randomize(module, seed=0):
    """He-normal weights (activations keep an O(1) scale, so 1e-4 is a tight bound) and
    non-trivial BN statistics."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            layer.bias.uniform_(-0.1, 0.1, generator=generator)
        elif isinstance(layer, torch.nn.BatchNorm2d):
            layer.weight.uniform_(0.5, 1.5, generator=generator)
            layer.bias.uniform_(-0.2, 0.2, generator=generator)
            layer.running_mean.uniform_(-0.2, 0.2, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    module.eval()


def features_state_dict(arch):
    """A file with torchvision's `features` only (no classifier), randomised."""
    features = torch_features(arch)
    randomize(features)
    return {f"features.{key}": value for key, value in features.state_dict().items()}


def torch_logits(module, images):
    with torch.no_grad():
        return module(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def input_images(size, batch=2, seed=0):
    """ImageNet-normalised-like inputs: roughly zero mean, unit variance."""
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def imported_model(arch, variables):
    """The model the imported variables fit (head window and class count from the file)."""
    return vgg_jax.create_model(arch, **head_fields(variables["params"], vgg_jax.create_model(arch)))


def assert_logits_match(reference_logits, model, variables, images):
    ours = np.asarray(vgg_jax.jit(model.apply)(variables, images))
    assert np.std(reference_logits) > 0.1  # a real signal, so the scaled bound means something
    # fc6's sum is the widest (25088 inputs at 224, fewer for smaller heads), 19 layers at most.
    assert_float32_close(ours, reference_logits, terms=25088, layers=len(variables["params"]))


# --- torchvision ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
def test_torchvision_small_head_logits_match_torch(arch, tmp_path):
    # Full-width features with a 1x1 pool5 window (a 32 px input) keep this fast; fc6's
    # CHW -> HWC reordering is checked by the 224 vgg16 and the 2x2-window timm tests.
    reference = TorchvisionVGG(arch, window=1, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    variables, convention = import_weights(tmp_path / "weights.pth", arch)
    model = imported_model(arch, variables)
    assert (model.image_size, model.num_classes, convention) == (32, 10, normalization.TORCHVISION)
    images = input_images(32)
    assert_logits_match(torch_logits(reference, images), model, variables, images)


@pytest.mark.slow
def test_torchvision_vgg16_full_size_logits_match_torch(tmp_path):
    reference = TorchvisionVGG("vgg16")
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    variables, _ = import_weights(tmp_path / "vgg16.pth", "vgg16")
    model = vgg_jax.vgg16()
    images = input_images(224, batch=1)
    assert_logits_match(torch_logits(reference, images), model, variables, images)


def test_legacy_torch_format_reads_the_same_tensors(tmp_path):
    # torchvision's VGG downloads predate torch 1.6's zip format. The legacy file is a training
    # checkpoint: the state dict is unwrapped and the other tensors' storages skipped.
    state = features_state_dict("vgg11_bn")
    torch.save(state, tmp_path / "zip.pth")
    checkpoint = {"state_dict": state, "epoch": 3, "momentum": {"features.0.weight": torch.ones(3)}}
    torch.save(checkpoint, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    from_zip, _ = import_weights(tmp_path / "zip.pth", "vgg11_bn")
    from_legacy, _ = import_weights(tmp_path / "legacy.pth", "vgg11_bn")
    assert "fc6" not in from_zip["params"]  # no classifier in the file: include_top=False
    for ours, theirs in zip(jax.tree.leaves(from_zip), jax.tree.leaves(from_legacy)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(from_zip["batch_stats"]["bn2_1"]["var"], state["features.5.running_var"].numpy())


# --- timm ----------------------------------------------------------------------------------

def test_timm_safetensors_logits_match_torch(tmp_path):
    reference = TimmVGG("vgg16_bn", window=2, num_classes=10)
    save_safetensors({k: v.numpy() for k, v in reference.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    variables, convention = import_weights(tmp_path / "timm.safetensors", "vgg16_bn")
    assert convention == normalization.TORCHVISION
    images = input_images(64)
    assert_logits_match(torch_logits(reference, images), imported_model("vgg16_bn", variables), variables, images)


# --- Keras ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    # Keras' own layers on its lightest backend (the numpy one builds a 224 VGG16 in seconds).
    os.environ.setdefault("KERAS_BACKEND", "numpy")
    return importlib.import_module("keras")  # in the test extra: missing is an error, never a skip


def keras_vgg(keras, constructor, **kwargs):
    """A keras.applications VGG with Keras' initial weights and random (non-zero) biases."""
    net = getattr(keras.applications, constructor)(weights=None, classifier_activation=None, **kwargs)
    rng = np.random.default_rng(1)
    for layer in net.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(-1.0, 1.0, layer.bias.shape).astype(np.float32))
    return net


def write_legacy_keras_h5(net, path):
    """The layout of keras.applications' downloads (vgg16_weights_tf_dim_ordering_tf_kernels.h5)."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [layer.name.encode() for layer in net.layers]
        for layer in net.layers:
            group = file.create_group(layer.name)
            names = [f"{layer.name}/{label}:0" for label in ("kernel", "bias")][: len(layer.get_weights())]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, array in zip(names, layer.get_weights()):
                group.create_dataset(name, data=array)


def caffe_input(keras, size, seed=3):
    rgb = np.random.default_rng(seed).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    return keras.applications.vgg16.preprocess_input(rgb)  # BGR, ImageNet mean subtracted


@pytest.mark.slow
def test_keras_vgg16_legacy_h5_logits_match_keras(keras, tmp_path):
    net = keras_vgg(keras, "VGG16")
    write_legacy_keras_h5(net, tmp_path / "vgg16.h5")
    variables, convention = import_weights(tmp_path / "vgg16.h5", "vgg16")
    assert convention == normalization.CAFFE_BGR
    images = caffe_input(keras, 224)
    assert_logits_match(np.asarray(net(images)), vgg_jax.vgg16(), variables, images)


def test_keras3_weights_h5_without_top_matches_keras_pool5(keras, tmp_path):
    net = keras_vgg(keras, "VGG19", include_top=False, input_shape=(64, 64, 3))
    net.save_weights(tmp_path / "vgg19_notop.weights.h5")
    variables, _ = import_weights(tmp_path / "vgg19_notop.weights.h5", "vgg19")
    assert not any(name.startswith("fc") for name in variables["params"])
    images = caffe_input(keras, 64)
    ours = vgg_jax.vgg19(include_top=False, image_size=64).apply(variables, images)
    assert_float32_close(ours, np.asarray(net(images)), terms=512 * 9, layers=16)


# --- files that do not fit, or must not be loaded --------------------------------------------

class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "plain pickle"])
def test_a_pickle_that_would_run_a_command_is_refused(container, tmp_path):
    marker = tmp_path / "command_ran"
    payload = pickle.dumps({"features.0.weight": RunsACommand(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(WeightsError, match=r"refusing to load.*system"):
        import_weights(path, "vgg11")
    assert not marker.exists()


def test_a_pickled_module_is_refused_naming_its_class(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(WeightsError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        import_weights(tmp_path / "module.pth", "vgg11")


@pytest.mark.parametrize("damage", ["truncated legacy .pth", "not HDF5 .h5", "not safetensors"])
def test_cli_reports_a_damaged_file_in_one_line(damage, tmp_path, capsys):
    torch.save(features_state_dict("vgg11"), tmp_path / "good.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "good.pth").read_bytes()
    name, content = {"truncated legacy .pth": ("cut.pth", data[: len(data) // 2]),
                     "not HDF5 .h5": ("w.h5", data[:1000]),
                     "not safetensors": ("w.safetensors", data[:1000])}[damage]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        main(["import", str(tmp_path / name), "--arch", "vgg11", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_.value.code == 1 and error.count("\n") == 1
    assert error.startswith(f"error: cannot read {tmp_path / name} (damaged or truncated?): ")
    assert not (tmp_path / "out").exists()


def test_another_architecture_names_the_offending_keys(tmp_path):
    torch.save(features_state_dict("vgg11"), tmp_path / "vgg11.pth")
    with pytest.raises(WeightsError) as error:
        import_weights(tmp_path / "vgg11.pth", "vgg13")
    # vgg13 has conv1_2 at features.2 and conv2_1 at features.5, where vgg11 has a pool and a ReLU.
    assert "features.2.weight" in str(error.value) and "features.5.weight" in str(error.value)
    assert "unexpected keys" in str(error.value) and "features.3.weight" in str(error.value)


def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path):
    # Config C has 1x1 convs where D has 3x3 ones, at the same torchvision indices.
    torch.save(features_state_dict("vgg16"), tmp_path / "vgg16.pth")
    with pytest.raises(WeightsError, match=r"features\.14\.weight \(256, 256, 3, 3\) -> conv3_3/kernel "
                                           r"\(3, 3, 256, 256\), the model needs \(1, 1, 256, 256\)"):
        import_weights(tmp_path / "vgg16.pth", "vgg16_conv1")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = {key: value.numpy() for key, value in features_state_dict("vgg11").items()}
    del state["features.0.bias"]
    state["features.1.stray"] = np.zeros(3, np.float32)
    save_safetensors(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys \['features\.0\.bias'\].*"
                                           r"unexpected keys \['features\.1\.stray'\]"):
        import_weights(tmp_path / "w.safetensors", "vgg11")


# --- CLI -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_writes_a_model_directory_with_a_new_classifier(tmp_path, capsys):
    reference = TorchvisionVGG("vgg11", window=1, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "vgg11.pth")
    main(["import", str(tmp_path / "vgg11.pth"), "--arch", "vgg11", "--out", str(tmp_path / "model"),
          "--num_classes", "5"])
    assert "wrote" in capsys.readouterr().out
    model, variables, spec = model_directory.load_model(tmp_path / "model")
    assert (spec.arch, spec.normalization, model.num_classes, model.image_size) == (
        "vgg11", normalization.TORCHVISION, 5, 32)
    imported, _ = import_weights(tmp_path / "vgg11.pth", "vgg11")
    np.testing.assert_array_equal(variables["params"]["fc7"]["kernel"], imported["params"]["fc7"]["kernel"])
    assert variables["params"]["fc8"]["kernel"].shape == (4096, 5)
