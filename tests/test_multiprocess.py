"""Two processes on loopback train together, as on a multi-host TPU pod or GPU cluster."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from vgg_jax import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(workdir):
    """Two train.py processes of one job (1 CPU device each), checking for stops every step."""
    coordinator = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    return [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
         f"--coordinator={coordinator}", "--num_processes=2", f"--process_id={index}",
         "--config.model.width=0.125", "--config.train.batch_size=16", "--config.train.log_every=1",
         f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every_steps=4",
         "--config.train.eval_every_epochs=100"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for index in range(2)]


def finish(processes) -> list[str]:
    logs = [process.communicate(timeout=600)[1] for process in processes]
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    return logs


def test_two_processes_train_and_write_one_checkpoint(tmp_path):
    finish(start_pair(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    assert results["step"] == NUM_STEPS and results["val_count"] == 360  # each test digit once
    variables, _, step = checkpoints.load_variables(tmp_path)
    assert step == NUM_STEPS
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))

    # SIGTERM to one process only: both stop at the same step, save it together and exit 0.
    interrupted = tmp_path / "interrupted"
    processes = start_pair(interrupted)
    root = interrupted / "checkpoints"
    deadline = time.time() + 300
    while not (root.is_dir() and any(name.isdigit() for name in os.listdir(root))):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGTERM)
    logs = finish(processes)
    saved = [re.findall(r"received: saved step (\d+), exiting", log) for log in logs]
    assert saved[0] == saved[1] and len(saved[0]) == 1, saved
    stopped_at = int(saved[0][0])
    assert stopped_at < NUM_STEPS and "SIGTERM" in logs[1] and "a signal to process 1" in logs[0]
    assert json.load(open(interrupted / "results.json"))["step"] == stopped_at

    finish(start_pair(interrupted))  # the resumed pair ends where the uninterrupted one did
    resumed, _, step = checkpoints.load_variables(interrupted)
    assert step == NUM_STEPS
    jax.tree.map(np.testing.assert_array_equal, resumed, variables)
