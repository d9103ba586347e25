"""Sigmoid(x) = 1 / (1 + exp(-x)).

Protocol (``abs_piecewise``, ``odd_saturating``, c = L = 1/2): sigmoid(x) = s ? 1 - q(|x|) : q(|x|) with
q(t) = sigmoid(-t), a piecewise polynomial in |x|/B fitted with q(0) = 1/2 (continuity at 0) and q(1) = 0
(continuity with the exact asymptotes 0 / 1 beyond -B / B). Two comparisons (sign, |x| < B) plus one per extra
segment; three selects (|x|, the clamp, the sign).

Direct: jax.nn.sigmoid, which jax lowers to 1 / (1 + exp(-x)) (SPU's ``sigmoid_mode`` only applies to
stablehlo.logistic, which jax 0.4.34 never emits, so it is no usable knob here).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from runtime.protocols import _activation as act

OP = "sigmoid"
DEFAULT_INTERVAL = (-10.0, 10.0)
REFERENCE_TEXT = "1 / (1 + exp(-x)) in float64 (scipy.special.expit)"
DESCRIPTION = "s ? 1 - q(|x|/B) : q(|x|/B) with q ~ sigmoid(-|x|) piecewise polynomial, exact 0 / 1 beyond B"


def reference(x):
    return expit(np.asarray(x, np.float64))


def tail(t):
    return expit(-t)


samples = act.samples

FIT_SPECS = [
    {"bound": 8, "degree": 4},
    {"bound": 8, "degree": 5},
    {"bound": 8, "degree": 7},
    {"bound": 8, "segments": 2, "degree": 4},
    {"bound": 10, "segments": 2, "degree": 4},
    {"calibrated": 4, "bound": 6, "degree": 4},
]


def build(spec: dict) -> dict:
    return act.build_abs_piecewise(OP, spec, form="odd_saturating", targets=[tail], end_values=[0.0],
                                   start_values=[0.5], center=0.5, level=0.5, description=DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    return bk.native("sigmoid", inputs[0])


DIRECT_SANE = (-29.0, 512.0)


def direct_variant(**kw):
    return act.direct_protocol(OP, "1 / (1 + exp(-x)) with SPU's exp and reciprocal (defaults)", DIRECT_SANE)


def knob_variants():
    return act.knob_protocols(OP, {
        "exp6": {"fxp_exp_iters": 6},
        "exp6.gs1": {"fxp_exp_iters": 6, "fxp_div_goldschmidt_iters": 1},
    }, "1 / (1 + exp(-x))", DIRECT_SANE)


def variants():
    return act.standard_variants(OP, direct_variant(), knob_variants())
