"""Indexing: Gather*, Scatter*, OneHot, ArgMax/ArgMin, CumSum, NonZero.

Indices may be traced (secret) for the gathers; negative indices wrap as the spec says.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.interpreter import is_static
from compiler.ops._common import astype, dtype_of, normalize_axis, refuse
from compiler.registry import register


def _wrap(indices, dim):
    """Negative indices count from the end; static ones are checked to be in range."""
    if is_static(indices):
        indices = np.asarray(indices).astype(np.int64)
        bad = indices[(indices < -dim) | (indices >= dim)]
        if bad.size:
            raise IndexError(f"index {int(bad.reshape(-1)[0])} is out of range for a dimension of {dim}")
        return np.where(indices < 0, indices + dim, indices)
    return jnp.where(indices < 0, indices + dim, indices)


def _mode(indices):
    # Static indices were checked; traced ones are clipped (ONNX leaves out-of-range indices undefined).
    return "clip"


@register("Gather")
def gather(ctx):
    x, indices = ctx.inputs
    axis = normalize_axis(ctx.attr("axis", 0), np.ndim(x))
    indices = _wrap(indices, np.shape(x)[axis])
    return jnp.take(x, indices, axis=axis, mode=_mode(indices))


@register("GatherElements")
def gather_elements(ctx):
    x, indices = ctx.inputs
    axis = normalize_axis(ctx.attr("axis", 0), np.ndim(x))
    indices = _wrap(indices, np.shape(x)[axis])
    return jnp.take_along_axis(x, indices, axis=axis, mode=_mode(indices))


def _nd_coordinates(data_shape, indices, batch_dims):
    """Index arrays for data[...] that pick, per leading batch position, the slices named by indices[..., :]."""
    k = np.shape(indices)[-1]
    inner = np.shape(indices)[batch_dims:-1]
    coords = []
    for i in range(batch_dims):
        shape = [1] * batch_dims + [1] * len(inner)
        shape[i] = data_shape[i]
        coords.append(np.arange(data_shape[i]).reshape(shape))
    for j in range(k):
        coords.append(_wrap(indices[..., j], data_shape[batch_dims + j]))
    return tuple(coords)


@register("GatherND")
def gather_nd(ctx):
    x, indices = ctx.inputs
    coords = _nd_coordinates(np.shape(x), indices, ctx.attr("batch_dims", 0))
    return x[coords]


def _scatter(ctx, x, coords, updates):
    reduction = ctx.attr("reduction", "none")
    ref = x.at[coords] if not is_static(x) else jnp.asarray(x).at[coords]
    updates = astype(updates, dtype_of(x))
    if reduction == "none":
        return ref.set(updates)
    if reduction == "add":
        return ref.add(updates)
    if reduction == "mul":
        return ref.multiply(updates)
    if reduction == "max":
        return ref.max(updates)
    if reduction == "min":
        return ref.min(updates)
    refuse(ctx, f"reduction '{reduction}'")


@register("ScatterND")
def scatter_nd(ctx):
    x, indices, updates = ctx.inputs
    return _scatter(ctx, x, _nd_coordinates(np.shape(x), indices, 0), updates)


@register("ScatterElements")
def scatter_elements(ctx):
    x, indices, updates = ctx.inputs
    rank = np.ndim(x)
    axis = normalize_axis(ctx.attr("axis", 0), rank)
    idx_shape = np.shape(indices)
    coords = []
    for d in range(rank):
        if d == axis:
            coords.append(_wrap(indices, np.shape(x)[axis]))
        else:
            coords.append(np.arange(idx_shape[d]).reshape([-1 if i == d else 1 for i in range(rank)]))
    return _scatter(ctx, x, tuple(coords), updates)


@register("OneHot")
def one_hot(ctx):
    indices, depth, values = ctx.inputs
    depth = int(ctx.static(1).reshape(-1)[0])
    rank = np.ndim(indices) + 1
    axis = normalize_axis(ctx.attr("axis", -1), rank)
    indices = jnp.where(indices < 0, indices + depth, indices)
    positions = np.arange(depth).reshape([depth if i == axis else 1 for i in range(rank)])
    hit = jnp.expand_dims(indices, axis) == positions
    return jnp.where(hit, values[1], values[0])


def _arg(ctx, fn):
    x = ctx.inputs[0]
    axis = normalize_axis(ctx.attr("axis", 0), np.ndim(x))
    if ctx.attr("select_last_index", 0):
        n = np.shape(x)[axis]
        result = (n - 1) - fn(jnp.flip(x, axis), axis=axis)
    else:
        result = fn(x, axis=axis)
    if ctx.attr("keepdims", 1):
        result = jnp.expand_dims(result, axis)
    return astype(result, np.int64)


@register("ArgMax")
def arg_max(ctx):
    return _arg(ctx, jnp.argmax)


@register("ArgMin")
def arg_min(ctx):
    return _arg(ctx, jnp.argmin)


@register("CumSum")
def cum_sum(ctx):
    x = ctx.inputs[0]
    axis = normalize_axis(int(ctx.static(1).reshape(())), np.ndim(x))
    if ctx.attr("reverse", 0):
        x = jnp.flip(x, axis)
    result = jnp.cumsum(x, axis=axis, dtype=dtype_of(x))
    if ctx.attr("exclusive", 0):
        # Shift by one along the axis, starting from zero.
        n = np.shape(x)[axis]
        head = jnp.zeros_like(jax.lax.slice_in_dim(result, 0, min(n, 1), axis=axis))
        result = jnp.concatenate([head, jax.lax.slice_in_dim(result, 0, max(n - 1, 0), axis=axis)], axis=axis)
    if ctx.attr("reverse", 0):
        result = jnp.flip(result, axis)
    return result


@register("NonZero")
def non_zero(ctx):
    # The output shape depends on the values, so only compile-time inputs can be lowered.
    return np.array(np.nonzero(ctx.static(0)), np.int64)
