"""Resize (opsets 11-19): nearest, linear and cubic, every coordinate_transformation_mode, scales or sizes, axes,
keep_aspect_ratio_policy, exclude_outside and antialias.

Interpolation is separable, so each resized axis is handled on its own with tables computed at compile time:
nearest becomes a gather with constant indices (exact, no arithmetic under MPC); linear and cubic become a product
with a constant (out x in) interpolation matrix, a cheap public-times-secret product under MPC.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, normalize_axes, refuse
from compiler.registry import register

_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                     "tf_crop_and_resize")


def _source_coordinates(mode, out_size, in_size, scale, roi):
    """Where each output index samples the input, and which outputs are extrapolated.

    Computed in float32 with the integer output length, like onnxruntime (the ONNX reference uses float64 and
    scale * in_size for the length; the two differ only at exact rounding ties and for align_corners with a
    fractional scale * in_size).
    """
    f = np.float32
    y = np.arange(out_size, dtype=f)
    scale = f(scale)
    if mode == "half_pixel":
        x = (y + f(0.5)) / scale - f(0.5)
    elif mode == "half_pixel_symmetric":
        adjustment = f(out_size) / (scale * f(in_size))
        offset = f(in_size) / f(2) * (f(1) - adjustment)
        x = offset + (y + f(0.5)) / scale - f(0.5)
    elif mode == "pytorch_half_pixel":
        x = (y + f(0.5)) / scale - f(0.5) if out_size > 1 else np.zeros(out_size, f)
    elif mode == "align_corners":
        x = y * f(in_size - 1) / f(out_size - 1) if out_size > 1 else np.zeros(out_size, f)
    elif mode == "asymmetric":
        x = y / scale
    else:  # tf_crop_and_resize
        start, end = f(roi[0]), f(roi[1])
        if out_size > 1:
            x = start * f(in_size - 1) + y * (end - start) * f(in_size - 1) / f(out_size - 1)
        else:
            x = np.full(out_size, f(0.5) * (start + end) * f(in_size - 1), f)
        x = x.astype(np.float64)
        return x, (x < 0) | (x > in_size - 1)
    return x.astype(np.float64), None


def _nearest_indices(x, nearest_mode, in_size):
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    else:
        raise ValueError(f"unknown nearest_mode '{nearest_mode}'")
    return np.clip(idx, 0, in_size - 1).astype(np.int64)


def _linear_coeffs(ratio, scale, antialias, a):
    if not antialias:
        return np.array([1 - ratio, ratio])
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    coeffs = np.clip(1 - np.abs(args), 0, 1)
    return coeffs / coeffs.sum()


def _cubic_kernel(t, a):
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _cubic_coeffs(ratio, scale, antialias, a):
    if not antialias:
        return _cubic_kernel(np.array([ratio + 1, ratio, 1 - ratio, 2 - ratio]), a)
    scale = min(scale, 1.0)
    start = int(np.floor(-2 / scale) + 1)
    coeffs = _cubic_kernel(scale * (np.arange(start, 2 - start) - ratio), a)
    return coeffs / coeffs.sum()


def _interpolation_matrix(x, in_size, scale, coeff_fn, exclude_outside):
    """(out, in) weights: each output is a weighted sum of input neighbours, edge-clamped."""
    x_floor = np.floor(x)
    # The neighbour to the left is preferred: an integral coordinate has ratio 1 to its left neighbour.
    ratios = np.where(x == x_floor, 1.0, x - x_floor)
    rows = [coeff_fn(float(r)) for r in ratios]
    n = len(rows[0])
    pad = math.ceil(n / 2)
    padded = x + pad
    p = np.floor(padded)
    frac = padded - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    neighbours = (p + offset).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad
    coeffs = np.array(rows, np.float64)
    if exclude_outside:
        coeffs = np.where((neighbours < 0) | (neighbours >= in_size), 0.0, coeffs)
        sums = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(sums == 0, 1.0, sums)
    weights = np.zeros((len(x), in_size), np.float64)
    np.add.at(weights, (np.repeat(np.arange(len(x)), n), np.clip(neighbours, 0, in_size - 1).reshape(-1)),
              coeffs.reshape(-1))
    return weights


def _target(ctx, shape):
    """Per-axis (scale, output size) for every axis of the input, from scales or sizes (and axes, policy)."""
    rank = len(shape)
    axes = normalize_axes(ctx.attr("axes", list(range(rank))), rank)
    scales = ctx.static(2) if ctx.has_input(2) else None
    sizes = ctx.static(3) if ctx.has_input(3) else None
    scales = None if scales is None or scales.size == 0 else [float(s) for s in scales.reshape(-1)]
    sizes = None if sizes is None or sizes.size == 0 else [int(s) for s in sizes.reshape(-1)]
    if (scales is None) == (sizes is None):
        refuse(ctx, "exactly one of scales and sizes must be given")
    full_scale = [1.0] * rank
    full_size = list(shape)
    if scales is not None:
        for axis, s in zip(axes, scales):
            full_scale[axis] = s
            # float32 product, as onnxruntime and ONNX shape inference compute it (5 * 2.6f is 13, not 12).
            full_size[axis] = int(math.floor(np.float32(s) * np.float32(shape[axis])))
        return axes, full_scale, full_size
    for axis, size in zip(axes, sizes):
        full_scale[axis] = float(np.float32(size) / np.float32(shape[axis]))
        full_size[axis] = size
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        chosen = [full_scale[a] for a in axes]
        if policy == "not_larger":
            scale = min(chosen)
        elif policy == "not_smaller":
            scale = max(chosen)
        else:
            refuse(ctx, f"keep_aspect_ratio_policy '{policy}'")
        for axis in axes:
            full_scale[axis] = scale
            full_size[axis] = int(scale * shape[axis] + 0.5)
    return axes, full_scale, full_size


def _apply_matrix(x, weights, axis):
    y = jnp.tensordot(jnp.asarray(weights.astype(np.float32)), x, axes=([1], [axis]))
    return jnp.moveaxis(y, 0, axis)


@register("Resize", since=11, static_inputs=(1, 2, 3))
def resize(ctx):
    x = ctx.inputs[0]
    shape = np.shape(x)
    mode = ctx.attr("mode", "nearest")
    coord_mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic"):
        refuse(ctx, f"mode '{mode}'")
    if coord_mode not in _COORDINATE_MODES:
        refuse(ctx, f"coordinate_transformation_mode '{coord_mode}'")
    axes, scales, sizes = _target(ctx, shape)
    rank = len(shape)
    roi = None
    if coord_mode == "tf_crop_and_resize":
        roi = np.asarray(ctx.static(1), np.float64).reshape(-1)
        if roi.size == 2 * len(axes) and len(axes) != rank:
            full = np.array([0.0] * rank + [1.0] * rank)
            for i, axis in enumerate(axes):
                full[axis], full[rank + axis] = roi[i], roi[len(axes) + i]
            roi = full
    antialias = bool(ctx.attr("antialias", 0))
    a = ctx.attr("cubic_coeff_a", -0.75)
    in_dtype = dtype_of(x)
    if mode != "nearest" and not jnp.issubdtype(in_dtype, jnp.floating):
        x = x.astype(jnp.float32)
    for axis in axes:
        axis_roi = None if roi is None else (roi[axis], roi[rank + axis])
        trivial_roi = axis_roi is None or (math.isclose(axis_roi[0], 0) and math.isclose(axis_roi[1], 1))
        if math.isclose(scales[axis], 1.0) and sizes[axis] == shape[axis] and trivial_roi:
            continue
        coords, extrapolated = _source_coordinates(coord_mode, sizes[axis], shape[axis], scales[axis], axis_roi)
        if mode == "nearest":
            indices = _nearest_indices(coords, ctx.attr("nearest_mode", "round_prefer_floor"), shape[axis])
            x = jnp.take(x, indices, axis=axis, mode="clip")
        else:
            coeff = _linear_coeffs if mode == "linear" else _cubic_coeffs
            weights = _interpolation_matrix(coords, shape[axis], scales[axis],
                                            lambda r, s=scales[axis]: coeff(r, s, antialias, a),
                                            ctx.attr("exclude_outside", 0))
            x = _apply_matrix(x, weights, axis)
        if extrapolated is not None and extrapolated.any():
            mask = extrapolated.reshape([-1 if i == axis else 1 for i in range(rank)])
            x = jnp.where(mask, jnp.asarray(ctx.attr("extrapolation_value", 0.0), x.dtype), x)
    if x.dtype != in_dtype:
        info = np.iinfo(in_dtype)
        x = jnp.clip(jnp.round(x), info.min, info.max).astype(in_dtype)
    return x
