"""Winograd convolution F(m x m, 3 x 3) (Lavin & Gray, 2016) in plain JAX ops.

A 3x3 stride-1 SAME convolution computed on tiles: each (m+2) x (m+2) input tile d and the 3x3
kernel g are carried into a transformed domain, multiplied there elementwise (for every channel
pair: one batched matmul over the (m+2)^2 positions, channels contracted), and carried back:

    Y = A^T [ (G g G^T) . (B^T d B) ] A      (per tile, per input/output channel pair)

F(2x2, 3x3) takes 16 multiplies per 2x2 outputs instead of 36 (2.25x fewer), F(4x4, 3x3) 36
per 4x4 instead of 144 (4x fewer), at the cost of the transforms and of rounding: the
transforms' coefficients grow with m (float32, one VGG layer: F(4x4) ~1e-5 of the output's
scale, F(2x2) and the direct convolution ~7e-7). conv3x3's backward (a custom VJP) is Winograd
too: the input gradient a Winograd convolution, the kernel gradient in the transformed domain.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# (B^T, G, A^T) of F(m, 3) for the cross-correlation that CNN "convolutions" compute.
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}


# Where F(4x4, 3x3) paid on a 2-core AVX-512 CPU (batch 8, against XLA's direct convolution):
# forward 0.94-1.45x and gradient 1.4-1.75x on 112x112x128 .. 28x28x512 inputs; at 224x224x64
# (0.5-0.7x), 112x112x64 (0.63x forward) and 14x14x512 (0.84x) the transforms outweigh the
# saved multiplies. F(2x2, 3x3) was slower than F(4x4) on every VGG layer.
TILE = 4
MIN_CHANNELS, MIN_SIDE = 128, 28


def pays(x: jax.Array) -> bool:
    """Whether a 3x3 convolution of NHWC `x` runs faster as Winograd (float32 only: the
    transforms' coefficients up to 8 would cost bfloat16 most of its 8-bit mantissa)."""
    return x.dtype == jnp.float32 and x.shape[-1] >= MIN_CHANNELS and min(x.shape[1:3]) >= MIN_SIDE


def combine(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """sum_r matrix[a, r] * x[..., r, ...] along `axis`, written out as adds of the nonzero
    terms (the coefficients are small integers and fractions), so XLA fuses it into one loop."""
    parts = jnp.moveaxis(x, axis, 0)
    rows = []
    for coefficients in matrix:
        terms = [parts[r] if c == 1 else -parts[r] if c == -1 else float(c) * parts[r]  # weakly typed
                 for r, c in enumerate(coefficients) if c]
        rows.append(sum(terms[1:], terms[0]))
    return jnp.moveaxis(jnp.stack(rows), 0, axis)


def overlapping_tiles(x: jax.Array, m: int, axis: int) -> jax.Array:
    """Split `axis` (length (t+1)*m) into t tiles of m+2 with stride m: a new axis of tiles
    before a within-tile axis. Tile i is block i plus the first two rows of block i+1."""
    t = x.shape[axis] // m - 1
    blocks = x.reshape(x.shape[:axis] + (t + 1, m) + x.shape[axis + 1:])
    head = jax.lax.slice_in_dim(blocks, 0, t, axis=axis)
    tail = jax.lax.slice_in_dim(jax.lax.slice_in_dim(blocks, 1, t + 1, axis=axis), 0, 2, axis=axis + 1)
    return jnp.concatenate([head, tail], axis=axis + 1)


def input_transform(x: jax.Array, m: int) -> jax.Array:
    """NHWC x -> (a*a, tiles, C): B^T d B of every (m+2) x (m+2) tile of the SAME-padded input."""
    n, height, width, channels = x.shape
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    padded = jnp.pad(x, ((0, 0), (1, (tiles_h + 1) * m - height - 1), (1, (tiles_w + 1) * m - width - 1), (0, 0)))
    tiles = overlapping_tiles(overlapping_tiles(padded, m, 1), m, 3)  # (N, th, a, tw, a, C)
    b_t = TRANSFORMS[m][0]
    v = combine(b_t, combine(b_t, tiles, 2), 4)
    return v.transpose(2, 4, 0, 1, 3, 5).reshape((m + 2) ** 2, n * tiles_h * tiles_w, channels)


def output_transform(products: jax.Array, shape: tuple[int, int, int], m: int) -> jax.Array:
    """(a*a, tiles, K) -> NHWC (N, H, W, K) = (N, H, W) `shape`: A^T M A of every tile, cropped."""
    n, height, width = shape
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    a_t = TRANSFORMS[m][2]
    products = products.reshape(m + 2, m + 2, n, tiles_h, tiles_w, -1)
    y = combine(a_t, combine(a_t, products, 0), 1)  # (m, m, N, th, tw, K)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, tiles_h * m, tiles_w * m, -1)
    return y[:, :height, :width]


def output_transform_transposed(dy: jax.Array, m: int) -> jax.Array:
    """The adjoint of output_transform: NHWC dy -> (a*a, tiles, K), A dY A^T of every m x m tile."""
    n, height, width, features = dy.shape
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    dy = jnp.pad(dy, ((0, 0), (0, tiles_h * m - height), (0, tiles_w * m - width), (0, 0)))
    dy = dy.reshape(n, tiles_h, m, tiles_w, m, features).transpose(2, 4, 0, 1, 3, 5)
    a = TRANSFORMS[m][2].T
    return combine(a, combine(a, dy, 0), 1).reshape((m + 2) ** 2, n * tiles_h * tiles_w, features)


def batched_products(v: jax.Array, u: jax.Array) -> jax.Array:
    """(a*a, tiles, C) x (a*a, C, K) -> (a*a, tiles, K): the elementwise products of the
    transformed domain, summed over input channels, as one batched matmul."""
    return jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))


