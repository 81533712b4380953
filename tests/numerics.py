"""Tolerances that follow from float32 arithmetic, so that a comparison passes on every CPU.

Two float32 evaluations of the same network (another kernel, device count, instruction set or
framework) differ by rounding alone. One output of a layer sums `terms` products; the rounding
error of such a sum grows like eps * sqrt(terms) relative to its magnitude (a random walk of
per-addition errors), and the relative errors of `layers` layers in series add up. The factor 4
covers the tail of the random walk over many outputs. A real bug (a wrong layout, a missing
layer) moves outputs by their own magnitude, far outside this bound.
"""

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float32_tolerance(expected, terms: int, layers: int = 1) -> float:
    """Absolute bound on float32 rounding differences, scaled by the largest |expected|."""
    return 4 * EPS32 * math.sqrt(terms) * layers * float(np.max(np.abs(np.asarray(expected))))


def assert_float32_close(actual, expected, terms: int, layers: int = 1) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0,
                               atol=float32_tolerance(expected, terms, layers))
