"""One-shot accelerator check; run by benchmarks/device_check.sh, which writes $OUT/device_report.md.

(a) the environment: GPU, driver, jax, flax;
(b) vgg16 bfloat16 and float32 train-step and inference img/s at batch 256, with MFU: model
    FLOPs (XLA's cost analysis of the compiled programs; the closed form beside it) over the
    bfloat16 dense peak (989 TFLOP/s on an H200);
(c) the compiled train step's memory (XLA's memory analysis, remat off and on) beside the
    README's CPU projections, and the largest batch that actually runs a step;
(d) train.py on the synthetic source (vgg16 bfloat16): a few hundred steps with evaluations and
    checkpoints, a SIGTERM, a resume to the end, then eval.py on the workdir;
(e) the test files that need no TensorFlow.

Each section runs in its own process (the next one gets the whole accelerator memory) under a
share of the time budget; a failing section is reported and the next one runs. --toy runs the
same sequence at toy size (the CPU dry run: device_check.sh --cpu-dry-run, TensorFlow blocked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_TFLOPS = 989.0  # H200 dense bfloat16 (the float32 rows are read against it too)
# The README's XLA:CPU projections (python -m benchmarks.memory): largest vgg16 train batch on an H200.
CPU_PROJECTION = {("bfloat16", False): 1540, ("bfloat16", True): 2394, ("float32", False): 1440, ("float32", True): 2157}
# Test files that import no TensorFlow and use no tf.data source.
TF_FREE_TESTS = ("test_models.py", "test_train_step.py", "test_remat.py", "test_winograd.py", "test_features.py",
                 "test_nnx.py", "test_weights.py", "test_download.py", "test_lpips.py", "test_without_tensorflow.py",
                 "test_data.py")


@dataclasses.dataclass(frozen=True)
class Size:
    """What the sections run: the real check, or the dry run's toy."""
    arch: str
    width: float
    image: int
    batch: int
    dtypes: tuple[str, ...]
    timed_steps: int
    memory_batches: tuple[int, int]
    max_batch: int | None  # cap on the largest-batch search (None: the device's memory decides)
    train_steps: int
    train_batch: int
    eval_batch: int
    stop_after: int  # send SIGTERM once this step is logged
    test_timeout: int
    collect_only: bool  # (e): import the test files only
    budget_scale: float  # of BUDGET: a loaded CPU compiles the toy programs slowly


FULL = Size("vgg16", 1.0, 224, 256, ("bfloat16", "float32"), 10, (128, 256), None, 200, 256, 500, 80, 100, False, 1.0)
TOY = Size("vgg11", 1 / 32, 32, 8, ("bfloat16",), 1, (8, 16), 8, 30, 8, 100, 6, 60, True, 4.0)


def python() -> list[str]:
    """The command that starts Python as this process runs: with TensorFlow blocked if it is here."""
    blocked = "tensorflow" in sys.modules and sys.modules["tensorflow"] is None
    return [sys.executable, "-m", "benchmarks.without_tensorflow"] if blocked else [sys.executable]


# --- (a) -----------------------------------------------------------------------------------

def environment(size: Size) -> str:
    del size  # the same for every size
    import flax
    import jax

    gpu = "no NVIDIA GPU"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True)
        gpu = query.stdout.strip() or query.stderr.strip()
    device = jax.devices()[0]
    return (f"- GPU: {gpu}\n- jax {jax.__version__} (backend {jax.default_backend()}, {jax.device_count()} x "
            f"{device.device_kind}), flax {flax.__version__}, Python {platform.python_version()}, "
            f"CPU {platform.processor() or platform.machine()} x {os.cpu_count()}\n")


# --- (b) -----------------------------------------------------------------------------------

