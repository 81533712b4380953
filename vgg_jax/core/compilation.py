"""`jit`: jax.jit with the XLA compiler options vgg_jax relies on, set per program.

XLA:CPU in jaxlib 0.10 hands convolutions and matmuls to YNNPACK by default. On VGG's 3x3
layers (batch 8, 2-core AVX2 machine) its forward convolution ran at 0.6-0.9x XLA's own
(Eigen) convolution and its kernel gradient 4-17x slower, which made vgg16 0.7-0.8x PyTorch.
An empty list of YNNPACK fusion types keeps them on Eigen: the vgg16 train step went from 17.6
to 6.9 s, the forward pass from 2.7 to 1.6-1.9 s (see README, Performance). Everything stays float32; results
differ from the default only by summation order. The option is given to XLA:CPU alone (and only if the installed jaxlib
accepts it), set per jitted program, never through the process-wide XLA_FLAGS, so other JAX code in the
same process keeps its own defaults.

XLA:CPU also expands jax.checkpoint's optimization barriers into nothing before its CSE pass,
which then merges the recomputed forward pass of a rematerialised block back into the saved one:
`VGG(remat=True)` saved no memory (same compiled program). Disabling that one pass keeps the
barriers, so remat works on CPU (vgg16 train step at batch 64: 6.2 -> 4.1 GB of temporaries); a
program without barriers compiles as before.

Use `vgg_jax.jit` (or pass `compiler_options=vgg_jax.COMPILER_OPTIONS` to `jax.jit`) for your
own programs that run a VGG on CPU.
"""

from __future__ import annotations

import functools
import logging

import jax

COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_disable_hlo_passes": "cse_barrier_expander"}


@functools.cache
def compiler_options(backend: str) -> dict:
    """COMPILER_OPTIONS for XLA:CPU when this jaxlib accepts them (checked once by compiling a
    tiny program); {} for other backends, and {} with one warning if a jaxlib renamed them."""
    if backend != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as error:  # XLA rejects unknown options with a generic runtime error
        logging.getLogger("vgg_jax").warning(
            "this jaxlib rejects %s (%s); compiling with XLA's defaults, which are slower on CPU",
            COMPILER_OPTIONS, str(error).splitlines()[0])
        return {}
    return COMPILER_OPTIONS


def jit(fun, **kwargs):
    """`jax.jit(fun, **kwargs)` with COMPILER_OPTIONS added to any `compiler_options` given,
    when compiling for CPU. The backend is looked up at the first call (or `.lower`), not here:
    a module-level `@vgg_jax.jit` must not start the backend before `jax.distributed.initialize`."""
    return LazyJit(fun, kwargs)


class LazyJit:
    """Builds the jax.jit of `fun` on first use; otherwise behaves as that jitted function."""

    def __init__(self, fun, kwargs: dict):
        self.fun, self.kwargs = fun, kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        kwargs = dict(self.kwargs)
        options = compiler_options(jax.default_backend()) | kwargs.pop("compiler_options", {})
        return jax.jit(self.fun, compiler_options=options, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def __getattr__(self, name):  # lower, trace, eval_shape, ...
        return getattr(self.jitted, name)
