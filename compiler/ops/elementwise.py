"""Elementwise ops: arithmetic with numpy broadcasting, unary math, comparisons and logic.

Everything here lowers to plain StableHLO that SPU 0.9.5 parses: no ``chlo`` ops (erf is an explicit formula).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from compiler.interpreter import is_static
from compiler.ops._common import astype, dtype_of, refuse
from compiler.registry import register
from runtime import fxp_scale


def _binary(op_type: str, fn):
    @register(op_type)
    def lower(ctx):
        return fn(ctx.inputs[0], ctx.inputs[1])

    lower.__name__ = f"lower_{op_type.lower()}"
    return lower


def _unary(op_type: str, fn):
    @register(op_type)
    def lower(ctx):
        return fn(ctx.inputs[0])

    lower.__name__ = f"lower_{op_type.lower()}"
    return lower


def _constant_factor(a, b) -> float | None:
    """b's value when a is a traced float tensor and b a static float scalar that does not change a's shape."""
    if (is_static(a) or not is_static(b) or np.size(b) != 1 or np.ndim(b) > np.ndim(a)
            or not jnp.issubdtype(dtype_of(a), jnp.floating) or not jnp.issubdtype(dtype_of(b), jnp.floating)
            or jnp.result_type(a, b) != dtype_of(a)):
        return None
    return float(np.reshape(b, ()))


def _mul(a, b):
    # A small constant factor (1/n of a spelled-out mean) needs fxp_scale to stay accurate in fixed point.
    for x, y in ((a, b), (b, a)):
        c = _constant_factor(x, y)
        if c is not None:
            return fxp_scale.scale(x, c)
    return jnp.multiply(a, b)


def _div(a, b):
    # ONNX Div on integers truncates toward zero (C semantics), unlike jnp's floor division.
    if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
        return jnp.trunc(jnp.true_divide(a, b)).astype(jnp.result_type(a, b))
    c = _constant_factor(a, b)
    if c is not None and c != 0.0:
        return fxp_scale.scale(a, 1.0 / c)
    return jnp.divide(a, b)


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t*(a1 + t*(a2 + ... + t*a5)) * exp(-x^2), t = 1/(1 + p*x), x >= 0,
# absolute error <= 1.5e-7. Built from exp, a reciprocal and a polynomial, which SPU runs (chlo.erf does not parse).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# erf(4) = 1 - 1.5e-8 rounds to 1 in float32. Clamping keeps exp's argument small: SPU's exp, (1 + x/2^n)^(2^n),
# is garbage for very negative x.
_ERF_CLAMP = 4.0


def erf(x):
    """erf via A&S 7.1.26 with sign symmetry; max abs error ~2e-7 in float32."""
    a = jnp.minimum(jnp.abs(x), jnp.asarray(_ERF_CLAMP, x.dtype))
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = _ERF_A[4]
    for coeff in reversed(_ERF_A[:4]):
        poly = poly * t + coeff
    value = 1.0 - poly * t * jnp.exp(-a * a)
    return jnp.where(x < 0, -value, value).astype(x.dtype)


def _erf_any(x):
    if jnp.issubdtype(dtype_of(x), jnp.floating):
        return erf(x)
    return erf(jnp.asarray(x, jnp.float32)).astype(dtype_of(x))


def _round(x):
    # ONNX Round is round-half-to-even, like jnp.round.
    return jnp.round(x) if jnp.issubdtype(dtype_of(x), jnp.floating) else x


for _name, _fn in {
    "Add": jnp.add, "Sub": jnp.subtract, "Mul": _mul, "Div": _div,
    "Equal": jnp.equal, "Less": jnp.less, "LessOrEqual": jnp.less_equal, "Greater": jnp.greater,
    "GreaterOrEqual": jnp.greater_equal, "And": jnp.logical_and, "Or": jnp.logical_or, "Xor": jnp.logical_xor,
}.items():
    _binary(_name, _fn)

for _name, _fn in {
    "Neg": jnp.negative, "Abs": jnp.abs, "Exp": jnp.exp, "Log": jnp.log, "Sqrt": jnp.sqrt,
    "Reciprocal": jnp.reciprocal, "Tanh": jnp.tanh, "Sin": jnp.sin, "Cos": jnp.cos, "Floor": jnp.floor,
    "Ceil": jnp.ceil, "Not": jnp.logical_not, "Sign": jnp.sign, "Identity": lambda x: x, "Erf": _erf_any,
    "Round": _round, "IsNaN": jnp.isnan,
}.items():
    _unary(_name, _fn)


# The exponent is graph structure: a float initializer holding it is a constant, not a weight.
@register("Pow", static_inputs=(1,))
def pow_(ctx):
    base, exponent = ctx.inputs
    out_dtype = dtype_of(base)
    if is_static(exponent) and not is_static(base):
        values = np.unique(np.asarray(exponent))
        # A constant exponent (x^2 in LayerNorm decompositions, x^3 in tanh-GELU) becomes multiplications or a
        # square root: jnp.power would be exp(y*log(x)), costly under MPC and wrong for negative x.
        e = float(values[0]) if values.size == 1 else np.nan
        if np.isfinite(e):
            shape = jnp.broadcast_shapes(np.shape(base), np.shape(exponent))
            if e == int(e) and abs(e) <= 16:
                result = jax.lax.integer_pow(base, int(e)) if e >= 0 else 1.0 / jax.lax.integer_pow(base, -int(e))
                return jnp.broadcast_to(astype(result, out_dtype), shape)
            if e == 0.5:
                return jnp.broadcast_to(jnp.sqrt(base), shape)
            if e == -0.5:
                return jnp.broadcast_to(jax.lax.rsqrt(base), shape)
    if jnp.issubdtype(out_dtype, jnp.integer):
        if jnp.issubdtype(dtype_of(exponent), jnp.floating):
            return astype(jnp.power(astype(base, np.float64), exponent), out_dtype)
        return astype(jnp.power(base, astype(exponent, out_dtype)), out_dtype)
    return astype(jnp.power(base, astype(exponent, out_dtype)), out_dtype)


@register("Mod")
def mod(ctx):
    a, b = ctx.inputs
    # fmod=1 is C's fmod (sign of the dividend); fmod=0 (integers only) is Python's % (sign of the divisor).
    return jnp.fmod(a, b) if ctx.attr("fmod", 0) else jnp.remainder(a, b)


def _variadic(op_type: str, fn):
    @register(op_type)
    def lower(ctx):
        values = [v for v in ctx.inputs if v is not None]
        return functools.reduce(fn, values)

    lower.__name__ = f"lower_{op_type.lower()}"


for _name, _fn in {"Max": jnp.maximum, "Min": jnp.minimum, "Sum": jnp.add}.items():
    _variadic(_name, _fn)


@register("Mean")
def mean(ctx):
    values = [v for v in ctx.inputs if v is not None]
    return functools.reduce(jnp.add, values) / len(values)


@register("Where")
def where(ctx):
    cond, a, b = ctx.inputs
    return jnp.where(cond, a, b)


@register("Clip")
def clip(ctx):
    x = ctx.inputs[0]
    # Before opset 11 the bounds were attributes; from 11 they are optional inputs.
    lo = ctx.input(1, ctx.attr("min"))
    hi = ctx.input(2, ctx.attr("max"))
    dtype = dtype_of(x)
    if lo is not None:
        x = jnp.maximum(x, astype(lo, dtype))
    if hi is not None:
        # min > max gives max everywhere, as the spec says.
        x = jnp.minimum(x, astype(hi, dtype))
    return x


@register("IsInf")
def is_inf(ctx):
    x = ctx.inputs[0]
    pos = ctx.attr("detect_positive", 1)
    neg = ctx.attr("detect_negative", 1)
    if not jnp.issubdtype(dtype_of(x), jnp.floating):
        return jnp.zeros(np.shape(x), bool)
    if pos and neg:
        return jnp.isinf(x)
    if pos:
        return jnp.isposinf(x)
    if neg:
        return jnp.isneginf(x)
    return jnp.zeros(np.shape(x), bool)


@register("Dropout")
def dropout(ctx):
    """Inference only: the output is the input and the mask is all ones."""
    x = ctx.inputs[0]
    if ctx.has_input(2) and bool(np.asarray(ctx.static(2)).reshape(-1)[0]):
        refuse(ctx, "training_mode=True needs random numbers, which cipherdm does not generate inside the "
                    "program; export the model in eval mode")
    mask = jnp.ones(np.shape(x), bool)
    return (x, mask) if len(ctx.node.output) > 1 else x
