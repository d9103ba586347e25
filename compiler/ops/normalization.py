"""Normalizations: Instance, Layer, Group (opset 18 per-group and 21 per-channel affine), Batch (inference), RMS and Lp.

Statistics are computed as mean, then mean of squared deviations, then rsqrt(var + eps): one rsqrt per row, which
is what SPU runs well (a division by sqrt would cost a reciprocal on top).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, normalize_axis, onnx_dtype, refuse
from compiler.registry import register
from runtime import fxp_scale


def _normalize(x, axes, eps):
    """(x - mean) * rsqrt(var + eps) over ``axes``; also returns mean and the inverse standard deviation."""
    mean = fxp_scale.mean(x, axes)
    centered = x - mean
    var = fxp_scale.mean(centered * centered, axes)
    inv_std = jax.lax.rsqrt(var + jnp.asarray(eps, dtype_of(x)))
    return centered * inv_std, mean, inv_std


def _compute_dtype(ctx, x, default=np.float32):
    """stash_type: the precision statistics are computed in (float32 by default, never wider under jax)."""
    stash = ctx.attr("stash_type")
    dtype = onnx_dtype(stash) if stash is not None else np.dtype(default)
    if dtype == np.float64 or not jnp.issubdtype(dtype_of(x), jnp.floating):
        return dtype_of(x) if jnp.issubdtype(dtype_of(x), jnp.floating) else np.dtype(np.float32)
    return np.dtype(np.promote_types(dtype, dtype_of(x)))


def _channel_shape(x):
    return (1, -1) + (1,) * (np.ndim(x) - 2)


@register("InstanceNormalization")
def instance_normalization(ctx):
    x, scale, bias = ctx.inputs
    axes = tuple(range(2, np.ndim(x)))
    y, _, _ = _normalize(x, axes, ctx.attr("epsilon", 1e-5))
    return y * jnp.reshape(scale, _channel_shape(x)) + jnp.reshape(bias, _channel_shape(x))


@register("LayerNormalization", since=17)
def layer_normalization(ctx):
    x, scale = ctx.inputs[0], ctx.inputs[1]
    rank = np.ndim(x)
    axis = normalize_axis(ctx.attr("axis", -1), rank)
    dtype = _compute_dtype(ctx, x)
    xc = x.astype(dtype)
    y, mean, inv_std = _normalize(xc, tuple(range(axis, rank)), ctx.attr("epsilon", 1e-5))
    y = (y * scale.astype(dtype)).astype(dtype_of(x))
    if ctx.has_input(2):
        y = y + ctx.inputs[2]
    return y, mean, inv_std


def _group_norm(ctx, per_channel_affine: bool):
    x, scale, bias = ctx.inputs
    groups = ctx.attr("num_groups")
    shape = np.shape(x)
    n, c = shape[0], shape[1]
    if c % groups:
        refuse(ctx, f"{c} channels do not split into {groups} groups")
    dtype = _compute_dtype(ctx, x)
    grouped = jnp.reshape(x, (n, groups, -1)).astype(dtype)
    y, _, _ = _normalize(grouped, (2,), ctx.attr("epsilon", 1e-5))
    if per_channel_affine:
        y = jnp.reshape(y, shape).astype(dtype_of(x))
        return y * jnp.reshape(scale, _channel_shape(x)) + jnp.reshape(bias, _channel_shape(x))
    y = (y * jnp.reshape(scale, (1, groups, 1)) + jnp.reshape(bias, (1, groups, 1))).astype(dtype_of(x))
    return jnp.reshape(y, shape)


@register("GroupNormalization", since=18)
def group_normalization_18(ctx):
    # Opset 18: scale and bias have one value per group.
    groups = ctx.attr("num_groups")
    if np.size(ctx.inputs[1]) != groups or np.size(ctx.inputs[2]) != groups:
        refuse(ctx, f"opset-18 GroupNormalization takes one scale and bias value per group ({groups}), got "
                    f"{np.size(ctx.inputs[1])} and {np.size(ctx.inputs[2])} (one per channel is opset 21)")
    return _group_norm(ctx, per_channel_affine=False)


@register("GroupNormalization", since=21)
def group_normalization(ctx):
    # Opset 21: scale and bias have one value per channel.
    return _group_norm(ctx, per_channel_affine=True)


@register("BatchNormalization")
def batch_normalization(ctx):
    x, scale, bias, mean, var = ctx.inputs[:5]
    if ctx.attr("training_mode", 0) or (len(ctx.node.output) > 1 and any(ctx.node.output[1:])):
        refuse(ctx, "training mode (batch statistics and running-mean outputs) is not supported; export the "
                    "model in eval mode")
    factor = scale * jax.lax.rsqrt(var + jnp.asarray(ctx.attr("epsilon", 1e-5), dtype_of(var)))
    shift = bias - mean * factor
    return x * jnp.reshape(factor, _channel_shape(x)) + jnp.reshape(shift, _channel_shape(x))


@register("RMSNormalization", since=23)
def rms_normalization(ctx):
    x, scale = ctx.inputs[0], ctx.inputs[1]
    rank = np.ndim(x)
    axis = normalize_axis(ctx.attr("axis", -1), rank)
    dtype = _compute_dtype(ctx, x)
    xc = x.astype(dtype)
    mean_square = fxp_scale.mean(xc * xc, tuple(range(axis, rank)))
    y = xc * jax.lax.rsqrt(mean_square + jnp.asarray(ctx.attr("epsilon", 1e-5), dtype))
    return (y * scale.astype(dtype)).astype(dtype_of(x))


@register("LpNormalization")
def lp_normalization(ctx):
    x = ctx.inputs[0]
    axis = normalize_axis(ctx.attr("axis", -1), np.ndim(x))
    p = ctx.attr("p", 2)
    if p == 1:
        norm = jnp.sum(jnp.abs(x), axis=axis, keepdims=True)
    elif p == 2:
        norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    else:
        refuse(ctx, f"p={p} (only 1 and 2 are defined)")
    # A zero vector stays zero (the reference's convention) instead of 0/0.
    return jnp.where(norm == 0, jnp.zeros((), dtype_of(x)), x / jnp.where(norm == 0, jnp.ones((), dtype_of(x)), norm))

