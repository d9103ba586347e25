"""Activation functions and Softmax/LogSoftmax/Hardmax."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, normalize_axis, refuse
from compiler.ops.elementwise import erf
from compiler.registry import register


def _const(value, like):
    return jnp.asarray(value, dtype_of(like))


@register("Sigmoid")
def sigmoid(ctx):
    return jax.nn.sigmoid(ctx.inputs[0])


@register("HardSigmoid")
def hard_sigmoid(ctx):
    x = ctx.inputs[0]
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    return jnp.clip(_const(alpha, x) * x + _const(beta, x), 0, 1).astype(dtype_of(x))


@register("HardSwish")
def hard_swish(ctx):
    x = ctx.inputs[0]
    return x * jnp.clip(x * _const(1 / 6, x) + _const(0.5, x), 0, 1).astype(dtype_of(x))


@register("Relu")
def relu(ctx):
    x = ctx.inputs[0]
    return jnp.maximum(x, jnp.zeros((), dtype_of(x)))


@register("LeakyRelu")
def leaky_relu(ctx):
    x = ctx.inputs[0]
    return jnp.where(x >= 0, x, _const(ctx.attr("alpha", 0.01), x) * x)


@register("PRelu")
def prelu(ctx):
    x, slope = ctx.inputs
    return jnp.where(x >= 0, x, slope * x)


@register("ThresholdedRelu")
def thresholded_relu(ctx):
    x = ctx.inputs[0]
    return jnp.where(x > _const(ctx.attr("alpha", 1.0), x), x, jnp.zeros((), dtype_of(x)))


@register("Elu")
def elu(ctx):
    x = ctx.inputs[0]
    return jnp.where(x > 0, x, _const(ctx.attr("alpha", 1.0), x) * jnp.expm1(x))


@register("Celu")
def celu(ctx):
    x = ctx.inputs[0]
    alpha = _const(ctx.attr("alpha", 1.0), x)
    return jnp.maximum(x, 0) + jnp.minimum(jnp.zeros((), dtype_of(x)), alpha * jnp.expm1(x / alpha))


@register("Selu")
def selu(ctx):
    x = ctx.inputs[0]
    alpha = _const(ctx.attr("alpha", 1.67326319217681884765625), x)
    gamma = _const(ctx.attr("gamma", 1.05070102214813232421875), x)
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(x))


def softplus(x):
    # log(1 + exp(x)) without overflow for large x: max(x, 0) + log1p(exp(-|x|)).
    return jnp.logaddexp(x, jnp.zeros((), dtype_of(x)))


@register("Softplus")
def softplus_(ctx):
    return softplus(ctx.inputs[0])


@register("Softsign")
def softsign(ctx):
    x = ctx.inputs[0]
    return x / (1 + jnp.abs(x))


@register("Mish")
def mish(ctx):
    x = ctx.inputs[0]
    return x * jnp.tanh(softplus(x))


def gelu(x, approximate: str):
    if approximate == "tanh":
        inner = _const(math.sqrt(2 / math.pi), x) * (x + _const(0.044715, x) * x * x * x)
        return _const(0.5, x) * x * (1 + jnp.tanh(inner))
    if approximate == "none":
        return _const(0.5, x) * x * (1 + erf(x * _const(1 / math.sqrt(2), x)))
    raise ValueError(f"unknown Gelu approximate mode '{approximate}'")


@register("Gelu", since=20)
def gelu_(ctx):
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        refuse(ctx, f"approximate='{approximate}' is not a Gelu mode (none, tanh)")
    return gelu(ctx.inputs[0], approximate)


# Softmax, LogSoftmax and Hardmax: before opset 13 the input is coerced to 2-D at `axis` (default 1) and the
# function runs over the flattened trailing dimensions; from 13 it runs over the single `axis` (default -1).

def _coerced(ctx, fn, default_axis):
    x = ctx.inputs[0]
    shape = np.shape(x)
    axis = normalize_axis(ctx.attr("axis", default_axis), len(shape))
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    flat = jnp.reshape(x, (rows, -1))
    return jnp.reshape(fn(flat, 1), shape)


def _single_axis(ctx, fn):
    x = ctx.inputs[0]
    return fn(x, normalize_axis(ctx.attr("axis", -1), np.ndim(x)))


def _softmax(x, axis):
    return jax.nn.softmax(x, axis=axis)


def _log_softmax(x, axis):
    shifted = x - jnp.max(x, axis=axis, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x, axis):
    # One-hot of the first maximum along the axis.
    n = np.shape(x)[axis]
    is_max = x == jnp.max(x, axis=axis, keepdims=True)
    positions = jnp.arange(n).reshape([n if i == axis else 1 for i in range(np.ndim(x))])
    first = jnp.min(jnp.where(is_max, positions, n), axis=axis, keepdims=True)
    return (positions == first).astype(dtype_of(x))


for _name, _fn in {"Softmax": _softmax, "LogSoftmax": _log_softmax, "Hardmax": _hardmax}.items():
    register(_name, since=1)(lambda ctx, _fn=_fn: _coerced(ctx, _fn, 1))
    register(_name, since=13)(lambda ctx, _fn=_fn: _single_axis(ctx, _fn))