def compiled_programs(size: Size, dtype: str, batch: int, remat: bool = False):
    """(model, state, data batch, compiled forward, compiled train step) on device-resident
    random data, the train step donating its state as in training."""
    import jax
    import jax.numpy as jnp

    import vgg_jax
    from benchmarks.workloads import train_setup
    from vgg_jax.train import steps

    model, tx, train = train_setup(size.arch, width=size.width, image_size=size.image, dtype=jnp.dtype(dtype),
                                   remat=remat)
    keys = jax.random.split(jax.random.PRNGKey(0))
    batch_data = {"image": jax.random.normal(keys[0], (batch, size.image, size.image, 3), jnp.float32),
                  "label": jax.random.randint(keys[1], (batch,), 0, model.num_classes)}
    state = steps.create_train_state(model, tx, seed=0)
    step = steps.jitted_train_step(model, tx, train).lower(state, batch_data).compile()
    forward = vgg_jax.jit(model.apply).lower(state.variables(), batch_data["image"]).compile()
    return model, state, batch_data, forward, step


def seconds_per_call(call, steps: int) -> float:
    """Median seconds of `steps` calls after two warm-up calls."""
    call(), call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(size: Size) -> str:
    from benchmarks.workloads import ARCHS, forward_flops

    closed_form = forward_flops(ARCHS[size.arch], size.image) if size.width == 1 else None
    lines = [f"{size.arch} (width {size.width:g}) at {size.image}x{size.image}, batch {size.batch}, median of "
             f"{size.timed_steps} steps after 2 warm-ups; MFU = model FLOP/s over {PEAK_TFLOPS:g} TFLOP/s "
             f"(bf16 dense peak). FLOPs per image from XLA's cost analysis"
             + (f"; closed form: {closed_form / 1e9:.1f} GFLOP forward, 3x for a train step" if closed_form else ""),
             "", "| dtype | program | img/s | XLA GFLOP/img | MFU |", "|---|---|---|---|---|"]
    for dtype in size.dtypes:
        _, state, batch, forward, step = compiled_programs(size, dtype, size.batch)
        holder = [state]

        def train_call():
            holder[0], metrics = step(holder[0], batch)
            metrics["loss"].block_until_ready()

        def forward_call():
            forward(holder[0].variables(), batch["image"]).block_until_ready()

        for name, program, call in (("train step", step, train_call), ("inference", forward, forward_call)):
            images_per_s = size.batch / seconds_per_call(call, size.timed_steps)
            flops = xla_flops(program) / size.batch
            lines.append(f"| {dtype} | {name} | {images_per_s:,.1f} | {flops / 1e9:.3g} | "
                         f"{images_per_s * flops / (PEAK_TFLOPS * 1e12):.1%} |")
            print(lines[-1], flush=True)
        del holder, state, batch
    return "\n".join(lines) + "\n"


def xla_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


# --- (c) -----------------------------------------------------------------------------------

def memory(size: Size) -> str:
    import jax

    from benchmarks.memory import largest_batch, train_step_memory

    device = jax.devices()[0]
    capacity = (device.memory_stats() or {}).get("bytes_limit")
    small, large = size.memory_batches
    lines = [f"{size.arch} train step, bfloat16, XLA memory analysis at batches {small} and {large} on "
             f"{device.device_kind} (usable memory {capacity / 1e9:.1f} GB)" if capacity else
             f"{size.arch} train step, bfloat16, XLA memory analysis at batches {small} and {large} on "
             f"{device.device_kind} (no memory limit reported)", "",
             "| remat | state GB | temporaries GB at both | MB per image | largest batch: projected here / README's CPU projection |",
             "|---|---|---|---|---|"]
    projected = {}
    for remat in (False, True):
        kwargs = dict(size=size.image, image_size=size.image, width=size.width, dtype=jax.numpy.bfloat16, remat=remat)
        fixed, t_small = train_step_memory(size.arch, small, **kwargs)
        _, t_large = train_step_memory(size.arch, large, **kwargs)
        projected[remat] = largest_batch(fixed, t_small, t_large, small, large, capacity) if capacity else None
        lines.append(f"| {remat} | {fixed / 1e9:.3g} | {t_small / 1e9:.3g} / {t_large / 1e9:.3g} | "
                     f"{(t_large - t_small) / (large - small) / 1e6:.3g} | {projected[remat]} / "
                     f"{CPU_PROJECTION['bfloat16', remat]} |")
        print(lines[-1], flush=True)
    lines += ["", largest_running_batch(size, projected[False])]
    return "\n".join(lines) + "\n"


