"""Conv and ConvTranspose through jax.lax.conv_general_dilated (NC... layout, OI... kernels).

SPU 0.9.5 fails at run time on convolutions with feature groups, so groups > 1 (depthwise included) are lowered
as one convolution per group, concatenated along the channel axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ops._common import refuse
from compiler.registry import register


def _spatial_attrs(ctx, kernel):
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    return strides, dilations


def _same_pads(in_sizes, kernel, strides, dilations, upper: bool):
    pads = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        pads.append((small, total - small) if upper else (total - small, small))
    return pads


def conv_pads(ctx, in_sizes, kernel, strides, dilations):
    """(begin, end) padding per spatial axis from pads / auto_pad."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if auto_pad == "NOTSET":
        pads = list(ctx.attr("pads", [0] * 2 * n))
        return [(pads[i], pads[i + n]) for i in range(n)]
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sizes, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    refuse(ctx, f"auto_pad '{auto_pad}'")


def _conv(x, w, strides, padding, dilations, lhs_dilation=None):
    return jax.lax.conv_general_dilated(x, w, window_strides=strides, padding=padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=dilations)


def _per_group(x, w, groups, conv_one):
    """Run ``conv_one(x_g, w_g)`` per channel group and concatenate along the output channels."""
    if groups == 1:
        return conv_one(x, w)
    xs = jnp.split(x, groups, axis=1)
    ws = jnp.split(w, groups, axis=0)
    return jnp.concatenate([conv_one(xg, wg) for xg, wg in zip(xs, ws)], axis=1)


def _add_bias(y, ctx):
    if not ctx.has_input(2):
        return y
    bias = ctx.inputs[2]
    return y + jnp.reshape(bias, (1, -1) + (1,) * (np.ndim(y) - 2))


@register("Conv")
def conv(ctx):
    x, w = ctx.inputs[0], ctx.inputs[1]
    kernel = list(np.shape(w)[2:])
    groups = ctx.attr("group", 1)
    if np.shape(x)[1] != np.shape(w)[1] * groups:
        refuse(ctx, f"input has {np.shape(x)[1]} channels but the weight expects {np.shape(w)[1]} x {groups} groups")
    strides, dilations = _spatial_attrs(ctx, kernel)
    pads = conv_pads(ctx, np.shape(x)[2:], kernel, strides, dilations)
    y = _per_group(x, w, groups, lambda xg, wg: _conv(xg, wg, strides, pads, dilations))
    return _add_bias(y, ctx)


def _transpose_pads(ctx, in_sizes, kernel, strides, dilations, output_padding):
    """(begin, end) cropping of the full transposed-convolution output, per spatial axis."""
    n = len(kernel)
    output_shape = ctx.attr("output_shape")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for i, k, s, d, op in zip(in_sizes, kernel, strides, dilations, output_padding)]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            wanted = list(output_shape)[-n:]
        else:
            wanted = [i * s for i, s in zip(in_sizes, strides)]
        pads = []
        for f, o in zip(full, wanted):
            total = f - o
            small = total // 2
            # The extra unit of an odd total goes to the end for SAME_UPPER, to the start otherwise (the spec).
            pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad != "NOTSET":
        refuse(ctx, f"auto_pad '{auto_pad}'")
    pads = list(ctx.attr("pads", [0] * 2 * n))
    return [(pads[i], pads[i + n]) for i in range(n)]


@register("ConvTranspose")
def conv_transpose(ctx):
    x, w = ctx.inputs[0], ctx.inputs[1]
    kernel = list(np.shape(w)[2:])
    n = len(kernel)
    groups = ctx.attr("group", 1)
    strides, dilations = _spatial_attrs(ctx, kernel)
    output_padding = list(ctx.attr("output_padding", [0] * n))
    pads = _transpose_pads(ctx, np.shape(x)[2:], kernel, strides, dilations, output_padding)
    # A transposed convolution is a convolution of the stride-dilated input with the spatially flipped kernel,
    # its in/out channel axes swapped, padded by (k-1)*d minus the ONNX pads. Negative padding (pads larger than
    # (k-1)*d) becomes a crop of the result.
    padding, crops = [], []
    for (begin, end), k, d, op in zip(pads, kernel, dilations, output_padding):
        lo, hi = (k - 1) * d - begin, (k - 1) * d - end + op
        padding.append((max(lo, 0), max(hi, 0)))
        crops.append((max(-lo, 0), max(-hi, 0)))
    flip = tuple(range(2, 2 + n))

    def conv_one(xg, wg):
        kernel_oi = jnp.swapaxes(jnp.flip(wg, axis=flip), 0, 1)
        return _conv(xg, kernel_oi, [1] * n, padding, dilations, lhs_dilation=strides)

    y = _per_group(x, w, groups, conv_one)
    if any(c for pair in crops for c in pair):
        y = y[(slice(None), slice(None)) + tuple(slice(b, np.shape(y)[2 + i] - e) for i, (b, e) in enumerate(crops))]
    return _add_bias(y, ctx)
