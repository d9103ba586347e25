"""Lowerings of cipherdm's own ONNX domain: the protocol nodes the rewrite passes emit.

A node ``cipherdm::SiLU`` (GELU, Mish, Sigmoid, Tanh, Exp, SoftMax, Reciprocal, Rsqrt, GroupNorm, LayerNorm)
carries the protocol it runs as attributes (schema in :mod:`runtime.protocols.base`: ``protocol``, ``family``,
``params`` JSON with the coefficients, readable copies, ``spu_knobs``) plus the op's own attributes (SoftMax
``axis``; GroupNorm ``num_groups``, ``epsilon``; LayerNorm ``axis``, ``epsilon``). A node without ``protocol``
is a canonical node and lowers to the op's plain expression (the ``direct`` variant). The node's ``params`` are
authoritative, so a stored graph computes what it was compiled with even after the registry is refitted.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import dtype_of, float_dtype, normalize_axis, refuse
from compiler.registry import CIPHERDM_DOMAIN, register
from runtime.protocols.base import OP_TYPES, from_onnx_attributes, runtime_kwargs


def _protocol(ctx, op):
    try:
        return from_onnx_attributes(ctx.attrs, op=op), runtime_kwargs(op, ctx.attrs)
    except ValueError as exc:
        refuse(ctx, str(exc))


def _cast_back(y, like):
    dtype = dtype_of(like)
    return y.astype(dtype) if hasattr(y, "astype") and jnp.issubdtype(dtype, jnp.floating) else y


def _elementwise(op):
    def lower(ctx):
        protocol, kw = _protocol(ctx, op)
        x = ctx.inputs[0]
        x = x if jnp.issubdtype(dtype_of(x), jnp.floating) else jnp.asarray(x, float_dtype(x))
        return _cast_back(protocol.jax_fn(x, **kw), ctx.inputs[0])

    lower.__name__ = f"lower_cipherdm_{op}"
    return lower


for _op in ("silu", "mish", "gelu", "sigmoid", "tanh", "exp", "reciprocal", "rsqrt"):
    register(OP_TYPES[_op], domain=CIPHERDM_DOMAIN)(_elementwise(_op))


@register("SoftMax", domain=CIPHERDM_DOMAIN)
def lower_cipherdm_softmax(ctx):
    protocol, kw = _protocol(ctx, "softmax")
    x = ctx.inputs[0]
    try:
        kw["axis"] = normalize_axis(int(kw["axis"]), np.ndim(x))
    except ValueError as exc:
        refuse(ctx, str(exc))
    return _cast_back(protocol.jax_fn(x, **kw), x)


@register("GroupNorm", domain=CIPHERDM_DOMAIN)
def lower_cipherdm_group_norm(ctx):
    protocol, kw = _protocol(ctx, "group_norm")
    if len(ctx.inputs) < 3 or not ctx.has_input(1) or not ctx.has_input(2):
        refuse(ctx, "cipherdm::GroupNorm takes X, scale and bias (one value per channel)")
    x, scale, bias = ctx.inputs[:3]
    shape = np.shape(x)
    groups = int(kw["num_groups"])
    problems = []
    if len(shape) < 2:
        problems.append(f"X must be [N, C, ...], got shape {list(shape)}")
    else:
        if groups <= 0 or shape[1] % groups:
            problems.append(f"{shape[1]} channels do not split into {groups} groups")
        for name, v in (("scale", scale), ("bias", bias)):
            if np.size(v) != shape[1]:
                problems.append(f"{name} has {np.size(v)} values, expected one per channel ({shape[1]})")
    if problems:
        refuse(ctx, *problems)
    y = protocol.jax_fn(x, jnp.reshape(scale, (-1,)), jnp.reshape(bias, (-1,)), num_groups=groups,
                        epsilon=float(kw["epsilon"]))
    return _cast_back(y, x)


@register("LayerNorm", domain=CIPHERDM_DOMAIN)
def lower_cipherdm_layer_norm(ctx):
    protocol, kw = _protocol(ctx, "layer_norm")
    x, scale = ctx.inputs[0], ctx.input(1)
    bias = ctx.input(2)
    try:
        axis = normalize_axis(int(kw["axis"]), np.ndim(x))
    except ValueError as exc:
        refuse(ctx, str(exc))
    inner = tuple(np.shape(x)[axis:])
    problems = []
    if scale is None:
        problems.append("cipherdm::LayerNorm needs a scale input")
    for name, v in (("scale", scale), ("bias", bias)):
        if v is not None and int(np.size(v)) != int(np.prod(inner)):
            problems.append(f"{name} has shape {list(np.shape(v))}, expected the normalised dims {list(inner)}")
    if problems:
        refuse(ctx, *problems)
    y = protocol.jax_fn(x, scale, bias, axis=axis, epsilon=float(kw["epsilon"]))
    return _cast_back(y, x)
