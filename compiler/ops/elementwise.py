"""Elementwise ops: arithmetic with numpy broadcasting, unary math, comparisons and logic."""

from __future__ import annotations

import jax.numpy as jnp

from compiler.registry import register


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


def _div(a, b):
    # ONNX Div on integers truncates toward zero (C semantics), unlike jnp's floor division.
    if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
        return jnp.trunc(jnp.true_divide(a, b)).astype(jnp.result_type(a, b))
    return jnp.divide(a, b)


for _name, _fn in {
    "Add": jnp.add, "Sub": jnp.subtract, "Mul": jnp.multiply, "Div": _div,
    "Equal": jnp.equal, "Less": jnp.less, "LessOrEqual": jnp.less_equal, "Greater": jnp.greater,
    "GreaterOrEqual": jnp.greater_equal, "And": jnp.logical_and, "Or": jnp.logical_or, "Xor": jnp.logical_xor,
}.items():
    _binary(_name, _fn)

for _name, _fn in {
    "Neg": jnp.negative, "Abs": jnp.abs, "Exp": jnp.exp, "Log": jnp.log, "Sqrt": jnp.sqrt,
    "Reciprocal": jnp.reciprocal, "Tanh": jnp.tanh, "Sin": jnp.sin, "Cos": jnp.cos, "Floor": jnp.floor,
    "Ceil": jnp.ceil, "Not": jnp.logical_not, "Sign": jnp.sign, "Identity": lambda x: x,
}.items():
    _unary(_name, _fn)
