"""Exp for x <= 0 (the exp inside SoftMax, after max-subtraction).

Protocol (``exp_square``): y = x / 2^k; q(y) a polynomial fitted on [L / 2^k, 0] with q(0) = 1 and
q(L / 2^k) = 0; q is set to 0 below L (one comparison and one select) and squared k times. So the result is
never negative, exactly 1 at 0 and exactly 0 below L, continuous at L, and accurate in between (the fit minimises
the error after squaring: weight 2^k e^((2^k - 1) y) on |q - e^y|). ``exp.sq.taylor.n*`` is SPU's own
(1 + x/2^n)^(2^n) with the same clip at L = -2^n.

These variants are meant for x <= 0 (``sane`` = (-inf, 0]): for x > 0 they extrapolate the polynomial.
Direct: jnp.exp (SPU: (1 + x/2^n)^(2^n), n = fxp_exp_iters = 8, no clip: it wraps around below -2^(n+1) and
overflows above ~29); knob variants change n or use the Pade mode.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol
from runtime.protocols.fit import fit_polynomial

OP = "exp"
DEFAULT_INTERVAL = (-16.0, 0.0)
REFERENCE_TEXT = "numpy.exp in float64"
DESCRIPTION = "q(x/2^k)^(2^k), q a fitted polynomial with q(0) = 1, zero below L: >= 0, exact at 0"


def reference(x):
    return np.exp(np.asarray(x, np.float64))


samples = act.samples

FIT_SPECS = [
    {"lower": -16, "squarings": 2, "degree": 2},
    {"lower": -12, "squarings": 3, "degree": 2},
    {"lower": -12, "squarings": 2, "degree": 3},
    {"lower": -16, "squarings": 3, "degree": 3},
    {"lower": -16, "squarings": 2, "degree": 4},
    {"lower": -16, "squarings": 3, "degree": 4},
    {"lower": -8, "squarings": 2, "degree": 2},
    {"lower": -8, "squarings": 2, "degree": 3},
    # wide ranges for rows bounded by their 2-norm (long attention rows: B + U ~ 20)
    {"lower": -24, "squarings": 3, "degree": 3},
    {"lower": -24, "squarings": 4, "degree": 2},
    {"lower": -24, "squarings": 4, "degree": 3},
    # box-bounded attention rows (softmax.box): x - b(q) spans up to ~60 on the trained MNIST U-Nets, and a row's
    # maximum sits up to ~10 below 0, so the error is relative to exp down to -S (``relative``), absolute below
    {"lower": -16, "squarings": 4, "degree": 3, "relative": 6},
    {"lower": -24, "squarings": 4, "degree": 3, "relative": 6},
    {"lower": -32, "squarings": 5, "degree": 3, "relative": 8},
    {"lower": -32, "squarings": 5, "degree": 3, "relative": 12},
    {"lower": -48, "squarings": 5, "degree": 3, "relative": 10},
    {"lower": -64, "squarings": 6, "degree": 3, "relative": 12},
    # one product fewer, less accurate: for the looser budgets
    {"lower": -32, "squarings": 4, "degree": 3, "relative": 8},
    {"lower": -32, "squarings": 4, "degree": 3, "relative": 10},
    {"lower": -32, "squarings": 5, "degree": 2, "relative": 8},
    {"lower": -64, "squarings": 5, "degree": 3, "relative": 10},
    {"lower": -64, "squarings": 5, "degree": 3, "relative": 12},
    {"lower": -64, "squarings": 6, "degree": 2, "relative": 12},
    # the same product counts further out: four squarings of a cubic hold to L = -40 (1.4e-3 relative at S = 10;
    # 4.9 at -44), five of a quadratic to -56 (3.7e-3 at S = 8; the fit is the same from L = -32 on)
    {"lower": -40, "squarings": 4, "degree": 3, "relative": 10},
    {"lower": -40, "squarings": 4, "degree": 3, "relative": 12},
    {"lower": -56, "squarings": 5, "degree": 2, "relative": 8},
    {"lower": -56, "squarings": 5, "degree": 2, "relative": 10},
    {"taylor": 6},
    {"taylor": 8},
]


def fit_exp(lower: float, squarings: int, degree: int, relative: float | None = None) -> list[float]:
    """q with q(0) = 1, q(L / 2^k) = 0, minimising the error of q^(2^k) against exp (about 2^k e^((2^k - 1) y)
    times q's own): absolute on [L, 0]; with ``relative`` = S, relative to max(exp(x), exp(-S)) (a softmax row
    whose maximum sits at -S still gets its large entries to the same relative accuracy) and without the zero at
    L: such a q serves rows that never go below L (softmax.box), so it needs no clip to be continuous with."""
    n = 2 ** squarings
    low = lower / n
    floor = -math.inf if relative is None else -float(relative)

    def weight(y):
        return n * np.exp((n - 1) * y) / np.exp(np.maximum(n * y, floor) if relative is not None else 0.0)

    equal = [(0.0, 1.0)] + ([(low, 0.0)] if relative is None else [])
    coeffs, _ = fit_polynomial(np.exp, low, 0.0, degree, weight=weight, equal=equal, grid=4001)
    coeffs[0] = 1.0   # exact (the LP returns it to ~1e-12)
    return [float(f"{c:.12g}") for c in coeffs]


def exp_params(spec: dict) -> tuple[str, dict]:
    if "taylor" in spec:
        n = int(spec["taylor"])
        return f"exp.sq.taylor.n{n}", {"lower": -float(2 ** n), "squarings": n, "degree": 1,
                                       "coeffs": [1.0, 1.0], "clip": True, "interval": [-float(2 ** n), 0.0]}
    lower, k, d = float(spec["lower"]), int(spec["squarings"]), int(spec["degree"])
    relative = spec.get("relative")
    params = {"lower": lower, "squarings": k, "degree": d, "coeffs": fit_exp(lower, k, d, relative), "clip": True,
              "interval": [lower, 0.0]}
    if relative is None:
        return f"exp.sq.l{-lower:g}.k{k}.d{d}", params
    return f"exp.sq.l{-lower:g}.k{k}.d{d}.r{relative:g}", {**params, "relative": float(relative), "clip": False}


def build(spec: dict) -> dict:
    name, params = exp_params(spec)
    relative = params.get("relative")
    proto = Protocol(name, OP, "exp_square", params, interval=tuple(params["interval"]),
                     sane=(-math.inf if relative is None else params["lower"], 0.0), description=DESCRIPTION)
    grid = np.linspace(params["lower"], 0.0, 40001)
    inside = proto.error(grid)
    if relative is not None:
        scale = np.exp(np.maximum(grid, -relative))
        worst = float(np.max(np.abs(proto.numpy_fn(grid) - np.exp(grid)) / scale))
        return {**proto.to_json(), "fit": {
            "max_error": act._r1(inside["max"]), "mean_error": act._r1(inside["mean"]),
            "max_error_relative": act._r1(worst),
            "relative_to": f"max(exp(x), exp(-{relative:g})): no clip, for rows within [L, 0] only",
            "comparisons_per_element": proto.comparisons_per_element(), "grid": 40001}}
    below = proto.error(np.concatenate([np.linspace(4 * params["lower"], params["lower"], 4001), [-1e3]]))
    return {**proto.to_json(), "fit": {
        "max_error": act._r1(inside["max"]), "mean_error": act._r1(inside["mean"]),
        "max_error_everywhere": act._r1(max(inside["max"], below["max"])),
        "comparisons_per_element": proto.comparisons_per_element(), "grid": 40001}}


def direct_expression(bk, protocol, inputs, **kw):
    return bk.native("exp", inputs[0])


def _direct_sane(iters: int = 8):
    return (-2.0 ** (iters + 1), 29.0)


def direct_variant(**kw):
    return act.direct_protocol(OP, "SPU's exp, (1 + x/256)^256 (defaults)", _direct_sane())


def knob_variants():
    out = []
    for n in (5, 6, 7, 10):
        out += act.knob_protocols(OP, {f"iters{n}": {"fxp_exp_iters": n}}, "SPU's exp", _direct_sane(n))
    out += act.knob_protocols(OP, {"pade": {"fxp_exp_mode": "EXP_PADE"}}, "SPU's exp", (-math.inf, 29.0))
    return out


def variants():
    # the relative fits have no clip, so no sane value below L: they serve only rows bounded by the graph
    # (softmax.box), never an Exp node of its own
    return [p for p in act.standard_variants(OP, direct_variant(), knob_variants())
            if "relative" not in p.params]


def box_exps():
    """The relative fits (softmax.box's exps)."""
    return [p for p in act.load_fitted(OP) if "relative" in p.params]
