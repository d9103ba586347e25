"""LayerNorm over the trailing axes from ``axis``: y = (x - mean) / sqrt(var + eps) * scale + bias.

Protocol (``norm``): mean and centred variance per row, an rsqrt per row (SPU's own or a ``newton_rsqrt``
variant fitted on the calibrated variance range), then centred * inv_std * scale + bias (the scale varies along
the row, so it cannot be folded into the per-row rsqrt: the saving is in the rsqrt's rounds and bytes).

Direct: the compiler's lowering with jax.lax.rsqrt; knob: enable_lower_accuracy_rsqrt.
"""

from __future__ import annotations

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol, load_fitted

OP = "layer_norm"
DEFAULT_INTERVAL = (0.01, 100.0)     # of the per-row variance
REFERENCE_TEXT = "(x - mean) / sqrt(var + eps) * scale + bias over the trailing axes, float64"
DESCRIPTION = "mean, centred variance, rsqrt per row, centred * inv_std * scale + bias"
SAMPLE_KW = {"axis": -1, "epsilon": 1e-5}


def reference(x, scale, bias=None, axis=-1, epsilon=1e-5):
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon) * np.asarray(scale, np.float64)
    return y if bias is None else y + np.asarray(bias, np.float64)


def samples(interval, n):
    """x [16, 24] whose rows' variances span the interval geometrically; random scale and bias."""
    low, high = (float(v) for v in interval)
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((16, 24))
    rows = (rows - rows.mean(axis=1, keepdims=True)) / rows.std(axis=1, keepdims=True)
    x = rows * np.sqrt(np.geomspace(low, high, 16))[:, None] + rng.normal(0, 1, (16, 1))
    return x, rng.uniform(0.5, 1.5, 24), rng.normal(0, 0.5, 24)


def fit_specs():
    return [{"rsqrt": p.name} for p in load_fitted("rsqrt")]


def build(spec: dict) -> dict:
    rs = {p.name: p for p in load_fitted("rsqrt")}[spec["rsqrt"]]
    params = {"rsqrt": {"family": rs.family, "params": dict(rs.params)}, "interval": list(rs.interval)}
    name = "layer_norm.rows." + rs.name.replace("rsqrt.", "")
    proto = Protocol(name, OP, "norm", params, interval=tuple(rs.interval), description=f"{DESCRIPTION} ({rs.name})")
    err = proto.error(*samples(rs.interval, 0), **SAMPLE_KW)
    return {**proto.to_json(), "fit": {"max_error": act._r1(err["max"]), "mean_error": act._r1(err["mean"]),
                                       "fixed_point_rel_floor": rs.fit.get("fixed_point_rel_floor", 0.0),
                                       "samples": "x [16, 24], row variances geometric over the interval"}}


def direct_expression(bk, protocol, inputs, epsilon=1e-5, axis=-1, **kw):
    x, scale, bias = (list(inputs) + [None, None])[:3]
    rows = bk.to_rows(x, axis)
    centered = bk.sub(rows, bk.mean(rows, 1))
    var = bk.mean(bk.mul(centered, centered), 1)
    return bk.rows_apply(bk.mul(centered, bk.native("rsqrt", bk.add_const(var, epsilon))), scale, bias, x)


def direct_variant(**kw):
    return act.direct_protocol(OP, "compiler lowering: centred * rsqrt(var + eps) * scale + bias, SPU defaults")


def knob_variants():
    return act.knob_protocols(OP, {"lowacc": {"enable_lower_accuracy_rsqrt": True}}, "compiler lowering")


def variants():
    return [direct_variant(), *knob_variants(), *load_fitted(OP)]

