"""Reciprocal square root 1/sqrt(x) of a positive secret on a calibrated interval [a, b] (the variance plus
epsilon of GroupNorm/LayerNorm).

Protocol (``newton_rsqrt``): clamp x to [a, b], split [a, b] geometrically into m segments by one batched
comparison, scale x into [1/r, 1] by its segment's top edge T, a polynomial guess g ~ v^(-1/2) fitted for
minimax relative error on [1/r, 1], y0 = g(x / T) / sqrt(T), then Newton steps y <- y (3/2 - x y^2 / 2).
In a norm the rsqrt runs once per group (or row), so accuracy is cheap; what it saves is rounds.

Direct: SPU's rsqrt (jax.lax.rsqrt); knob: enable_lower_accuracy_rsqrt.
"""

from __future__ import annotations

import numpy as np

from runtime.protocols import _activation as act
from runtime.protocols.reciprocal import build_newton, samples  # noqa: F401  (samples: geometric grid)

OP = "rsqrt"
DEFAULT_INTERVAL = (0.01, 100.0)
REFERENCE_TEXT = "1 / sqrt(x) in float64"
DESCRIPTION = "clamp to [a, b], segment scaling, fitted polynomial guess, Newton y (3 - x y^2) / 2"


def reference(x):
    return 1.0 / np.sqrt(np.asarray(x, np.float64))


FIT_SPECS = [
    {"interval": [0.25, 4.0], "segments": 1, "degree": 2, "newton_steps": 2},
    {"interval": [0.01, 100.0], "segments": 4, "degree": 2, "newton_steps": 1},
    {"interval": [0.01, 100.0], "segments": 4, "degree": 2, "newton_steps": 2},
    # below ~1e-3 the input itself has few fixed-point bits (2^-18 = 3.8e-6): wider ranges gain nothing
    {"interval": [1e-3, 1e3], "segments": 6, "degree": 2, "newton_steps": 2},
    {"interval": [1e-3, 1e3], "segments": 6, "degree": 3, "newton_steps": 3},
]


def build(spec: dict) -> dict:
    return build_newton(OP, "newton_rsqrt", spec, 0.5, DESCRIPTION)


def direct_expression(bk, protocol, inputs, **kw):
    return bk.native("rsqrt", inputs[0])


def direct_variant(**kw):
    return act.direct_protocol(OP, "SPU's rsqrt (defaults)")


def knob_variants():
    return act.knob_protocols(OP, {"lowacc": {"enable_lower_accuracy_rsqrt": True}}, "SPU's rsqrt")


def variants():
    return act.standard_variants(OP, direct_variant(), knob_variants())
