"""What the CLIs say at start about where JAX runs, and a warning when it misses a GPU."""

from __future__ import annotations

import collections
import logging
import os
import shutil

import jax

log = logging.getLogger("vgg_jax")

CUDA_INSTALL = 'pip install -U "jax[cuda13]" (CUDA 13 driver) or "jax[cuda12]" (CUDA 12 driver)'


def host_has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def describe() -> str:
    """e.g. 'jax 0.11.2, backend gpu: 8 devices (8 x NVIDIA H200), 1 process'."""
    kinds = collections.Counter(device.device_kind for device in jax.devices())
    listing = ", ".join(f"{count} x {kind}" for kind, count in kinds.items())
    return (f"jax {jax.__version__}, backend {jax.default_backend()}: {jax.device_count()} devices ({listing}), "
            f"{jax.process_count()} process{'es' if jax.process_count() > 1 else ''}")


def log_devices() -> None:
    """Logs the backend, device kinds and counts; warns once when JAX computes on the CPU of a
    host that has an NVIDIA GPU (a CPU-only jax was installed)."""
    log.info("%s", describe())
    if jax.default_backend() == "cpu" and host_has_nvidia_gpu():
        log.warning("JAX runs on the CPU, but this host has an NVIDIA GPU: install JAX with CUDA, "
                    "%s, or `pip install -e \".[cuda13]\"` here", CUDA_INSTALL)
