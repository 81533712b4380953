"""Two processes on loopback train together, as on a multi-host TPU pod or GPU cluster."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from vgg_jax import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_write_one_checkpoint(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    processes = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={tmp_path}",
         f"--coordinator={coordinator}", "--num_processes=2", f"--process_id={index}",
         "--config.model.width=0.125", "--config.train.batch_size=16",
         "--config.train.num_steps=4", "--config.train.eval_every_epochs=100"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results["step"] == 4 and results["val_count"] == 360  # each test digit once
    variables, _, step = checkpoints.load_variables(tmp_path)
    assert step == 4
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))
