"""GroupNorm: y = (x - mean_g) / sqrt(var_g + eps) * scale_c + bias_c over groups of C/G channels.

Protocol (``norm``): mean and centred variance per group (one square per element; the means are sums times a
public 1/n), an rsqrt per group (SPU's own, or a ``newton_rsqrt`` variant fitted on the calibrated variance
range: segment scaling + polynomial guess + Newton steps), then the scale folded into it per (sample, channel)
(scale_c * inv_std_g on N x C values) so each element costs one multiply instead of two.

Direct: the compiler's lowering (mean, centred variance, jax.lax.rsqrt per group, centred * inv_std, then
* scale + bias per element); knob: enable_lower_accuracy_rsqrt.
"""

from __future__ import annotations

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol, SpuKnobs, load_fitted

OP = "group_norm"
DEFAULT_INTERVAL = (0.01, 100.0)     # of the per-group variance
REFERENCE_TEXT = "(x - mean) / sqrt(var + eps) * scale + bias over groups, float64"
DESCRIPTION = "mean, centred variance, rsqrt per group, scale folded per channel, one multiply per element"
SAMPLE_KW = {"num_groups": 4, "epsilon": 1e-5}


def reference(x, scale, bias, num_groups, epsilon=1e-5):
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    g = np.reshape(x, (n, int(num_groups), -1))
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = np.reshape((g - mean) / np.sqrt(var + epsilon), x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * np.reshape(scale, shape) + np.reshape(bias, shape)


def samples(interval, n):
    """x [2, 8, 6, 6] in 4 groups whose variances span the interval geometrically; random scale and bias."""
    low, high = (float(v) for v in interval)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 6, 6))
    groups = np.reshape(x, (2, 4, -1))
    groups = (groups - groups.mean(axis=2, keepdims=True)) / groups.std(axis=2, keepdims=True)
    var = np.geomspace(low, high, 8).reshape(2, 4, 1)
    x = np.reshape(groups * np.sqrt(var) + rng.normal(0, 1, (2, 4, 1)), (2, 8, 6, 6))
    return x, rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.5, 8)


def _rsqrt_variants():
    return load_fitted("rsqrt")


def fit_specs():
    """One variant per fitted rsqrt variant (so rsqrt.json must be fitted first)."""
    return [{"rsqrt": p.name} for p in _rsqrt_variants()]


def build(spec: dict) -> dict:
    rs = {p.name: p for p in _rsqrt_variants()}[spec["rsqrt"]]
    params = {"rsqrt": {"family": rs.family, "params": dict(rs.params)}, "interval": list(rs.interval)}
    name = "group_norm.fold." + rs.name.replace("rsqrt.", "")
    proto = Protocol(name, OP, "norm", params, interval=tuple(rs.interval), description=f"{DESCRIPTION} ({rs.name})")
    err = proto.error(*samples(rs.interval, 0), **SAMPLE_KW)
    return {**proto.to_json(), "fit": {"max_error": act._r1(err["max"]), "mean_error": act._r1(err["mean"]),
                                       "fixed_point_rel_floor": rs.fit.get("fixed_point_rel_floor", 0.0),
                                       "samples": "x [2,8,6,6], 4 groups, variances geometric over the interval"}}


def direct_expression(bk, protocol, inputs, epsilon=1e-5, num_groups=None, **kw):
    x, scale, bias = inputs
    grouped = bk.to_groups(x, num_groups)
    centered = bk.sub(grouped, bk.mean(grouped, 2))
    var = bk.mean(bk.mul(centered, centered), 2)
    normalized = bk.mul(centered, bk.native("rsqrt", bk.add_const(var, epsilon)))
    return bk.group_apply(normalized, bk.channel_vector(scale), bias, x)


def direct_variant(**kw):
    return act.direct_protocol(OP, "compiler lowering: centred * rsqrt(var + eps) * scale + bias, SPU defaults")


def knob_variants():
    return act.knob_protocols(OP, {"lowacc": {"enable_lower_accuracy_rsqrt": True}}, "compiler lowering")


def fold_variants():
    return [
        Protocol("group_norm.fold", OP, "norm", {"rsqrt": {"family": "direct"}}, description=f"{DESCRIPTION} "
                 "(SPU's rsqrt)"),
        Protocol("group_norm.fold.lowacc", OP, "norm", {"rsqrt": {"family": "direct"}},
                 SpuKnobs({"enable_lower_accuracy_rsqrt": True}), description=f"{DESCRIPTION} (SPU's "
                 "lower-accuracy rsqrt)"),
    ]


def variants():
    return [direct_variant(), *knob_variants(), *fold_variants(), *load_fitted(OP)]

