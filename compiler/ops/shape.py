"""Shape ops and casts. Shapes, axes and target types must be static (folded at compile time)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from compiler.ops._common import astype, dtype_of, normalize_axes, onnx_dtype, refuse
from compiler.registry import register


@register("Constant")
def constant(ctx):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in ctx.attrs:
            value = ctx.attrs[key]
            if key in ("value_float", "value_floats"):
                return np.array(value, np.float32)
            if key in ("value_int", "value_ints"):
                return np.array(value, np.int64)
            if np.asarray(value).dtype.kind in "OSU":
                refuse(ctx, "string constants are not supported (no string tensors under MPC)")
            return np.asarray(value)
    refuse(ctx, f"Constant with attribute {', '.join(ctx.attrs) or '(none)'}: only value, value_float(s) and "
                "value_int(s) are supported (no sparse or string constants)")


@register("ConstantOfShape")
def constant_of_shape(ctx):
    shape = ctx.static_ints(0)
    value = ctx.attr("value")
    fill = np.zeros((), np.float32) if value is None else np.asarray(value).reshape(())
    return np.full(shape, fill, fill.dtype)


@register("Shape")
def shape(ctx):
    dims = np.array(np.shape(ctx.inputs[0]), np.int64)
    start = ctx.attr("start", 0)
    end = ctx.attr("end", None)
    return dims[start:end]


@register("Size")
def size(ctx):
    return np.array(int(np.prod(np.shape(ctx.inputs[0]), dtype=np.int64)), np.int64)


@register("Reshape")
def reshape(ctx):
    data = ctx.inputs[0]
    target = ctx.static_ints(1)
    allowzero = ctx.attr("allowzero", 0)
    in_shape = np.shape(data)
    if not allowzero:
        # 0 copies the input's dimension at the same index.
        target = [in_shape[i] if d == 0 else d for i, d in enumerate(target)]
    return jnp.reshape(data, target)


@register("Flatten")
def flatten(ctx):
    x = ctx.inputs[0]
    shape = np.shape(x)
    axis = ctx.attr("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return jnp.reshape(x, (outer, int(np.prod(shape[axis:], dtype=np.int64))))


def _squeeze(x, axes):
    shape = np.shape(x)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = normalize_axes(axes, len(shape))
    bad = [a for a in axes if shape[a] != 1]
    if bad:
        raise ValueError(f"Squeeze of axes {bad} whose size is not 1 (shape {list(shape)})")
    return jnp.reshape(x, [d for i, d in enumerate(shape) if i not in axes])


def _unsqueeze(x, axes):
    shape = list(np.shape(x))
    rank = len(shape) + len(axes)
    for axis in sorted(normalize_axes(axes, rank)):
        shape.insert(axis, 1)
    return jnp.reshape(x, shape)


@register("Squeeze", since=1)
def squeeze_attr(ctx):
    return _squeeze(ctx.inputs[0], ctx.attr("axes"))


@register("Squeeze", since=13)
def squeeze(ctx):
    return _squeeze(ctx.inputs[0], ctx.static_ints(1))


@register("Unsqueeze", since=1)
def unsqueeze_attr(ctx):
    return _unsqueeze(ctx.inputs[0], ctx.attr("axes"))


@register("Unsqueeze", since=13)
def unsqueeze(ctx):
    return _unsqueeze(ctx.inputs[0], ctx.static_ints(1))


@register("Transpose")
def transpose(ctx):
    x = ctx.inputs[0]
    perm = ctx.attr("perm")
    return jnp.transpose(x, None if perm is None else normalize_axes(perm, np.ndim(x)))


@register("Expand")
def expand(ctx):
    x = ctx.inputs[0]
    # Expand broadcasts both ways: a 1 in the requested shape keeps the input's dimension.
    shape = np.broadcast_shapes(np.shape(x), tuple(ctx.static_ints(1)))
    return jnp.broadcast_to(x, shape)


@register("Cast")
def cast(ctx):
    to = onnx_dtype(ctx.attr("to"))
    return astype(ctx.inputs[0], to)


@register("CastLike")
def cast_like(ctx):
    return astype(ctx.inputs[0], dtype_of(ctx.inputs[1]))


@register("Range", static_inputs=(0, 1, 2))
def range_(ctx):
    start, limit, delta = (ctx.static(i) for i in range(3))
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    dtype = start.dtype
    # start + i*delta computed in the input type, as the spec's loop does.
    return (start + np.arange(count).astype(dtype) * delta).astype(dtype)


@register("EyeLike")
def eye_like(ctx):
    x = ctx.inputs[0]
    dtype = onnx_dtype(ctx.attr("dtype")) if ctx.attr("dtype") is not None else dtype_of(x)
    rows, cols = np.shape(x)
    return np.eye(rows, cols, ctx.attr("k", 0), dtype=dtype)


@register("DepthToSpace")
def depth_to_space(ctx):
    x = ctx.inputs[0]
    b = ctx.attr("blocksize")
    n, c, h, w = np.shape(x)
    if ctx.attr("mode", "DCR") == "DCR":
        y = jnp.reshape(x, (n, b, b, c // (b * b), h, w)).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = jnp.reshape(x, (n, c // (b * b), b, b, h, w)).transpose(0, 1, 4, 2, 5, 3)
    return jnp.reshape(y, (n, c // (b * b), h * b, w * b))


@register("SpaceToDepth")
def space_to_depth(ctx):
    x = ctx.inputs[0]
    b = ctx.attr("blocksize")
    n, c, h, w = np.shape(x)
    y = jnp.reshape(x, (n, c, h // b, b, w // b, b)).transpose(0, 3, 5, 1, 2, 4)
    return jnp.reshape(y, (n, c * b * b, h // b, w // b))