def kernel_transform(kernel: jax.Array, m: int) -> jax.Array:
    """HWIO 3x3 kernel -> (a*a, C, K): G g G^T."""
    g = TRANSFORMS[m][1]  # combine, not einsum: XLA:CPU ran this einsum 5x slower (89 ms at 512x512)
    return combine(g, combine(g, kernel, 0), 1).reshape((m + 2) ** 2, *kernel.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, kernel: jax.Array, m: int = TILE) -> jax.Array:
    """SAME, stride-1 cross-correlation of NHWC `x` with an HWIO 3x3 `kernel` as Winograd
    F(m x m, 3 x 3); equals lax.conv_general_dilated up to rounding. Its gradients are Winograd
    too (see conv3x3_backward)."""
    kernel = kernel.astype(x.dtype)
    return output_transform(batched_products(input_transform(x, m), kernel_transform(kernel, m)), x.shape[:3], m)


def conv3x3_forward(x, kernel, m):
    return conv3x3(x, kernel, m), (x, kernel)


def conv3x3_backward(m, residuals, dy):
    """Written out rather than left to autodiff, whose transposed tiling and layouts ran 1.1-16x
    slower than the direct convolution's gradient: the input gradient is itself a 3x3 SAME
    convolution (of dy with the kernel flipped and its channels swapped), and the kernel
    gradient is the products' adjoint in the transformed domain, G^T (V^T . A dY A^T) G."""
    x, kernel = residuals
    dx = conv3x3(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), m)
    du = jax.lax.dot_general(input_transform(x, m), output_transform_transposed(dy.astype(x.dtype), m),
                             (((1,), (1,)), ((0,), (0,))))  # (a*a, C, K)
    g_t = TRANSFORMS[m][1].T
    dkernel = combine(g_t, combine(g_t, du.reshape(m + 2, m + 2, *du.shape[1:]), 0), 1)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv3x3.defvjp(conv3x3_forward, conv3x3_backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`, as conv3x3: only the
    NHWC, 3x3, stride-1, SAME, undilated, ungrouped convolution that VGG's layers are."""
    expected = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    same = padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1))
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if (rhs.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or not same or dilated or feature_group_count != 1
            or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != expected):
        raise ValueError("Winograd convolution covers 3x3, stride-1, SAME, NHWC/HWIO convolutions only")
    return conv3x3(lhs, rhs)
