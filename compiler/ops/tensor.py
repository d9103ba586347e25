"""Data movement: Concat, Split, Slice, Tile, Pad, Trilu. Sizes, bounds and pads must be static."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import astype, dtype_of, normalize_axes, normalize_axis, refuse
from compiler.registry import register


@register("Concat")
def concat(ctx):
    values = [v for v in ctx.inputs if v is not None]
    axis = normalize_axis(ctx.attr("axis"), np.ndim(values[0]))
    return jnp.concatenate(values, axis=axis)


def _split_sizes(ctx, dim: int) -> list[int]:
    count = len(ctx.node.output)
    if ctx.has_input(1):                    # opset 13+: sizes as an input
        return ctx.static_ints(1)
    if ctx.attr("split") is not None:       # before 13: sizes as an attribute
        return list(ctx.attr("split"))
    num_outputs = ctx.attr("num_outputs")
    if num_outputs is not None:             # opset 18: ceil-sized chunks, the last one smaller
        chunk = -(-dim // num_outputs)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num_outputs)]
        return sizes
    if dim % count:
        raise ValueError(f"Split of a dimension of {dim} into {count} equal parts")
    return [dim // count] * count


@register("Split")
def split(ctx):
    x = ctx.inputs[0]
    axis = normalize_axis(ctx.attr("axis", 0), np.ndim(x))
    sizes = _split_sizes(ctx, np.shape(x)[axis])
    if sum(sizes) != np.shape(x)[axis]:
        refuse(ctx, f"split sizes {sizes} do not add up to the dimension {np.shape(x)[axis]}")
    bounds = np.cumsum([0] + list(sizes))
    index = [slice(None)] * np.ndim(x)
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(int(start), int(stop))
        parts.append(x[tuple(index)])
    return tuple(parts)


def _onnx_slice(dim: int, start: int, end: int, step: int) -> slice:
    # The spec's clamping; end = -1 after clamping (negative steps) means "through index 0".
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@register("Slice", since=10)
def slice_(ctx):
    x = ctx.inputs[0]
    rank = np.ndim(x)
    starts, ends = ctx.static_ints(1), ctx.static_ints(2)
    axes = normalize_axes(ctx.static_ints(3, list(range(len(starts)))), rank)
    steps = ctx.static_ints(4, [1] * len(starts))
    if 0 in steps:
        refuse(ctx, "Slice step 0")
    index = [slice(None)] * rank
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = _onnx_slice(np.shape(x)[axis], start, end, step)
    return x[tuple(index)]


@register("Tile")
def tile(ctx):
    return jnp.tile(ctx.inputs[0], ctx.static_ints(1))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(ctx, x, pads, axes, value):
    rank = np.ndim(x)
    mode = ctx.attr("mode", "constant")
    if mode not in _PAD_MODES:
        refuse(ctx, f"Pad mode '{mode}' (supported: {', '.join(_PAD_MODES)})")
    axes = normalize_axes(axes, rank)
    n = len(axes)
    widths = [[0, 0] for _ in range(rank)]
    for i, axis in enumerate(axes):
        widths[axis] = [pads[i], pads[i + n]]
    # Negative pads crop: pad by the positive parts, then slice the negative ones away.
    grow = [(max(b, 0), max(e, 0)) for b, e in widths]
    if any(b or e for b, e in grow):
        if mode == "constant":
            fill = 0 if value is None else value
            x = jnp.pad(x, grow, mode="constant", constant_values=astype(fill, dtype_of(x)))
        else:
            x = jnp.pad(x, grow, mode=_PAD_MODES[mode])
    if any(b < 0 or e < 0 for b, e in widths):
        x = x[tuple(slice(-min(b, 0), np.shape(x)[i] + min(e, 0)) for i, (b, e) in enumerate(widths))]
    return x


@register("Pad", since=2)
def pad_attr(ctx):
    x = ctx.inputs[0]
    return _pad(ctx, x, list(ctx.attr("pads")), list(range(np.ndim(x))), ctx.attr("value", 0.0))


@register("Pad", since=11)
def pad(ctx):
    x = ctx.inputs[0]
    pads = ctx.static_ints(1)
    value = None
    if ctx.has_input(2):
        value = ctx.inputs[2]
        value = np.asarray(value).reshape(()) if ctx.is_static(2) else jnp.reshape(value, ())
    axes = ctx.static_ints(3, list(range(np.ndim(x))))  # axes: opset 18
    return _pad(ctx, x, pads, axes, value)


@register("Trilu")
def trilu(ctx):
    x = ctx.inputs[0]
    k = int(ctx.static(1).reshape(())) if ctx.has_input(1) else 0
    rows, cols = np.shape(x)[-2:]
    keep = np.triu(np.ones((rows, cols), bool), k) if ctx.attr("upper", 1) else np.tril(np.ones((rows, cols), bool), k)
    return jnp.where(keep, x, jnp.zeros((), dtype_of(x)))