def largest_running_batch(size: Size, projected: int | None) -> str:
    """Runs one bfloat16 train step (remat off) at the projected largest batch, then at 90% of
    the last try while it fails, three tries at most."""
    batch = projected if projected else size.batch
    if size.max_batch:
        batch = min(batch, size.max_batch)
    batch -= batch % 8
    tried = []
    for _ in range(3):
        try:
            _, state, data, _, step = compiled_programs(size, "bfloat16", batch)
            _, metrics = step(state, data)
            metrics["loss"].block_until_ready()
            return f"Largest batch run (bfloat16, remat off): {batch} ran a train step" + (
                f" (failed first: {tried})" if tried else "")
        except Exception as error:  # noqa: BLE001 - out of memory shows as XlaRuntimeError or similar
            tried.append(f"{batch}: {str(error).splitlines()[0][:120]}")
            batch = int(batch * 0.9) // 8 * 8
    return f"No batch ran: {tried}"


# --- (d) -----------------------------------------------------------------------------------

def harness(size: Size) -> str:
    """train.py on the synthetic source, SIGTERM, resume, then eval.py; returns the report lines."""
    workdir = tempfile.mkdtemp(prefix="device_check_run_")
    scale = size.image + size.image // 7  # 256 for a 224 crop
    args = [*python(), "train.py", "--config", "configs/synthetic.py", "--workdir", workdir,
            f"--config.model.arch={size.arch}", f"--config.model.width={size.width}",
            f"--config.model.image_size={size.image}", "--config.model.dtype=bfloat16",
            "--config.model.init_scheme=kaiming", "--config.model.dropout_rate=0.5",
            f"--config.data.crop_size={size.image}", f"--config.data.scale_min={scale}",
            f"--config.data.scale_max={scale}", f"--config.data.eval_scale={scale}",
            f"--config.train.batch_size={size.train_batch}", f"--config.train.eval_batch_size={size.eval_batch}",
            f"--config.train.num_steps={size.train_steps}", "--config.train.learning_rate=0.01",
            f"--config.train.log_every={max(1, size.stop_after // 4)}",
            # 1000 train images per epoch: an evaluation and a checkpoint every ~100 steps
            f"--config.train.eval_every_epochs={size.train_steps / 3 * size.train_batch / 1000}"]
    lines = [f"`{' '.join(args[args.index('train.py'):])}`", ""]
    start = time.time()
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in first.stdout:
        log.append(line)
        progress = re.search(rf"step (\d+)/{size.train_steps}\b", line)
        if progress and int(progress.group(1)) >= size.stop_after:
            first.send_signal(signal.SIGTERM)
            break
    log += first.stdout.readlines()
    first.wait()
    lines.append(f"- first run: exit {first.returncode} after {time.time() - start:.0f} s; "
                 + summary(log, ("received", "val top1", "img/s")))
    start = time.time()
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    log = (second.stdout + second.stderr).splitlines()
    lines.append(f"- resumed run: exit {second.returncode} after {time.time() - start:.0f} s; "
                 + summary(log, ("resumed", "val top1", "img/s")))
    results = os.path.join(workdir, "results.json")
    if os.path.exists(results):
        with open(results) as f:
            r = json.load(f)
        lines.append(f"- results.json: step {r['step']}, val top1 {r['val_top1']:.4f} (best {r['best_val_top1']:.4f} "
                     f"at step {r['best_step']}), interrupted {r['interrupted']}")
    evaluation = subprocess.run([*python(), "eval.py", "--workdir", workdir, f"--scales={scale}",
                                 "--num_images=100", f"--batch_size={min(size.train_batch, 16)}"],
                                cwd=ROOT, capture_output=True, text=True)
    lines.append(f"- eval.py --workdir (100 images, Q={scale}): exit {evaluation.returncode}")
    table = [line for line in evaluation.stdout.splitlines() if line.strip()]
    lines += ["", "```", *(table or (evaluation.stderr.splitlines()[-5:])), "```"]
    shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(lines) + "\n"


