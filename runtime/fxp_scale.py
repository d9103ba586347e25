"""Products with small public constants that stay accurate in fixed point.

SPU encodes a public constant c as c * 2^f truncated toward zero (f fraction bits) and folds a chain of
constant factors into one constant before encoding it. A mean over n elements multiplies a sum by 1/n: with
n = 6272 (a GroupNorm group of 8 channels x 28 x 28) and f = 18, 1/n is 41.8 units of the last place and is
encoded as 41, so every mean is 1.9% low; GroupNorm then subtracts a mean that is off by 1.9% of itself, which is
a large error wherever the mean is large against the standard deviation (measured: 15% of the output's std on
the MNIST U-Net near t = 0).

:func:`scale` multiplies by c * 2^s (in [1, 2), encoded to 2^-f relative) and then by 2^-s, a power of two that
is exact in fixed point, through 1x1 matrix products: SPU folds constant multiplies but not dots. The extra dot
costs one truncation of the (already reduced) result.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

# 2^-s is exact in fixed point when s <= f. Where the program's f is not known (a plain trace), shifts go in steps
# of 8 bits (exact for any f >= 8); a compile traces under fraction_bits(f), which takes the whole shift in one
# dot (one truncation, two rounds) whenever s <= f.
_STEP_BITS = 8
# Constants at least this large lose at most 2^-f / 2^-4 relatively; not worth a truncation.
_SPLIT_BELOW = 2.0 ** -4
_FRACTION_BITS: contextvars.ContextVar[int | None] = contextvars.ContextVar("cipherdm_fxp_bits", default=None)


@contextlib.contextmanager
def fraction_bits(bits: int | None):
    """Trace under this: the program runs with ``bits`` fraction bits."""
    token = _FRACTION_BITS.set(None if bits is None else int(bits))
    try:
        yield
    finally:
        _FRACTION_BITS.reset(token)


def traced_bits() -> int | None:
    """The fraction bits being traced under (:func:`fraction_bits`), or None."""
    return _FRACTION_BITS.get()


def _step_bits(bits: int | None = None) -> int:
    bits = _FRACTION_BITS.get() if bits is None else bits
    return _STEP_BITS if bits is None else max(1, int(bits))


def _shift(c: float) -> int:
    """How many bits scale() moves c up before encoding it (0: c is encoded as it is)."""
    if c == 0.0 or not math.isfinite(c) or abs(c) >= _SPLIT_BELOW:
        return 0
    return math.ceil(-math.log2(abs(c)))


def nearest(c: float) -> float:
    """The value to hand SPU so that its encoding (truncation toward zero at the traced fraction bits) lands on
    the nearest representable value of ``c`` rather than the one below it in magnitude: half a unit of the last
    place more. Unchanged when the bits are not known. Matters for a polynomial's folded coefficients, which
    multiply large powers (exp on [-16, 0]: c_4 / 4^4 is 14.8 units at 18 bits, encoded 5% low)."""
    bits = _FRACTION_BITS.get()
    if bits is None or c == 0.0 or not math.isfinite(c):
        return c
    return c + math.copysign(2.0 ** -(bits + 1), c)


def truncations(c: float, bits: int | None = None) -> int:
    """Fixed-point truncations scale(x, c) costs on a secret x (for the cost model), at ``bits`` fraction bits
    (default: those being traced under, else the 8-bit steps)."""
    return 1 + math.ceil(_shift(c) / _step_bits(bits))


def scale(x, c: float):
    """x * c for a public constant c, with c's relative encoding error ~2^-f whatever its size."""
    c = float(c)
    dtype = x.dtype
    shift = _shift(c)
    if shift == 0 or isinstance(x, np.ndarray):
        return x * np.asarray(c, dtype)
    return _unshift(x * np.asarray(c * 2.0 ** shift, dtype), shift)


def _unshift(y, shift: int):
    """y * 2^-shift through 1x1 products (exact powers of two; SPU does not fold them into other constants)."""
    import jax.numpy as jnp

    dtype = y.dtype
    while shift > 0:
        step = min(shift, _step_bits())
        column = jnp.expand_dims(y, -1)
        y = (column @ np.full((1, 1), 2.0 ** -step, dtype))[..., 0]
        shift -= step
    return y


def _axes_and_count(x, axis) -> tuple[list[int], int]:
    """``axis`` (an int or a tuple) as sorted non-negative axes, and how many elements they span."""
    axes = sorted({a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,))})
    return axes, int(np.prod([x.shape[a] for a in axes], dtype=np.int64))


def weighted_sum(x, axis, keepdims: bool = True, weight: float = 1.0):
    """weight * the sum of a float tensor over ``axis`` (an int or a tuple), as one product with a public column
    of weights, the kept axes first. SPU 0.9.5 reduces a tensor by halving slices, an op per level: [8, 196, 196]
    summed over its last axis took 75 ms for three in-process parties against 6.5 ms as [1568, 196] @ [196, 1]
    (a product with a public operand exchanges nothing; its one truncation costs 2 rounds and errs by at most a
    unit of the last place). A small weight goes in as weight * 2^s, then 2^-s (see :func:`scale`)."""
    import jax.numpy as jnp

    axes, count = _axes_and_count(x, axis)
    if isinstance(x, np.ndarray) or not jnp.issubdtype(x.dtype, jnp.floating) or count <= 1:
        total = jnp.sum(x, axis=tuple(axes), keepdims=keepdims)
        return total if weight == 1.0 else scale(total, weight)
    kept = [a for a in range(x.ndim) if a not in axes]
    shift = _shift(weight)
    rows = jnp.reshape(jnp.transpose(x, kept + axes), (-1, count))
    out = jnp.reshape(rows @ np.full((count, 1), weight * 2.0 ** shift, x.dtype), [x.shape[a] for a in kept])
    if keepdims:
        out = jnp.reshape(out, [1 if a in axes else x.shape[a] for a in range(x.ndim)])
    return _unshift(out, shift)


def mean(x, axis, keepdims: bool = True):
    """The mean over ``axis`` (an int or a tuple): the sum weighted by 1/n (:func:`weighted_sum`)."""
    import jax.numpy as jnp

    if isinstance(x, np.ndarray) or not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.mean(x, axis=axis, keepdims=keepdims)
    axes, count = _axes_and_count(x, axis)
    if not count:
        return jnp.sum(x, axis=tuple(axes), keepdims=keepdims) / count
    return weighted_sum(x, axes, keepdims, 1.0 / count)
