"""Pretrained weights by name, end to end against an HTTP server on 127.0.0.1 serving a
torchvision-format file generated here: download, verify, convert, reuse offline, and every way
a download can fail leaving the cache as it was."""

import glob
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from numerics import assert_float32_close
import vgg_jax
from test_weights import randomize, torch_features
from vgg_jax.core import normalization
from vgg_jax.weights import download, ensure_model, registry, WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BY_HAND = "python -m vgg_jax.weights import"
CHUNK_BYTES = 1 << 20


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A full-width vgg11 `features` (37 MB, the part of the 507 MB file that the architecture
    fixes), saved as torchvision's downloads are (legacy torch.save format), named as they are:
    `<name>-<SHA-256 prefix>.pth`. Returns (torch module, file bytes, file name)."""
    features = torch_features("vgg11")
    randomize(features)
    path = tmp_path_factory.mktemp("publisher") / "file.pth"
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    return features, data, f"vgg11_features-{hashlib.sha256(data).hexdigest()[:10]}.pth"


class Publisher(http.server.ThreadingHTTPServer):
    """Serves `files` by URL path; records every request; can cut a body short or send it slowly."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.files, self.requests, self.truncated, self.seconds_per_chunk = {}, [], set(), 0.0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = body[: len(body) // 2] if self.path in self.server.truncated else body
        for start in range(0, len(sent), CHUNK_BYTES):  # HTTP/1.0: the connection closes after
            self.wfile.write(sent[start:start + CHUNK_BYTES])
            time.sleep(self.server.seconds_per_chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    publisher = Publisher()
    thread = threading.Thread(target=publisher.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield publisher
    publisher.shutdown()
    publisher.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.HOME_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.delenv(download.MIRROR_VARIABLE, raising=False)
    return tmp_path / "cache"


def register(monkeypatch, url, digest, name="tiny"):
    """A registry entry as the real torchvision ones are (SHA-256 prefix, torchvision input)."""
    weights = registry.WeightSet(name, "vgg11", url, "sha256", digest, normalization.TORCHVISION)
    monkeypatch.setitem(registry.WEIGHT_SETS, name, weights)
    return weights


def serve(server, published, monkeypatch, **changes):
    """The generated file on the server, registered under 'tiny' with its true digest."""
    _, data, file_name = published
    server.files[f"/models/{file_name}"] = data
    fields = {"url": f"{server.url}/models/{file_name}", "digest": file_name.split("-")[1][:-4], **changes}
    return register(monkeypatch, **fields)


def cache_contents(cache):
    """Everything in the cache but the lock files (which may stay, empty, by design)."""
    paths = glob.glob(str(cache / "**"), recursive=True) + glob.glob(str(cache / "**" / ".*"), recursive=True)
    return sorted({os.path.relpath(path, cache) for path in paths if not path.endswith(".lock")} - {"."})


def test_pretrained_matches_torch_and_is_reused_offline(server, published, cache, monkeypatch):
    features, data, file_name = published
    serve(server, published, monkeypatch)
    leftover = cache / "downloads" / f".{file_name}.0123abcd.partial"  # from a process killed mid-download
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(data[:1000])
    model, variables, spec = vgg_jax.pretrained("tiny")
    assert spec.normalization == normalization.TORCHVISION and not model.include_top
    assert spec.class_names[281] == "tabby, tabby cat"
    assert (cache / "downloads" / file_name).read_bytes() == data
    assert not any(name.endswith(".partial") for name in cache_contents(cache))

    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
    with torch.no_grad():
        expected = features.double()(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    ours = np.asarray(vgg_jax.jit(model.apply)(variables, images.astype(np.float32)))
    assert np.abs(expected).max() > 0.1
    # float32 rounding against a float64 reference: sums of up to 3*3*512 terms, 8 conv layers.
    assert_float32_close(ours, expected, terms=3 * 3 * 512, layers=8)

    server.shutdown()  # offline from here on: the converted directory is reused as it is
    _, again, _ = vgg_jax.pretrained("tiny")
    np.testing.assert_array_equal(again["params"]["conv5_2"]["kernel"], variables["params"]["conv5_2"]["kernel"])
    assert server.requests == [f"/models/{file_name}"]


def test_mirror_replaces_the_publishers_host(server, published, tmp_path, monkeypatch):
    _, data, file_name = published
    server.files[f"/internal/vgg/{file_name}"] = data
    weights = register(monkeypatch, f"https://download.pytorch.org/models/{file_name}",
                       file_name.split("-")[1][:-4])
    monkeypatch.setenv(download.MIRROR_VARIABLE, f"{server.url}/internal/vgg/")
    download.fetch(weights, str(tmp_path / "file.pth"), progress=False)
    assert (tmp_path / "file.pth").read_bytes() == data
    assert server.requests == [f"/internal/vgg/{file_name}"]


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("failure, message", [
    ("digest", r"is not the published file: its sha256 is [0-9a-f]{64}, the publisher's starts 0000000000"),
    ("truncated", r"cannot download \S+: the connection closed after \d+ of \d+ bytes"),
    ("missing", r"cannot download \S+: HTTP 404 Not Found"),
    ("refused", r"cannot download \S+: \[Errno 111\] Connection refused"),
])
def test_a_failed_download_names_the_url_and_leaves_the_cache_as_it_was(
        failure, message, server, published, cache, monkeypatch):
    _, _, file_name = published
    changes = {"digest": {"digest": "0000000000"},
               "missing": {"url": f"{server.url}/models/elsewhere-{file_name}"},
               "refused": {"url": f"http://127.0.0.1:{closed_port()}/models/{file_name}"}}.get(failure, {})
    weights = serve(server, published, monkeypatch, **changes)
    if failure == "truncated":
        server.truncated.add(f"/models/{file_name}")
    with pytest.raises(WeightsError, match=message) as error:
        ensure_model("tiny")
    text = str(error.value)
    assert weights.url in text and f"{BY_HAND} {weights.file_name} --arch vgg11 --out DIR" in text
    assert "\n" not in text
    assert cache_contents(cache) == ["downloads"]  # no file, no model directory, no temporaries


@pytest.mark.slow
def test_two_processes_at_once_download_and_convert_once(server, published, cache, monkeypatch):
    weights = serve(server, published, monkeypatch)
    server.seconds_per_chunk = 0.03  # about a second per download, so the two overlap
    # Each process registers the same entry, says it is ready, and starts when told to.
    script = ("import sys, vgg_jax.core.normalization as n; from vgg_jax.weights import registry, ensure_model\n"
              f"registry.WEIGHT_SETS['tiny'] = registry.WeightSet('tiny', 'vgg11', {weights.url!r}, 'sha256', "
              f"{weights.digest!r}, n.TORCHVISION)\n"
              "print('ready', flush=True); sys.stdin.readline()\n"
              "print(ensure_model('tiny', progress=False), flush=True)\n")
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(cache / "tiny")}
    assert len(server.requests) == 1  # the second process waited, then found the finished work
    assert not any(name.endswith(".partial") for name in cache_contents(cache))
    assert [name for name in os.listdir(cache / "downloads") if not name.endswith(".lock")] == [weights.file_name]
    _, variables, _ = vgg_jax.pretrained("tiny")
    assert variables["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)


def test_cli_reports_a_failed_download_in_one_line(tmp_path):
    env = {**os.environ, download.HOME_VARIABLE: str(tmp_path),
           download.MIRROR_VARIABLE: f"http://127.0.0.1:{closed_port()}"}
    done = subprocess.run([sys.executable, "-m", "vgg_jax.weights", "download", "vgg16"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1:] == [done.stderr.strip()]  # one line, no traceback
    assert done.stderr.startswith(f"error: cannot download {env[download.MIRROR_VARIABLE]}/vgg16-397923af.pth: ")
    assert f"{BY_HAND} vgg16-397923af.pth --arch vgg16 --out DIR" in done.stderr


def test_an_existing_directory_that_is_not_the_model_is_left_alone(server, published, cache, monkeypatch, tmp_path):
    serve(server, published, monkeypatch)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(WeightsError, match=r"mine exists and is not a vgg11 model directory: remove it"):
        ensure_model("tiny", tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"] and server.requests == []


def test_cli_lists_the_registry_and_names_unknown_sets(capsys):
    from vgg_jax.weights.cli import main

    main(["list"])
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(registry.WEIGHT_SETS)
    with pytest.raises(SystemExit) as exit_:
        main(["download", "vgg17"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: no pretrained weights named 'vgg17'; choose one of {', '.join(registry.WEIGHT_SETS)}\n"

