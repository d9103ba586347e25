"""Helpers shared by the op modules (no lowerings here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx

from compiler.errors import LoweringError
from compiler.interpreter import is_static


def onnx_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX TensorProto element type; strings and unknown types are refused."""
    if elem_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        raise NotImplementedError(f"tensors of ONNX type {onnx.TensorProto.DataType.Name(elem_type)} are not supported")
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def astype(x, dtype):
    """Cast to ``dtype``: exactly for static numpy values, to jax's 32-bit canonical type for traced ones."""
    dtype = np.dtype(dtype)
    if is_static(x) or isinstance(x, (bool, int, float)):
        return np.asarray(x).astype(dtype)
    target = jax.dtypes.canonicalize_dtype(dtype)
    return x if x.dtype == target else x.astype(target)


def dtype_of(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def normalize_axes(axes, rank: int) -> list[int]:
    return [normalize_axis(int(a), rank) for a in axes]


def refuse(ctx, *problems: str):
    """Raise the LoweringError a user sees when a node uses a feature cipherdm deliberately does not lower."""
    raise LoweringError(f"node {ctx.name} ({ctx.node.op_type})", list(problems))


def float_dtype(x):
    """The dtype computations on ``x`` should use (integers are computed in float32)."""
    dt = dtype_of(x)
    return dt if jnp.issubdtype(dt, jnp.floating) else np.dtype(np.float32)


def block_diagonal(blocks):
    """[B, r, c] -> [B*r, B*c] with block i at rows i*r.., columns i*c.. and zeros elsewhere. Built by padding, so
    under SPU the zeros are public and the construction exchanges nothing."""
    count, _, cols = blocks.shape
    return jnp.concatenate([jnp.pad(blocks[i], ((0, 0), (i * cols, (count - 1 - i) * cols))) for i in range(count)],
                           axis=0)
