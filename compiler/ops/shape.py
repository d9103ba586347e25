"""Shape and data-movement ops. Shapes, axes and bounds must be static (folded at compile time)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import onnx

from compiler.registry import register


@register("Constant")
def constant(ctx):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in ctx.attrs:
            value = ctx.attrs[key]
            if key == "value_float":
                return np.array(value, np.float32)
            if key == "value_floats":
                return np.array(value, np.float32)
            if key in ("value_int", "value_ints"):
                return np.array(value, np.int64)
            return np.asarray(value)
    raise NotImplementedError(f"Constant {ctx.name}: only tensor, float(s) and int(s) values are supported")


@register("Shape")
def shape(ctx):
    dims = np.array(np.shape(ctx.inputs[0]), np.int64)
    start = ctx.attr("start", 0)
    end = ctx.attr("end", None)
    return dims[start:end]


@register("Reshape")
def reshape(ctx):
    data = ctx.inputs[0]
    target = ctx.static_ints(1)
    allowzero = ctx.attr("allowzero", 0)
    in_shape = np.shape(data)
    if not allowzero:
        target = [in_shape[i] if d == 0 else d for i, d in enumerate(target)]
    return jnp.reshape(data, target)


@register("Cast")
def cast(ctx):
    to = onnx.helper.tensor_dtype_to_np_dtype(ctx.attr("to"))
    x = ctx.inputs[0]
    return x.astype(to)
