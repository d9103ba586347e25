"""SoftMax over one axis.

Protocol (``softmax_max``): m = max(x) over the axis (SPU's comparison tree), e = exp_square(x - m) (never
negative, exactly 1 at the maximum so the row sum S is in [1, n], exactly 0 below L), S = sum(e), one SPU
reciprocal per row (not per element), then one multiply per element.

Protocol (``softmax_shift``): no max tree (its 8 comparison levels are ~90 rounds for a row of 256): subtract
the row mean plus U, a calibrated bound on max - mean, and clip exp's argument to [L, 0] at both ends in one
comparison. max >= mean keeps the row sum >= exp(-U) > 0; rows whose spread exceeds U saturate (still a
distribution: non-negative, sums to 1). Same bytes as max-subtract, a third of the rounds.

Bounded rows (``softmax_shift`` with ``clip`` "bound", names ``softmax.shiftb``): no comparison per element.
One entry of a row of x - mean is at most the square root of the row's sum of squares, so a row whose sum of
squares is within B^2 has every argument of exp in [-(B + U), B - U], inside exp's fitted range: no clip is
needed. Rows beyond are multiplied by B / sqrt(sum) (a per-row rsqrt, selected by a per-row comparison): a lower
temperature, still a distribution. A square and a multiply per element replace a comparison and a select, which
SPU 0.9.5 computes ~12x slower than a multiply; B is set per node from the calibrated rows (``specialize``).
``softmax.shiftb4`` bounds each entry by the row's 4-norm instead (a second square per element): on rows of 256
Gaussian logits the 2-norm is ~16 sigma and the 4-norm ~5.3 sigma (the largest entry ~2.9 sigma), so long rows
fit a shorter exp range, where the 2-norm would need one beyond every fitted exp.

Direct: the compiler's jax.nn.softmax: exp(x - max) / sum, where SPU divides every element by the broadcast
sum (a reciprocal per element); the knob variant sets CompilerOptions.enable_optimize_denominator_with_broadcast,
which makes SPU take the reciprocal per row; ``exp6`` adds fxp_exp_iters = 6. The direct exp has no clip: it
wraps around for x - max < -2^(n+1) (``sane``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from runtime import fxp_scale
from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol, load_fitted

OP = "softmax"
DEFAULT_INTERVAL = (-16.0, 0.0)
REFERENCE_TEXT = "exp(x - max) / sum(exp(x - max)) over the axis, float64"
DESCRIPTION = "max-subtract, clipped exp_square, one reciprocal per row, one multiply"
ROW = 64


def reference(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def samples(interval, n):
    """Rows of 64 logits whose spread (max - min) covers the interval's width; a few rows are constant or have
    one dominant entry."""
    low, high = (float(v) for v in interval)
    rows = max(int(n) // ROW, 8)
    rng = np.random.default_rng(12345)
    x = rng.uniform(low, high, size=(rows, ROW))
    x[0] = 0.0
    x[1] = low
    x[1, 0] = high
    return (x,)


# exp variants the softmax variants use (names from exp.json)
EXP_CHOICES = ("exp.sq.l16.k2.d2", "exp.sq.l12.k3.d2", "exp.sq.l12.k2.d3", "exp.sq.l16.k3.d3", "exp.sq.l16.k3.d4")
LOW_CLIP_EXPS = ("exp.sq.l8.k2.d2", "exp.sq.l8.k2.d3", "exp.sq.l12.k2.d3", "exp.sq.l16.k3.d3")
# bounded rows (no comparison per element): exp's range [L, 0] must hold B + U, so the wider ranges too
BOUND_EXPS = ("exp.sq.l8.k2.d2", "exp.sq.l8.k2.d3", "exp.sq.l12.k2.d3", "exp.sq.l12.k3.d2", "exp.sq.l16.k2.d2",
              "exp.sq.l16.k3.d3", "exp.sq.l24.k3.d3", "exp.sq.l24.k4.d3")
# box-bounded rows (softmax.box): exp's range must hold the calibrated box range R(q); monic (degree <= 3), since
# the query takes exp's input scale too
# (relative fits: a row's maximum sits below 0 by the bound's slack, and its large entries must stay accurate)
BOX_EXPS = ("exp.sq.l16.k4.d3.r6", "exp.sq.l24.k4.d3.r6", "exp.sq.l32.k5.d3.r8", "exp.sq.l32.k5.d3.r12",
            "exp.sq.l48.k5.d3.r10", "exp.sq.l64.k6.d3.r12", "exp.sq.l32.k4.d3.r8", "exp.sq.l32.k4.d3.r10",
            "exp.sq.l32.k5.d2.r8", "exp.sq.l64.k5.d3.r10", "exp.sq.l64.k5.d3.r12", "exp.sq.l64.k6.d2.r12",
            "exp.sq.l40.k4.d3.r10", "exp.sq.l40.k4.d3.r12", "exp.sq.l56.k5.d2.r8", "exp.sq.l56.k5.d2.r10")
# B + U stays this fraction inside exp's range: the rsqrt that scales a row down errs by ~3e-3 (relative)
BOUND_ROOM = 0.98
FIT_SPECS = [{"exp": name} for name in EXP_CHOICES] + [
    {"exp": "exp.sq.l16.k3.d3", "upper": 4.0},
    {"exp": "exp.sq.l16.k3.d3", "upper": 8.0},
    {"exp": "exp.sq.l12.k2.d3", "upper": 4.0},
] + [{"exp": name, "upper": 4.0, "clip": "low"} for name in LOW_CLIP_EXPS] + [
    {"exp": name, "upper": 2.0, "clip": "bound"} for name in BOUND_EXPS] + [
    {"exp": name, "upper": 2.0, "clip": "bound", "norm": 4} for name in BOUND_EXPS] + [
    {"exp": name, "clip": "box"} for name in BOX_EXPS]
# U is rounded up to this step when a shift variant is specialised to a node's calibrated rows
UPPER_STEP = 0.25
# A bounded-rows variant applies where the calibrated rows' norms, this much larger, stay within B
MARGIN_OF_ROWS = 0.10
MAX_UPPER = 5.5
# A low-clip variant's row sum must stay below 2^40 for rows of up to this many elements, also where U was too
# small and exp's polynomial is extrapolated above 0 (FM64 holds 2^41 with 22 fraction bits, the most the
# compiler picks: passes/fixed_point.py).
LOW_CLIP_ROW = 4096
LOW_CLIP_SUM = 2.0 ** 40


def low_clip_headroom(exp) -> float:
    """How far above 0 the shifted argument may go (a row's max - mean beyond U) before a row of LOW_CLIP_ROW
    such values overflows SPU's fixed-point range: recorded in the fit, documented in the report."""
    grid = np.arange(0.0, 200.0, 0.5)
    values = exp.numpy_fn(grid)
    ok = grid[(values * LOW_CLIP_ROW < LOW_CLIP_SUM) & (np.diff(values, prepend=0.0) >= 0)]
    return float(ok.max())


def spread_samples(upper: float, rows: int = 512):
    """Rows of 64 logits whose max - mean stays below ``upper`` (what a shift variant is calibrated for)."""
    rng = np.random.default_rng(54321)
    x = rng.normal(0.0, 1.0, (rows, ROW))
    spread = (x.max(axis=1) - x.mean(axis=1))[:, None]
    return (x / spread * rng.uniform(0.05, 0.98, (rows, 1)) * upper + rng.normal(0, 3, (rows, 1)),)


def build(spec: dict) -> dict:
    exp = {p.name: p for p in load_fitted("exp")}[spec["exp"]]
    if spec.get("clip") == "box":
        return build_box(exp)
    if "upper" in spec:
        return build_shift(exp, float(spec["upper"]), spec.get("clip", "both"), int(spec.get("norm", 2)))
    params = {"exp": dict(exp.params), "interval": list(exp.interval)}
    name = "softmax.max." + spec["exp"].replace("exp.", "")
    proto = Protocol(name, OP, "softmax_max", params, interval=tuple(exp.interval),
                     description=f"{DESCRIPTION} ({exp.name})")
    err = proto.error(*samples(exp.interval, 1 << 15))
    wide = proto.error(*samples((4 * exp.interval[0], 0.0), 1 << 14))
    return {**proto.to_json(), "fit": {"max_error": act._r1(err["max"]), "mean_error": act._r1(err["mean"]),
                                       "max_error_everywhere": act._r1(max(err["max"], wide["max"])),
                                       "rows": "64 logits per row, uniform in the interval"}}


def bound_for(exp_params: dict, upper: float, headroom: float) -> float:
    """The largest B for this U: B + U within exp's range (below: x - mean - U >= -(B + U) >= L, where exp's
    polynomial is right) and B - U within the headroom above 0 (a row sum that cannot overflow)."""
    return min(BOUND_ROOM * -float(exp_params["lower"]) - upper, headroom + upper)


def build_shift(exp, upper: float, clip: str = "both", norm: int = 2) -> dict:
    params = {"upper": upper, "exp": dict(exp.params), "interval": list(exp.interval)}
    headroom = low_clip_headroom(exp) if clip in ("low", "bound") else None
    if clip == "bound":
        params.update(clip="bound", headroom=headroom, bound=bound_for(exp.params, upper, headroom))
        params["exp"]["clip"] = False
        if norm == 4:
            params.update(norm=4, square_limit=square_limit())
        name = f"softmax.shiftb{'4' if norm == 4 else ''}.u{upper:g}." + exp.name.replace("exp.", "")
        how = (f"with no comparison per element: each row of x - mean scaled into [-B, B] (rows whose {norm}-norm "
               f"exceeds B by a factor of at most B / norm, a lower temperature), so exp's argument stays in "
               f"[L, B - U]")
    elif clip == "low":
        params["clip"] = "low"
        name = f"softmax.shiftlo.u{upper:g}." + exp.name.replace("exp.", "")
        how = (f"clipped below L only (rows with max - mean above U extrapolate exp's polynomial: positive, "
               f"increasing, within SPU's range up to {headroom:g} above U)")
    else:
        name = f"softmax.shift.u{upper:g}." + exp.name.replace("exp.", "")
        how = "clipped to [L, 0] at both ends"
    proto = Protocol(name, OP, "softmax_shift", params, interval=tuple(exp.interval),
                     description=f"no max: x - mean - U through {exp.name} {how}, reciprocal per row, multiply; "
                                 f"U = {upper:g} here, set per node to the calibrated bound on max - mean")
    err = proto.error(*spread_samples(upper))
    wide = proto.error(*samples((4 * exp.interval[0], 0.0), 1 << 14))
    fit = {"max_error": act._r1(err["max"]), "mean_error": act._r1(err["mean"]),
           "max_error_wide_rows": act._r1(wide["max"]),
           "rows": f"64 logits per row, max - mean uniform in (0.05, 0.98) x {upper:g}"}
    if headroom is not None:
        fit["headroom"] = headroom
    return {**proto.to_json(), "fit": fit}


def build_box(exp) -> dict:
    """Rows already shifted below 0 by an upper bound on their maximum and scaled into [-bound, 0] by the graph
    (passes/box_bound.py): exp_square without a clip, reciprocal per row, multiply. As a function of x its
    semantics are those of the shifted rows (``box_samples``)."""
    params = {"upper": 0.0, "clip": "box", "exp": {**exp.params, "clip": False},
              "bound": BOUND_ROOM * -float(exp.params["lower"]), "interval": list(exp.interval)}
    name = "softmax.box." + exp.name.replace("exp.", "")
    proto = Protocol(name, OP, "softmax_shift", params, interval=tuple(exp.interval),
                     description=f"attention rows minus a per-query bound on their maximum (the keys' bounding box), "
                                 f"within [-B, 0]: {exp.name} without a clip, reciprocal per row, multiply; no "
                                 f"comparison per score")
    err = proto.error(*box_samples(params["bound"]))
    return {**proto.to_json(), "fit": {"max_error": act._r1(err["max"]), "mean_error": act._r1(err["mean"]),
                                       "rows": "64 logits per row within [-B, 0], the maximum up to 0.05 B below 0"}}


# A box-bounded softmax lifts exp's output by e^c, c up to this (the calibrated slack, with the margin): the
# unnormalised e then reaches e^c, and e @ V (normalised after the value MatMul) sums n such products before their
# truncation, which must stay below 2^(62 - 2f); the shift variants' e^U already goes as far (MAX_UPPER).
MAX_LIFT = 5.0


def lifted(protocol, slack: float):
    """The box variant with exp's output lifted by e^c, c = min(slack, MAX_LIFT) (rounded up to UPPER_STEP):
    exp's polynomial q times e^(c / 2^k), so that q^(2^k) = e^c exp(x) (and its monic form stays monic)."""
    lift = min(MAX_LIFT, math.ceil(max(slack, 0.0) / UPPER_STEP) * UPPER_STEP)
    if not lift:
        return protocol
    exp = protocol.params["exp"]
    factor = math.exp(lift / 2 ** int(exp["squarings"]))
    exp = {**exp, "coeffs": [float(c) * factor for c in exp["coeffs"]]}
    base = protocol.name.split("@")[0]
    return dataclasses.replace(protocol, name=f"{base}@c{lift:g}", params={**protocol.params, "exp": exp,
                                                                          "lift": lift})


def box_samples(bound: float, rows: int = 512):
    """Rows as a box-bounded softmax gets them (passes/box_bound.py): within [-B, 0], each shifted below its own
    maximum by a slack of up to 5% of B (the bound on the maximum is rarely tight)."""
    rng = np.random.default_rng(6789)
    x = box_rows(rng.uniform(-0.9 * bound, 0.0, (rows, ROW)) * rng.uniform(0.02, 1.0, (rows, 1)), -1)
    return (x - rng.uniform(0.0, 0.05 * bound, (rows, 1)),)


def box_rows(x, axis: int):
    """Rows as a box-bounded softmax gets them where the bound is tight: shifted by their own maximum."""
    x = np.asarray(x, np.float64)
    return x - np.max(x, axis=axis, keepdims=True)


def square_limit(fraction_bits: int | None = None) -> float:
    """The largest row sum of squares S whose entries' fourth powers fit SPU's ring before their truncation
    (x^4 <= S^2 < 2^(62 - 2f)), with a factor 2 of room: 2^(30 - f). Rows past it are bounded by their 2-norm.
    Without fraction bits: the most a program gets (the base variants)."""
    from passes.fixed_point import MAX_BITS
    return 2.0 ** (30 - int(fraction_bits or MAX_BITS))


# the columns of row_summary
EXCESS, SPREAD, NORM2, NORM4 = range(4)


def row_summary(x, axis: int) -> np.ndarray:
    """Per row along ``axis``: max - mean, max - min, and the 2- and 4-norm of x - mean ([rows, 4]): all that
    specialize reads of a node's calibrated rows, small enough to keep for every calibration case."""
    x = np.asarray(x, np.float64)
    mean = np.mean(x, axis=axis, keepdims=True)
    centred = x - mean
    columns = [np.max(x, axis=axis, keepdims=True) - mean, np.max(x, axis=axis, keepdims=True)
               - np.min(x, axis=axis, keepdims=True), row_norms(centred, axis, 2), row_norms(centred, axis, 4)]
    return np.stack([c.reshape(-1) for c in columns], axis=1)


def _rows(cases, axis: int, rows) -> np.ndarray:
    return np.concatenate(rows if rows is not None else [row_summary(x, axis) for x in cases])


def calibrated_upper(cases, axis: int, rows=None) -> float:
    """The bound U a shift variant needs on these rows: max(max - mean) over every row, plus the chooser's margin
    (MARGIN of the row spread), rounded up to UPPER_STEP. ``rows``: the cases' row summaries, when kept instead."""
    from passes.choose import MARGIN
    summary = _rows(cases, axis, rows)
    worst = max(0.0, float(np.max(summary[:, EXCESS] + MARGIN * summary[:, SPREAD])))
    return max(UPPER_STEP, math.ceil(worst / UPPER_STEP) * UPPER_STEP)


def max_upper(protocol) -> float:
    """The largest U a shift variant takes: the row maximum's exp, at least exp(-U), must stay above exp's lower
    clip L (else a row could sum to 0) and keep ~0.1% relative precision in 18 fraction bits (e^-5.5 ~ 1000 ulp)."""
    return min(-float(protocol.params["exp"]["lower"]) - 2.0, MAX_UPPER)


def specialize(protocol, cases, axis: int, rows=None):
    """A shift variant with U set from the node's calibrated rows (the coefficients do not depend on U; the name
    keeps the variant's, so its SPU measurements still apply); None when the rows need a U beyond max_upper.
    ``rows``: the row summaries of every calibration case (``row_summary``), else those of ``cases``."""
    if protocol.family != "softmax_shift" or not (cases or rows):
        return protocol
    rows = rows if rows is not None else [row_summary(x, axis) for x in cases]   # once, read three times below
    upper = calibrated_upper(cases, axis, rows)
    if upper > max_upper(protocol):
        return None
    base = protocol.name.split("@")[0]
    params = {**protocol.params, "upper": upper}
    if params.get("clip") == "bound":
        params["bound"] = bound_for(params["exp"], upper, float(params["headroom"]))
        norm = int(params.get("norm", 2))
        if calibrated_row_norm(cases, axis, norm, rows) * (1 + MARGIN_OF_ROWS) > params["bound"]:
            return None   # the calibrated rows would be scaled down: a temperature change, not an approximation
        if norm == 4:
            params["square_limit"] = square_limit(fxp_scale.traced_bits())
            if (calibrated_row_norm(cases, axis, 2, rows) * (1 + MARGIN_OF_ROWS)) ** 2 > params["square_limit"]:
                return None   # fourth powers too close to the ring's limit at these fraction bits
    return dataclasses.replace(protocol, name=f"{base}@u{upper:g}", params=params)


def row_norms(centered, axis: int, norm: int = 2):
    """The p-norm (p = ``norm``) of each row of ``centered`` along ``axis`` (kept, of length 1)."""
    return np.sum(np.abs(centered) ** norm, axis=axis, keepdims=True) ** (1.0 / norm)


def calibrated_row_norm(cases, axis: int, norm: int = 2, rows=None) -> float:
    """The largest p-norm (p = 2 or 4) of x - mean over the calibrated rows: what bounded rows compare with B."""
    return max(0.0, float(np.max(_rows(cases, axis, rows)[:, {2: NORM2, 4: NORM4}[norm]])))


def direct_expression(bk, protocol, inputs, axis=-1, **kw):
    x = inputs[0]
    e = bk.native("exp", bk.sub(x, bk.reduce_max(x, axis)))
    return bk.divide(e, bk.reduce_sum(e, axis))


def direct_variant(**kw):
    return act.direct_protocol(OP, "jax.nn.softmax: exp(x - max) / sum, SPU defaults", (-512.0, math.inf))


def knob_variants():
    return [
        *act.knob_protocols(OP, {"denom": {"__compiler__": {"enable_optimize_denominator_with_broadcast": True}}},
                            "jax.nn.softmax", (-512.0, math.inf)),
        *act.knob_protocols(OP, {"denom.exp6": {"fxp_exp_iters": 6,
                                                "__compiler__": {"enable_optimize_denominator_with_broadcast": True}}},
                            "jax.nn.softmax", (-128.0, math.inf)),
    ]


def variants():
    return act.standard_variants(OP, direct_variant(), knob_variants())