def summary(log: list[str], keys: tuple[str, ...]) -> str:
    """The last log line holding each key (trimmed of the logger's prefix), or the error line."""
    picked = []
    for key in keys:
        found = [line.strip() for line in log if key in line]
        if found:
            picked.append(re.sub(r"^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", found[-1]))
    errors = [line.strip() for line in log if line.startswith(("error:", "Traceback"))]
    return "; ".join(picked + errors) or "(no log lines)"


# --- (e) -----------------------------------------------------------------------------------

def tests(size: Size) -> str:
    files = [os.path.join("tests", name) for name in TF_FREE_TESTS if os.path.exists(os.path.join(ROOT, "tests", name))]
    command = [*python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
               "--deselect", "tests/test_without_tensorflow.py::test_the_dry_run_trains_resumes_and_evaluates_without_tensorflow"]
    if size.collect_only:
        command.append("--collect-only")
    # The tests' tolerances assume float32 products (no TF32); tests that start JAX processes share the GPU.
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=size.test_timeout, env=env)
        output, outcome = run.stdout + run.stderr, f"exit {run.returncode}"
    except subprocess.TimeoutExpired as error:
        output, outcome = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or ""), \
            f"stopped after {size.test_timeout} s"
    tail = [line for line in output.splitlines() if line.strip()][-12:]
    return f"`pytest {'--collect-only ' if size.collect_only else ''}{' '.join(files)}`: {outcome}\n\n```\n" + \
        "\n".join(tail) + "\n```\n"


SECTIONS = {"a": ("(a) Environment", environment), "b": ("(b) Throughput and MFU", throughput),
            "c": ("(c) Train-step memory", memory), "d": ("(d) train.py on the synthetic source", harness),
            "e": ("(e) Tests that need no TensorFlow", tests)}
BUDGET = {"a": 20, "b": 120, "c": 100, "d": 130, "e": 110}  # seconds: 8 min at most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="toy sizes: the CPU dry run")
    parser.add_argument("--section", choices=sorted(SECTIONS), help="run one section here, print its markdown")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for device_report.md")
    args = parser.parse_args()
    size = TOY if args.toy else FULL
    if args.section:
        title, run = SECTIONS[args.section]
        print(f"## {title}\n\n{run(size)}", flush=True)
        return
    report = [f"# Device check{' (CPU dry run, toy sizes, TensorFlow blocked)' if args.toy else ''}\n"]
    for key, (title, _) in SECTIONS.items():
        start = time.time()
        command = [*python(), "-m", "benchmarks.device_check", "--section", key] + (["--toy"] if args.toy else [])
        try:
            # (c) may use the whole accelerator memory (JAX preallocates 75% of it by default)
            env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": ".95"} if key == "c" else None
            run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env,
                                 timeout=BUDGET[key] * size.budget_scale)
            markdown = run.stdout[run.stdout.find("## "):] if "## " in run.stdout else f"## {title}\n\n"
            if run.returncode:
                markdown += f"\nFAILED (exit {run.returncode}):\n```\n" + "\n".join(run.stderr.splitlines()[-15:]) + "\n```\n"
        except subprocess.TimeoutExpired:
            markdown = f"## {title}\n\nstopped at its {BUDGET[key] * size.budget_scale:.0f} s budget\n"
        report.append(markdown + f"\n({time.time() - start:.0f} s)\n")
        print(report[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_report.md"), "w") as f:
        f.write("\n".join(report))
    print(f"wrote {os.path.join(args.out, 'device_report.md')}")


if __name__ == "__main__":
    main()
