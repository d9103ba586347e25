"""Matrix products: MatMul, Gemm, Einsum."""

from __future__ import annotations

import jax.numpy as jnp

from compiler.ops._common import dtype_of
from compiler.registry import register


@register("MatMul")
def matmul(ctx):
    a, b = ctx.inputs
    return jnp.matmul(a, b)


@register("Gemm")
def gemm(ctx):
    a, b = ctx.inputs[0], ctx.inputs[1]
    if ctx.attr("transA", 0):
        a = jnp.swapaxes(a, -1, -2)
    if ctx.attr("transB", 0):
        b = jnp.swapaxes(b, -1, -2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    dtype = dtype_of(a)
    y = jnp.matmul(a, b)
    # Scaling by exactly 1 is skipped: under MPC every multiplication by a non-integer costs a truncation.
    if alpha != 1.0:
        y = y * jnp.asarray(alpha, dtype)
    if ctx.has_input(2) and beta != 0.0:
        c = ctx.inputs[2]
        y = y + (c if beta == 1.0 else c * jnp.asarray(beta, dtype))
    return y


@register("Einsum")
def einsum(ctx):
    equation = ctx.attr("equation").replace(" ", "")
    return jnp.einsum(equation, *ctx.inputs)
