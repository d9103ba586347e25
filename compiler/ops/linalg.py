"""Matrix products: MatMul, Gemm, Einsum."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import block_diagonal, dtype_of
from compiler.registry import register


# SPU runs a batched product as one product per batch, each with its own rounds (~3 per batch: 24 for the 8
# batches of the MNIST U-Net's attention scores). When the contraction is short, all batches fit one 2-D product
# against a block-diagonal operand (zeros are public, so building it costs nothing): the same outputs and bytes,
# 4 rounds, and half the time (SPU 0.9.5, [196, 256] x [256, 1568] against 8 x [196, 32] x [32, 196]). With a long
# contraction SPU's product slows down more than the rounds save ([196, 1568] x [1568, 256] took 1.2x the
# batched time), so those stay batched.
FLAT_MAX_CONTRACTION = 256
FLAT_MAX_BLOCK = 1 << 22        # elements of the block-diagonal operand


def runs_as_one_product(a_shape, b_shape) -> bool:
    """Whether MatMul lowers a batched product of these shapes as one product (also read by passes/cost.py)."""
    if len(a_shape) < 3 or len(a_shape) != len(b_shape) or tuple(a_shape[:-2]) != tuple(b_shape[:-2]):
        return False
    batch = int(np.prod(a_shape[:-2]))
    contraction, columns = a_shape[-1], b_shape[-1]
    return 1 < batch and batch * contraction <= FLAT_MAX_CONTRACTION \
        and batch * contraction * batch * columns <= FLAT_MAX_BLOCK


@register("MatMul")
def matmul(ctx):
    a, b = ctx.inputs
    if runs_as_one_product(a.shape, b.shape):
        return _batched_as_one_product(a, b)
    return jnp.matmul(a, b)


def _batched_as_one_product(a, b):
    """a @ b over the leading batch dims as [m, B*k] @ blockdiag(b_1..b_B) [B*k, B*n]."""
    batch_shape, (m, k), n = a.shape[:-2], a.shape[-2:], b.shape[-1]
    batch = int(np.prod(batch_shape))
    a3, b3 = jnp.reshape(a, (batch, m, k)), jnp.reshape(b, (batch, k, n))
    left = jnp.reshape(jnp.transpose(a3, (1, 0, 2)), (m, batch * k))
    out = jnp.reshape(left @ block_diagonal(b3), (m, batch, n))
    return jnp.reshape(jnp.transpose(out, (1, 0, 2)), (*batch_shape, m, n))


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
