"""Attention (opset 23): scaled dot-product attention with 3-D or 4-D inputs, grouped/multi-query heads, is_causal,
boolean or additive masks, softcap, a key/value cache and every qk_matmul_output mode.

Masked positions are removed with a select after the exponential instead of adding -inf before it: SPU's
fixed-point exp returns garbage for very negative arguments (exp(-1000) is about -4e7 there), so an additive
-inf mask would leak weight onto masked keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.interpreter import is_static
from compiler.ops._common import dtype_of, refuse
from compiler.registry import register


def _split_heads(x, heads):
    b, s, hidden = np.shape(x)
    return jnp.transpose(jnp.reshape(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _merge_heads(x):
    b, h, s, d = np.shape(x)
    return jnp.reshape(jnp.transpose(x, (0, 2, 1, 3)), (b, s, h * d))


def _pad_mask(mask, total, fill):
    """A mask shorter than the total key length is padded at the end (False / -inf, per the reference)."""
    missing = total - np.shape(mask)[-1]
    if missing <= 0:
        return mask
    widths = [(0, 0)] * (np.ndim(mask) - 1) + [(0, missing)]
    if is_static(mask):
        return np.pad(mask, widths, constant_values=fill)
    return jnp.pad(mask, widths, constant_values=fill)


def masked_softmax(scores, allowed):
    """Softmax over the last axis where only ``allowed`` keys take part; fully masked rows give zeros."""
    if allowed is None:
        return jax.nn.softmax(scores, axis=-1)
    dtype = dtype_of(scores)
    # The shift uses allowed scores only, so exp never overflows and allowed weights never all underflow.
    shift = jnp.max(jnp.where(allowed, scores, jnp.asarray(-np.inf, dtype)), axis=-1, keepdims=True)
    weights = jnp.where(allowed, jnp.exp(scores - shift), jnp.zeros((), dtype))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    if is_static(allowed) and np.all(np.any(allowed, axis=-1)):
        return weights / total
    return weights / jnp.where(total == 0, jnp.ones((), dtype), total)


@register("Attention", since=23)
def attention(ctx):
    q, k, v = ctx.inputs[:3]
    mask, past_key, past_value = ctx.input(3), ctx.input(4), ctx.input(5)
    if (past_key is None) != (past_value is None):
        refuse(ctx, "past_key and past_value must be given together")
    three_d = np.ndim(q) == 3
    if three_d:
        q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if not q_heads or not kv_heads:
            refuse(ctx, "3-D inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = _split_heads(q, q_heads), _split_heads(k, kv_heads), _split_heads(v, kv_heads)
    elif np.ndim(q) != 4:
        refuse(ctx, f"Q must be 3-D or 4-D, got rank {np.ndim(q)}")
    dtype = dtype_of(q)
    if dtype in (np.float16, jnp.bfloat16):
        # Half-precision inputs are computed in float32 and rounded once at the end, like onnxruntime.
        q, k, v = (t.astype(np.float32) for t in (q, k, v))
        past_key, past_value = (None if t is None else t.astype(np.float32) for t in (past_key, past_value))
        if mask is not None and dtype_of(mask) != np.bool_:
            mask = mask.astype(np.float32)
    out_dtype, dtype = dtype, dtype_of(q)
    scale = ctx.attr("scale")
    scale = 1.0 / np.sqrt(np.shape(q)[-1]) if scale is None else scale
    past_length = 0
    if past_key is not None:
        past_length = np.shape(past_key)[2]
        k = jnp.concatenate([past_key, k], axis=2)
        v = jnp.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    heads, kv_heads = np.shape(q)[1], np.shape(k)[1]
    if heads != kv_heads:
        if heads % kv_heads:
            refuse(ctx, f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
        k = jnp.repeat(k, heads // kv_heads, axis=1)
        v = jnp.repeat(v, heads // kv_heads, axis=1)

    # One multiplication of Q by the scale (instead of Q and K by its square root): fewer truncations under MPC.
    scores = jnp.matmul(q * jnp.asarray(scale, dtype), jnp.swapaxes(k, -1, -2))
    qk_raw = scores
    softcap = ctx.attr("softcap", 0.0)
    if softcap and softcap > 0:
        scores = jnp.asarray(softcap, dtype) * jnp.tanh(scores / jnp.asarray(softcap, dtype))
    qk_capped = scores

    q_len, total = np.shape(scores)[-2:]
    allowed = None
    if ctx.attr("is_causal", 0):
        allowed = np.arange(total)[None, :] <= np.arange(q_len)[:, None] + past_length
    if mask is not None:
        if dtype_of(mask) == np.bool_:
            mask = _pad_mask(mask, total, False)
            allowed = mask if allowed is None else jnp.logical_and(allowed, mask)
        else:
            short = np.shape(mask)[-1] < total
            if short:
                # The padding of a short float mask means "masked": keep it out of the additive part.
                tail = np.arange(total) < np.shape(mask)[-1]
                allowed = tail if allowed is None else np.logical_and(allowed, tail)
            scores = scores + _pad_mask(mask, total, 0.0).astype(dtype)
    probabilities = masked_softmax(scores, allowed)
    y = jnp.matmul(probabilities.astype(dtype), v)
    if three_d:
        y = _merge_heads(y)

    outputs = [y, present_key, present_value]
    if len(ctx.node.output) > 3 and ctx.node.output[3]:
        mode = ctx.attr("qk_matmul_output_mode", 0)
        if mode == 0:
            outputs.append(qk_raw)
        elif mode == 1:
            outputs.append(qk_capped)
        elif mode == 2:
            masked = scores if allowed is None else jnp.where(allowed, scores, jnp.asarray(-np.inf, dtype))
            outputs.append(masked)
        elif mode == 3:
            outputs.append(probabilities.astype(dtype))
        else:
            refuse(ctx, f"qk_matmul_output_mode {mode}")
    return tuple(o.astype(out_dtype) for o in outputs)
