"""Tanh(x).

Protocol (``abs_piecewise``, ``odd_saturating``, c = 0, L = 1): tanh(x) = s ? 1 - q(|x|) : q(|x|) - 1 with
q(t) = 1 - tanh(t), a piecewise polynomial in |x|/B with q(0) = 1 (continuity at 0) and q(1) = 0 (continuity
with the exact asymptotes -1 / 1 beyond -B / B; 1 - tanh(4) = 6.7e-4).

Direct: jnp.tanh, SPU's own tanh (no knob changes it).
"""

from __future__ import annotations

import numpy as np

from runtime.protocols import _activation as act

OP = "tanh"
DEFAULT_INTERVAL = (-5.0, 5.0)
REFERENCE_TEXT = "numpy.tanh in float64"
DESCRIPTION = "s ? 1 - q(|x|/B) : q(|x|/B) - 1 with q ~ 1 - tanh(|x|) piecewise polynomial, exact -1 / 1 beyond B"


def reference(x):
    return np.tanh(np.asarray(x, np.float64))


def tail(t):
    return 1.0 - np.tanh(t)


samples = act.samples

FIT_SPECS = [
    {"bound": 4, "degree": 5},
    {"bound": 4, "degree": 6},
    {"bound": 4, "degree": 7},
    {"bound": 4, "segments": 2, "degree": 4},
    {"bound": 5, "segments": 2, "degree": 5},
    {"calibrated": 2, "bound": 3, "degree": 4},
]


def build(spec: dict) -> dict:
    return act.build_abs_piecewise(OP, spec, form="odd_saturating", targets=[tail], end_values=[0.0],
                                   start_values=[1.0], center=0.0, level=1.0, description=DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    return bk.native("tanh", inputs[0])


def direct_variant(**kw):
    return act.direct_protocol(OP, "SPU's tanh")


def variants():
    return act.standard_variants(OP, direct_variant(), [])
