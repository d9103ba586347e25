"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare.

The axes moved from an attribute to an optional input at opset 13 (ReduceSum) and 18 (all the others); from
then on `noop_with_empty_axes` decides what empty axes mean (identity, or reduce everything).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, normalize_axes
from compiler.registry import register
from runtime import fxp_scale


def _sum(x, axes):
    if jnp.issubdtype(dtype_of(x), jnp.floating):
        return fxp_scale.weighted_sum(x, axes)
    return jnp.sum(x, axis=axes, keepdims=True, dtype=dtype_of(x))


def _mean(x, axes):
    return fxp_scale.mean(x, axes).astype(dtype_of(x))


def _extreme(fn, empty_value):
    def reduce(x, axes):
        # Reducing an empty axis gives the identity of the reduction (-inf for max, +inf for min).
        initial = None
        if any(np.shape(x)[a] == 0 for a in axes):
            dt = dtype_of(x)
            if dt == np.bool_:
                initial = empty_value > 0
            elif jnp.issubdtype(dt, jnp.floating):
                initial = empty_value
            else:
                initial = np.iinfo(dt).min if empty_value < 0 else np.iinfo(dt).max
        return fn(x, axis=axes, keepdims=True, initial=initial)
    return reduce


def _prod(x, axes):
    return jnp.prod(x, axis=axes, keepdims=True, dtype=dtype_of(x))


def _l1(x, axes):
    return _sum(jnp.abs(x), axes)


def _l2(x, axes):
    if jnp.issubdtype(dtype_of(x), jnp.integer):
        return jnp.sqrt(_sum(x * x, axes).astype(np.float32)).astype(dtype_of(x))
    return jnp.sqrt(_sum(x * x, axes))


def _sum_square(x, axes):
    return _sum(x * x, axes)


def _log_sum(x, axes):
    return jnp.log(_sum(x, axes))


def _log_sum_exp(x, axes):
    if any(np.shape(x)[a] == 0 for a in axes):
        return jnp.log(_sum(jnp.exp(x), axes))
    top = jnp.max(x, axis=axes, keepdims=True)
    # Rows that are all -inf would give nan in x - top; their result is -inf anyway.
    safe_top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), dtype_of(x)))
    return safe_top + jnp.log(_sum(jnp.exp(x - safe_top), axes))


_REDUCTIONS = {
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (_extreme(jnp.max, -np.inf), 18),
    "ReduceMin": (_extreme(jnp.min, np.inf), 18),
    "ReduceProd": (_prod, 18),
    "ReduceL1": (_l1, 18),
    "ReduceL2": (_l2, 18),
    "ReduceSumSquare": (_sum_square, 18),
    "ReduceLogSum": (_log_sum, 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
}


def _reduce(ctx, fn, axes, noop_with_empty_axes: bool):
    x = ctx.inputs[0]
    rank = np.ndim(x)
    if not axes:
        # With noop_with_empty_axes nothing is reduced, but onnxruntime and the reference still apply the
        # elementwise part (ReduceSumSquare gives x*x, ReduceLogSum log(x)): reduce over no axes.
        axes = [] if noop_with_empty_axes else list(range(rank))
    axes = tuple(sorted(set(normalize_axes(axes, rank))))
    result = fn(x, axes)
    if not ctx.attr("keepdims", 1):
        result = jnp.reshape(result, [d for i, d in enumerate(np.shape(x)) if i not in axes])
    return result


def _register(op_type, fn, input_since):
    @register(op_type, since=1)
    def with_attribute(ctx):
        return _reduce(ctx, fn, ctx.attr("axes"), False)

    @register(op_type, since=input_since)
    def with_input(ctx):
        axes = ctx.static_ints(1) if ctx.has_input(1) else None
        return _reduce(ctx, fn, axes, bool(ctx.attr("noop_with_empty_axes", 0)))

    with_attribute.__name__ = f"lower_{op_type.lower()}_axes_attribute"
    with_input.__name__ = f"lower_{op_type.lower()}"


for _name, (_fn, _since) in _REDUCTIONS.items():
    _register(_name, _fn, _since)
