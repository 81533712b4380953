"""Keras weight files (.h5): keras.applications' downloads (Keras 2 layout) and Keras 3's
`.weights.h5`."""

from __future__ import annotations

import h5py
import numpy as np

from vgg_jax.weights.errors import WeightsError


def read_keras(path: str) -> dict[str, np.ndarray]:
    """Keras weights as '{layer}/kernel' and '{layer}/bias' arrays (Conv2D and Dense list the
    kernel first, then the bias), from either layout Keras writes."""
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file  # a whole saved model
        if "layer_names" in group.attrs:
            layers = legacy_keras_layers(group)
        elif "layers" in group:
            layers = keras3_layers(group["layers"])
        else:
            raise WeightsError(f"{path} is an HDF5 file but not a Keras weight file")
    tensors = {}
    for name, arrays in layers.items():
        labels = ("kernel", "bias") if len(arrays) == 2 else [str(i) for i in range(len(arrays))]
        tensors.update({f"{name}/{label}": array for label, array in zip(labels, arrays)})
    return tensors


def legacy_keras_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    """keras.applications' downloads (Keras 2): `layer_names`, each layer's `weight_names` in order."""
    layers = {}
    for name in map(as_str, group.attrs["layer_names"]):
        layers[name] = [np.asarray(group[name][as_str(weight)]) for weight in group[name].attrs["weight_names"]]
    return layers


def keras3_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    """Keras 3's `.weights.h5`: `layers/<class name>/vars/<i>`, the layer's name in an attribute."""
    return {as_str(layer["vars"].attrs.get("name", key)): [np.asarray(layer["vars"][str(i)])
                                                           for i in range(len(layer["vars"]))]
            for key, layer in group.items() if "vars" in layer}


def as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
