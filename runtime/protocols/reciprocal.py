"""Reciprocal 1/x of a positive secret on a calibrated interval [a, b].

Protocol (``newton_reciprocal``): clamp x to [a, b] (beyond it the result is the asymptote-side value 1/a or
1/b: sane, never divergent), split [a, b] geometrically into m segments by one batched comparison, scale x by
its segment's top edge T into [1/r, 1] (selecting public constants), a polynomial guess g ~ 1/v fitted for
minimax relative error on [1/r, 1] (shared by all segments), y0 = g(x / T) / T, then Newton steps
y <- y (2 - x y) (the relative error squares each step).

Direct: SPU's reciprocal (normalisation by the bit length, Goldschmidt, fxp_div_goldschmidt_iters = 2); knob
variants: 1 and 3 iterations.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.base import Protocol
from runtime.protocols.fit import fit_polynomial

OP = "reciprocal"
DEFAULT_INTERVAL = (0.1, 10.0)
REFERENCE_TEXT = "1 / x in float64"
DESCRIPTION = "clamp to [a, b], segment scaling, fitted polynomial guess, Newton y (2 - x y)"
POWER = 1.0   # the guess approximates v^-POWER


def reference(x):
    return 1.0 / np.asarray(x, np.float64)


def samples(interval, n):
    low, high = (float(v) for v in interval)
    if low > 0:
        return (np.geomspace(low, high, int(n)),)
    return (np.linspace(low, high, int(n)),)


FIT_SPECS = [
    {"interval": [0.5, 2.0], "segments": 1, "degree": 2, "newton_steps": 2},
    {"interval": [0.1, 10.0], "segments": 2, "degree": 2, "newton_steps": 3},
    {"interval": [1.0, 256.0], "segments": 4, "degree": 2, "newton_steps": 2},
    {"interval": [0.01, 100.0], "segments": 4, "degree": 2, "newton_steps": 3},
]


def guess_coefficients(interval, segments, degree, power):
    low, high = (float(v) for v in interval)
    ratio = (high / low) ** (1.0 / segments)
    coeffs, err = fit_polynomial(lambda v: np.ones_like(v), 1.0 / ratio, 1.0, degree,
                                 relative_to=lambda v: v ** power, spacing="geometric", grid=4001)
    return [float(f"{c:.12g}") for c in coeffs], err


def newton_name(op, spec):
    lo, hi = spec["interval"]
    return f"{op}.nt.{lo:g}-{hi:g}.m{spec['segments']}.d{spec['degree']}.n{spec['newton_steps']}"


def build_newton(op, family, spec, power, description):
    coeffs, guess_err = guess_coefficients(spec["interval"], spec["segments"], spec["degree"], power)
    params = {"interval": [float(v) for v in spec["interval"]], "segments": int(spec["segments"]),
              "degree": int(spec["degree"]), "coeffs": coeffs, "newton_steps": int(spec["newton_steps"]),
              "clamp": True}
    proto = Protocol(newton_name(op, spec), op, family, params, interval=tuple(params["interval"]),
                     sane=(0.0, math.inf), description=description)
    x = samples(params["interval"], 40001)[0]
    got, want = proto.numpy_fn(x), proto.reference(x)
    rel = np.abs(got / want - 1.0)
    return {**proto.to_json(), "fit": {
        "max_error": act._r1(float(np.max(np.abs(got - want)))), "max_rel_error": act._r1(float(np.max(rel))),
        "guess_rel_error": act._r1(guess_err), "comparisons_per_element": proto.comparisons_per_element(),
        # FM64 keeps 18 fraction bits: an input near the low end carries ~2^-18 / low relative rounding, which
        # no approximation can undo (the emulation above is float64)
        "fixed_point_rel_floor": act._r1(2.0 ** -18 / params["interval"][0]),
        "grid": "40001 geometric"}}


def build(spec: dict) -> dict:
    return build_newton(OP, "newton_reciprocal", spec, POWER, DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    return bk.native("reciprocal", inputs[0])


def direct_variant(**kw):
    return act.direct_protocol(OP, "SPU's reciprocal (Goldschmidt, 2 iterations)")


def knob_variants():
    return act.knob_protocols(OP, {"gs1": {"fxp_div_goldschmidt_iters": 1}, "gs3": {"fxp_div_goldschmidt_iters": 3}},
                              "SPU's reciprocal")


def variants():
    return act.standard_variants(OP, direct_variant(), knob_variants())
