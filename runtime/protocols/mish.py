"""Mish(x) = x * tanh(softplus(x)).

Protocol (``abs_piecewise``, ``relu_minus`` with one polynomial per sign): mish(x) = relu(x) - r_s(|x|), where
r_+(t) = t - mish(t) and r_-(t) = -mish(-t) both decay to 0 (like 2t e^(-2t) and t e^(-t)). The sign bit of
the first comparison also picks the polynomial (AND with the segment bit, no extra comparison), both
polynomials come from the same powers of |x|/B, and the fit ties r_+(0) = r_-(0) = 0 and r_s(1) = 0 so the
function is continuous at 0 and at +-B, with the exact asymptotes 0 / x beyond.

Direct: the compiler's x * tanh(softplus(x)) with softplus = logaddexp(x, 0).
"""

from __future__ import annotations

import numpy as np

from runtime.protocols import _activation as act

OP = "mish"
DEFAULT_INTERVAL = (-10.0, 10.0)
REFERENCE_TEXT = "x * tanh(log(1 + exp(x))) in float64 (numpy.logaddexp)"
DESCRIPTION = "relu(x) - r_sign(|x|/B), one piecewise polynomial per sign, exact 0 / x beyond B"


def reference(x):
    x = np.asarray(x, np.float64)
    return x * np.tanh(np.logaddexp(0.0, x))


def correction_pos(t):
    return t - reference(t)


def correction_neg(t):
    return -reference(-t)


samples = act.samples

FIT_SPECS = [
    {"bound": 8, "degree": 5},
    {"bound": 8, "degree": 6},
    {"bound": 8, "segments": 2, "degree": 3},
    {"bound": 10, "segments": 2, "degree": 4},
    {"calibrated": 4, "bound": 6, "degree": 4},
]


def build(spec: dict) -> dict:
    return act.build_abs_piecewise(OP, spec, form="relu_minus", targets=[correction_pos, correction_neg],
                                   end_values=[0.0, 0.0], start_values=[0.0, 0.0], tie_start=True,
                                   description=DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    x = inputs[0]
    return bk.mul(x, bk.native("tanh", bk.native("softplus", x)))


def direct_variant(**kw):
    return act.direct_protocol(OP, "x * tanh(logaddexp(x, 0)) with SPU's exp, log and tanh (defaults)")


def variants():
    return act.standard_variants(OP, direct_variant(), [])
