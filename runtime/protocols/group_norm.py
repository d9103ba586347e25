"""GroupNorm: y = (x - mean_g) / sqrt(var_g + eps) * scale_c + bias_c over groups of C/G channels.

Protocol (``norm``): mean and centred variance per group (one square per element; the means are sums times a
public 1/n; or, set per node by :func:`specialize_shape` where the sums fit the ring, the sums of squares as the
diagonal of one Gram product of the groups' rows: (N*G)^2 products exchanged instead of N*G*L squares), an rsqrt
per group (SPU's own, or a ``newton_rsqrt`` variant fitted on the calibrated variance
range: segment scaling + polynomial guess + Newton steps), then the scale folded into it per (sample, channel)
(scale_c * inv_std_g on N x C values) so each element costs one multiply instead of two.

Direct: the compiler's lowering (mean, centred variance, jax.lax.rsqrt per group, centred * inv_std, then
* scale + bias per element); knob: enable_lower_accuracy_rsqrt.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol, SpuKnobs, load_fitted
from runtime.spu_config import DEFAULT_FXP_BITS

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


# A group's sum of squares is n * var: untruncated it holds 2f fraction bits and must stay below 2^62 (FM64: the
# sign bit and one bit of slack). It is a square of the values, so it gets the square of the margin
# passes/fixed_point.py gives a value (4) for inputs the calibration did not see.
SQUARE_SUM_MARGIN = 16.0
RING_ROOM_BITS = 62

def square_sum_shift(shape, num_groups: int, var_high: float, fraction_bits: int | None) -> int | None:
    """Bits to scale one operand of the sum-of-squares product down by so that MARGIN x the largest group sum of
    squares fits the ring (0: none, no truncation at all); None when the product would not pay (N*G >= L: the Gram
    product's (N*G)^2 outputs against N*G*L squares) or the shift would swamp the values."""
    bits = DEFAULT_FXP_BITS if fraction_bits is None else int(fraction_bits)
    rows = int(shape[0]) * int(num_groups)
    length = int(np.prod(shape[1:], dtype=np.int64)) // int(num_groups)
    if rows >= length or not (var_high > 0 and math.isfinite(var_high)):
        return None
    need = math.log2(length * var_high * SQUARE_SUM_MARGIN) + 2 * bits - RING_ROOM_BITS
    shift = max(0, math.ceil(need))
    return shift if shift <= bits // 2 else None


def specialize_shape(protocol, shape, attrs: dict, interval, fraction_bits: int | None) -> list:
    """This node's forms of the protocol, the preferred first: the variance as one sum-of-squares product where
    that fits (see :func:`square_sum_shift`), and the rsqrt fitted on the node's own variance range where that is
    narrow (see :func:`calibrated_rsqrts`); ``interval`` is the node's variance range, calibrated or conservative.
    The chooser takes the first whose error meets the budget."""
    if protocol.family != "norm" or "num_groups" not in attrs:
        return [protocol]
    shift = square_sum_shift(shape, attrs["num_groups"], float(interval[1]), fraction_bits)
    if shift is not None:
        protocol = dataclasses.replace(protocol, name=f"{protocol.name}@sq{shift}",
                                       params={**protocol.params, "square_sum": {"shift": shift}})
    narrow = []
    for rsqrt in calibrated_rsqrts(interval):
        p = rsqrt["params"]
        lo, hi = p["interval"]
        narrow.append(dataclasses.replace(
            protocol, name=f"{protocol.name}@rs{lo:.4g}-{hi:.4g}.d{p['degree']}.n{p['newton_steps']}",
            params={**protocol.params, "rsqrt": rsqrt}))
    return narrow + [protocol]


# The rsqrt of a norm runs once per group: its bytes are nothing, its rounds (~45 of a GroupNorm's ~57 with a
# wide-range variant: 4 segments and 2 Newton steps) are what it costs. On a node's own narrow variance range one
# polynomial guess (degree 2 or 3) is accurate without Newton steps, or with one or two.
RSQRT_REL_CAP = 2e-3              # forms predicted less accurate than this are not offered
RSQRT_GRID = 2.0 ** 0.125         # interval ends snap outward to this geometric grid (fewer distinct fits)
RSQRT_MAX_RATIO = 16.0
# by rounds: a degree-3 guess takes one product more than degree 2 (3 rounds), a Newton step three (9 rounds)
RSQRT_FORMS = [(2, 0), (3, 0), (2, 1), (3, 1), (2, 2), (3, 2)]


@lru_cache(maxsize=256)
def _rsqrt_fit(lo: float, hi: float, degree: int):
    from runtime.protocols.reciprocal import guess_coefficients
    return guess_coefficients([lo, hi], 1, degree, 0.5)


def calibrated_rsqrts(interval) -> list[dict]:
    """newton_rsqrt specs fitted on ``interval`` (snapped outward to RSQRT_GRID), by rounds, each the most
    accurate up to its rounds, down to one whose relative error (after its Newton steps, predicted from the
    guess's) is below 1e-6; none for a wide range. The clamp to the interval stays: a variance beyond it gets the
    end's value (sane), never an extrapolated polynomial."""
    low, high = (float(v) for v in interval)
    if not (0 < low < high and math.isfinite(high)):
        return []
    step = math.log(RSQRT_GRID)
    lo = math.exp(math.floor(math.log(low) / step) * step)
    hi = math.exp(math.ceil(math.log(high) / step) * step)
    if hi / lo > RSQRT_MAX_RATIO:
        return []
    specs, best = [], math.inf
    for degree, steps in RSQRT_FORMS:
        coeffs, error = _rsqrt_fit(lo, hi, degree)
        for _ in range(steps):
            error = 1.5 * error * error      # Newton on rsqrt: e -> 3/2 e^2 (leading term)
        if error > RSQRT_REL_CAP or error >= best:
            continue
        best = error
        specs.append({"family": "newton_rsqrt", "predicted_rel_error": error, "params": {
            "interval": [lo, hi], "segments": 1, "degree": degree, "coeffs": coeffs, "newton_steps": steps,
            "clamp": True}})
        if error < 1e-6:
            break
    return specs
