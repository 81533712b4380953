"""Pretrained weight sets fetched from their publishers, verified, and converted once into a cache.

The cache ($VGG_JAX_HOME, default ~/.cache/vgg_jax) holds
  downloads/<file name>   the publisher's file, there only once its digest matched;
  <name>/                 the model directory converted from it, which `pretrained` loads; it
                          records the file (name, digest) and its own content's digest, both
                          checked on every use, so a planted or edited directory is refused.
Each appears by an atomic rename of a finished temporary, under a file lock (filelock) per
target: an interrupted run leaves nothing that looks finished, and two processes asking at once
download and convert once. Downloads use urllib (stdlib): a streamed GET with a length check is
all this needs, and it adds no dependency. VGG_JAX_WEIGHTS_MIRROR=<base URL> fetches
<base URL>/<file name> instead of the publisher's URL.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import urllib.error
import urllib.request

import filelock
import tqdm

from vgg_jax.core import checkpoints
from vgg_jax.core.class_names import imagenet_class_names
from vgg_jax.core.directory_writes import remove, temporary_path
from vgg_jax.weights import conversion, model_directory, registry
from vgg_jax.weights.errors import WeightsError

HOME_VARIABLE = "VGG_JAX_HOME"
MIRROR_VARIABLE = "VGG_JAX_WEIGHTS_MIRROR"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per blocking read, not for the whole file


def cache_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(HOME_VARIABLE) or "~/.cache/vgg_jax"))


def download_url(weights: registry.WeightSet) -> str:
    mirror = os.environ.get(MIRROR_VARIABLE)
    return f"{mirror.rstrip('/')}/{weights.file_name}" if mirror else weights.url


def by_hand(weights: registry.WeightSet) -> str:
    return (f"fetch {weights.file_name} another way and run: python -m vgg_jax.weights import "
            f"{weights.file_name} --arch {weights.arch} --out DIR")


@contextlib.contextmanager
def locked(path: str):
    """Holds the lock of `path` (a hidden `.lock` file beside it). Temporaries of runs that died
    are removed on entry: whoever wrote them held this lock, so none is still being written."""
    parent, base = os.path.split(path)
    lock = filelock.FileLock(os.path.join(parent, f".{base}.lock"))
    try:
        os.makedirs(parent, exist_ok=True)
        lock.acquire()
    except OSError as error:
        raise WeightsError(f"cannot write to {parent}: {error}; set {HOME_VARIABLE} (or --out) to a "
                           "writable directory") from error
    try:
        for leftover in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.*.partial")):
            remove(leftover)
        yield
    finally:
        lock.release()


def copy_hashing(response, file, url: str, algorithm: str, progress: bool) -> str:
    """Streams the response body into `file` behind a progress bar; its hex digest. A body
    shorter than its Content-Length (urllib does not raise for that) is an error."""
    length = response.headers.get("Content-Length")
    total = int(length) if length else None
    hasher, received = hashlib.new(algorithm), 0
    with tqdm.tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                   desc=url.rsplit("/", 1)[-1]) as bar:
        while chunk := response.read(CHUNK_BYTES):
            file.write(chunk)
            hasher.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"the connection closed after {received} of {total} bytes")
    return hasher.hexdigest()


def fetch(weights: registry.WeightSet, path: str, progress: bool = True) -> None:
    """Downloads `weights`' file to `path`, which appears only once the digest matched."""
    url, temporary = download_url(weights), temporary_path(path)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(temporary, "wb") as file:
            digest = copy_hashing(response, file, url, weights.algorithm, progress)
        if not digest.startswith(weights.digest):
            raise WeightsError(
                f"{url} is not the published file: its {weights.algorithm} is {digest}, the publisher's "
                f"starts {weights.digest} (a corrupt download or a wrong mirror); {by_hand(weights)}")
        os.replace(temporary, path)
    except urllib.error.HTTPError as error:
        raise WeightsError(f"cannot download {url}: HTTP {error.code} {error.reason}; {by_hand(weights)}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError, refused, timeouts, cut connections
        reason = getattr(error, "reason", None) or error
        raise WeightsError(f"cannot download {url}: {reason}; {by_hand(weights)}") from None
    finally:
        remove(temporary)


def convert_into(weights: registry.WeightSet, file: str, directory: str) -> None:
    """Converts the verified `file` into the model directory `directory`, atomically, recording
    the file's name and digest (`cache_record` checks them on every use)."""
    temporary = temporary_path(directory)
    try:
        source = {"file": weights.file_name, weights.algorithm: file_digest(file, weights.algorithm)}
        spec = conversion.import_to_checkpoint(file, weights.arch, temporary, class_names=list(imagenet_class_names()),
                                               source=source)
        if spec.normalization != weights.normalization:
            raise WeightsError(f"{file} is a {spec.normalization} file, the registry expects {weights.normalization}")
        os.replace(temporary, directory)
    finally:
        remove(temporary)


def file_digest(path: str, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def cache_record(directory: str, weights: registry.WeightSet) -> dict:
    """The record (`source` in the meta item) of a model directory converted from `weights`'
    published file; a WeightsError saying how to get it again for any other directory, planted
    or converted from another file (checked before any array is read)."""
    try:
        _, _, meta = model_directory.open_model(directory)
        problem = record_problem(meta, weights)
    except checkpoints.CheckpointError as error:
        problem = str(error)
    if problem:
        raise WeightsError(not_converted_here(directory, weights, problem))
    return meta["source"]


def record_problem(meta: dict, weights: registry.WeightSet) -> str | None:
    source, spec = meta.get("source"), meta.get("spec")
    if not isinstance(source, dict) or source.get("file") != weights.file_name:
        return f"it has no record of a conversion from {weights.file_name}"
    if not str(source.get(weights.algorithm)).startswith(weights.digest):
        return f"its record gives another {weights.algorithm} for {weights.file_name}"
    if not isinstance(spec, dict) or spec.get("arch") != weights.arch:
        return f"its spec is not a {weights.arch}"
    return None


def not_converted_here(directory: str, weights: registry.WeightSet, problem: str) -> str:
    again = f"python -m vgg_jax.weights download {weights.name}"
    if directory != os.path.join(cache_home(), weights.name):
        again += f" --out {directory}"
    return (f"{directory} exists and is not a {weights.arch} model directory: remove it and run `{again}` "
            f"to fetch and convert it again, or choose another directory ({problem})")


def ensure_model(name: str, directory: str | os.PathLike | None = None, progress: bool = True) -> str:
    """The model directory of the pretrained set `name` (default: `<cache>/<name>`): downloaded,
    verified and converted on first use, reused afterwards (no network) once `cache_record`
    finds its record of the published file."""
    weights = registry.lookup(name)
    directory = os.path.abspath(os.fspath(directory or os.path.join(cache_home(), name)))
    if os.path.lexists(directory):  # complete: it appears by rename (and a read-only cache needs no lock)
        cache_record(directory, weights)
        return directory
    with locked(directory):
        if os.path.lexists(directory):  # another process made it while this one waited
            cache_record(directory, weights)
            return directory
        file = os.path.join(cache_home(), "downloads", weights.file_name)
        with locked(file):
            if not os.path.isfile(file):
                fetch(weights, file, progress)
        convert_into(weights, file, directory)
    return directory


def load_pretrained(name: str) -> tuple[dict, model_directory.ModelSpec, int]:
    """(variables, spec, step) of the pretrained set `name` (`ensure_model`), whose content must
    be what was converted: its spec and arrays hash to the digest recorded at conversion."""
    weights = registry.lookup(name)
    directory = ensure_model(name)
    record = cache_record(directory, weights)
    try:
        variables, spec, step = model_directory.load_variables(directory)
    except checkpoints.CheckpointError as error:
        raise WeightsError(not_converted_here(directory, weights, str(error))) from None
    if record.get(model_directory.CONTENT_DIGEST) != model_directory.content_digest(variables, spec):
        raise WeightsError(not_converted_here(directory, weights, "its content changed since it was converted"))
    return variables, spec, step


def pretrained(name: str, **overrides):
    """(model, variables, spec) of a pretrained weight set (`registry.WEIGHT_SETS`), ready for
    `model.apply(variables, images)`; `overrides` are VGG fields (e.g. dtype)."""
    variables, spec, _ = load_pretrained(name)
    model = spec.build(**overrides)
    checkpoints.check_fits(model, variables, source=f"pretrained:{name}")
    return model, variables, spec
