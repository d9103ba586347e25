"""GELU(x) = x * Phi(x) (erf form; the tanh form differs from it by at most 4.7e-4 and shares the protocols).

Protocol (``abs_piecewise``, ``relu_minus``): gelu(x) = relu(x) - r(|x|) with r(t) = t * Phi(-t) (even, and
decaying like a Gaussian, so a short interval suffices: r(4) = 1.3e-4), a piecewise polynomial in |x|/B with
r(B) = 0 built in, exactly 0 / x beyond -B / B. Two secure comparisons (sign, |x| < B) plus one per extra
segment. The node's ``approximate`` attribute only picks the float reference the error is measured against.

Direct variants: the compiler's lowerings, erf form 0.5 x (1 + erf(x / sqrt 2)) with its explicit erf formula
(abs, clamp, reciprocal, exp), and tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf, erfc

from runtime.protocols import _activation as act

OP = "gelu"
DEFAULT_INTERVAL = (-6.0, 6.0)
REFERENCE_TEXT = "x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) in float64 (scipy.special.erf); approximate='tanh': " \
                 "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"
DESCRIPTION = "relu(x) - r(|x|/B) with r ~ |x| Phi(-|x|) as a piecewise polynomial, exact 0 / x beyond B"


def reference(x, approximate: str = "none"):
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if approximate != "none":
        raise ValueError(f"unknown GELU approximation '{approximate}'")
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def correction(t):
    return t * 0.5 * erfc(t / math.sqrt(2.0))


samples = act.samples

FIT_SPECS = [
    {"bound": 3, "degree": 4},
    {"bound": 4, "degree": 5},
    {"bound": 4, "degree": 7},
    {"bound": 4, "segments": 2, "degree": 3},
    {"bound": 5, "segments": 2, "degree": 4},
    {"calibrated": 2.5, "bound": 3.5, "degree": 4},
]


def build(spec: dict) -> dict:
    return act.build_abs_piecewise(OP, spec, form="relu_minus", targets=[correction], end_values=[0.0],
                                   description=DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    x = inputs[0]
    if protocol.params.get("approximate", "none") == "tanh":
        cube = bk.mul(bk.mul(x, x), x)
        inner = bk.scale(bk.add(x, bk.scale(cube, 0.044715)), math.sqrt(2.0 / math.pi))
        return bk.mul(bk.scale(x, 0.5), bk.add_const(bk.native("tanh", inner), 1.0))
    return bk.mul(bk.scale(x, 0.5), bk.add_const(bk.native("erf", bk.scale(x, 1.0 / math.sqrt(2.0))), 1.0))


def direct_variant(approximate: str = "none", **kw):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"unknown GELU approximation '{approximate}'")
    form = "0.5 x (1 + erf(x / sqrt 2)) with the compiler's erf formula" if approximate == "none" else \
        "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"
    return act.direct_protocol(OP, f"{form}, SPU defaults", params={"approximate": approximate},
                               suffix="direct" if approximate == "none" else "direct_tanh")


def knob_variants():
    return act.knob_protocols(OP, {"exp6.gs1": {"fxp_exp_iters": 6, "fxp_div_goldschmidt_iters": 1}},
                              "0.5 x (1 + erf(x / sqrt 2))", params={"approximate": "none"})


def variants():
    return [direct_variant("none"), direct_variant("tanh"), *knob_variants(), *act.load_fitted(OP)]
