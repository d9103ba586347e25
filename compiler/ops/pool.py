"""Pooling: AveragePool, MaxPool (values only), GlobalAveragePool, GlobalMaxPool, LpPool."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, refuse
from compiler.ops.conv import conv_pads
from compiler.registry import register
from runtime import fxp_scale


def _window(ctx, x):
    """Kernel, strides, dilations and the (begin, end) padding per spatial axis, ceil_mode included."""
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    in_sizes = np.shape(x)[2:]
    pads = conv_pads(ctx, in_sizes, kernel, strides, dilations)
    ceil_mode = ctx.attr("ceil_mode", 0) and ctx.attr("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    padding, out_sizes = [], []
    for size, k, s, d, (begin, end) in zip(in_sizes, kernel, strides, dilations, pads):
        span = (k - 1) * d + 1
        room = size + begin + end - span
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= size + begin:
            out -= 1  # the last window must start inside the input or the begin padding
        extra = max((out - 1) * s + span - (size + begin + end), 0)
        padding.append((begin, end, extra))
        out_sizes.append(out)
    return kernel, strides, dilations, padding, out_sizes


def _reduce_window(x, init, op, kernel, strides, dilations, padding):
    n = len(kernel)
    return jax.lax.reduce_window(
        x, init, op, window_dimensions=(1, 1, *kernel), window_strides=(1, 1, *strides),
        padding=((0, 0), (0, 0), *[(b, e + extra) for b, e, extra in padding]),
        window_dilation=(1, 1, *dilations) if any(d != 1 for d in dilations) else None,
    ) if n else x


def _counts(kernel, strides, dilations, padding, out_sizes, in_sizes, include_pad):
    """How many elements each window averages over: a static (1, 1, *out) array."""
    total = np.ones((1, 1), np.float64)
    for k, s, d, (begin, end, _), out, size in zip(kernel, strides, dilations, padding, out_sizes, in_sizes):
        taps = np.arange(out)[:, None] * s - begin + np.arange(k)[None, :] * d
        low, high = (-begin, size + end) if include_pad else (0, size)
        per_axis = ((taps >= low) & (taps < high)).sum(axis=1)
        total = total[..., None] * per_axis
    return total


@register("AveragePool")
def average_pool(ctx):
    x = ctx.inputs[0]
    kernel, strides, dilations, padding, out_sizes = _window(ctx, x)
    zero = jnp.zeros((), dtype_of(x))
    sums = _reduce_window(x, zero, jax.lax.add, kernel, strides, dilations, padding)
    counts = _counts(kernel, strides, dilations, padding, out_sizes, np.shape(x)[2:],
                     ctx.attr("count_include_pad", 0))
    # Multiplying by a public reciprocal is cheaper under MPC than dividing.
    return sums * (1.0 / counts).astype(dtype_of(x))


def _lowest(dtype):
    return -np.inf if jnp.issubdtype(dtype, jnp.floating) else np.iinfo(dtype).min


@register("MaxPool")
def max_pool(ctx):
    x = ctx.inputs[0]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        refuse(ctx, "the Indices output of MaxPool is not supported (only the pooled values)")
    kernel, strides, dilations, padding, _ = _window(ctx, x)
    init = jnp.asarray(_lowest(dtype_of(x)), dtype_of(x))
    return _reduce_window(x, init, jax.lax.max, kernel, strides, dilations, padding)


@register("LpPool")
def lp_pool(ctx):
    x = ctx.inputs[0]
    p = ctx.attr("p", 2)
    kernel, strides, dilations, padding, _ = _window(ctx, x)
    zero = jnp.zeros((), dtype_of(x))
    sums = _reduce_window(jnp.abs(x) ** p, zero, jax.lax.add, kernel, strides, dilations, padding)
    return sums ** (1.0 / p)


@register("GlobalAveragePool")
def global_average_pool(ctx):
    x = ctx.inputs[0]
    return fxp_scale.mean(x, tuple(range(2, np.ndim(x))))


@register("GlobalMaxPool")
def global_max_pool(ctx):
    x = ctx.inputs[0]
    return jnp.max(x, axis=tuple(range(2, np.ndim(x))), keepdims=True)
