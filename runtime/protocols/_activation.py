"""Shared by the activation protocol files (silu, gelu, mish, sigmoid, tanh): fitting an ``abs_piecewise``
variant from a spec, naming it, measuring its error, and the direct / knob variants."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from runtime.protocols.base import Protocol, SpuKnobs, load_fitted, op_module  # noqa: F401
from runtime.protocols.fit import best_breaks, fit_piecewise

OUTSIDE_WEIGHT = 0.1   # narrow (calibrated-range) variants: error beyond the range counts 10x less


def variant_name(op: str, spec: dict) -> str:
    parts = [op, "pw"]
    if spec.get("calibrated"):
        parts.append(f"c{spec['calibrated']:g}")
    parts.append(f"b{spec['bound']:g}")
    if spec.get("segments", 1) > 1:
        parts.append(f"s{spec['segments']}")
    parts.append(f"d{spec['degree']}")
    return ".".join(parts)


def fit_abs_piecewise(spec: dict, targets: Sequence[Callable], end_values, start_values=(), tie_start=False):
    """Fit the correction polynomials V(u), u = |x| / bound, for one spec."""
    bound = float(spec["bound"])
    segments = int(spec.get("segments", 1))
    degree = int(spec["degree"])
    scaled = [lambda u, f=f: f(bound * u) for f in targets]
    weight = None
    if spec.get("calibrated"):
        edge = float(spec["calibrated"]) / bound
        weight = lambda u: np.where(u <= edge + 1e-12, 1.0, OUTSIDE_WEIGHT)  # noqa: E731

    def fit(breaks):
        return fit_piecewise(scaled, breaks, [degree] * segments, end_values=end_values,
                             start_values=start_values, tie_start=tie_start, weight=weight)

    if "breaks" in spec:
        breaks = [float(b) for b in spec["breaks"]]
        return breaks, fit(breaks)
    return best_breaks(fit, segments)


def build_abs_piecewise(op: str, spec: dict, *, form: str, targets: Sequence[Callable], end_values,
                        start_values=(), tie_start=False, center=None, level=None, description: str) -> dict:
    breaks, result = fit_abs_piecewise(spec, targets, end_values, start_values, tie_start)
    bound = float(spec["bound"])
    if len(targets) == 2:
        segments = [{"pos": _r(c[0]), "neg": _r(c[1])} for c in result.coeffs]
    else:
        segments = [{"coeffs": _r(c[0])} for c in result.coeffs]
    edge = float(spec.get("calibrated") or bound)
    params = {"form": form, "bound": bound, "breaks": [round(b, 6) for b in breaks],
              "degree": int(spec["degree"]), "segments": segments, "interval": [-edge, edge]}
    if form == "odd_saturating":
        params["center"], params["level"] = float(center), float(level)
    proto = Protocol(variant_name(op, spec), op, "abs_piecewise", params, interval=(-edge, edge),
                     description=description)
    return {**proto.to_json(), "fit": error_stats(proto, bound)}


def error_stats(proto: Protocol, bound: float) -> dict:
    mod = op_module(proto.op)
    inside = proto.error(*mod.samples(proto.interval, 40001))
    wide = max(4 * bound, 50.0)
    far = np.concatenate([np.linspace(-wide, wide, 40001), [-1e3, -1e2, 1e2, 1e3]])
    outside = proto.error(far)
    coeff_sum = max(sum(abs(c) for key in ("coeffs", "pos", "neg") for c in seg.get(key, []))
                    for seg in proto.params["segments"])
    return {"max_error": _r1(inside["max"]), "mean_error": _r1(inside["mean"]),
            "max_error_everywhere": _r1(outside["max"]), "sum_abs_coeffs": _r1(coeff_sum),
            "comparisons_per_element": proto.comparisons_per_element(),
            "grid": 40001}


def _r(values):
    return [float(f"{v:.12g}") for v in values]


def _r1(v):
    return float(f"{v:.4g}")


def direct_protocol(op: str, description: str, sane=(-math.inf, math.inf), params=None, knobs=None,
                    suffix: str = "direct") -> Protocol:
    return Protocol(f"{op}.{suffix}", op, "direct", dict(params or {}), knobs or SpuKnobs(), None, sane,
                    description)


def knob_protocols(op: str, settings: dict, description: str, sane=(-math.inf, math.inf), params=None):
    """{suffix: runtime knob dict} -> knob variants of the plain expression."""
    out = []
    for suffix, runtime in settings.items():
        compiler = runtime.pop("__compiler__", {}) if isinstance(runtime, dict) else {}
        out.append(Protocol(f"{op}.knob.{suffix}", op, "direct", dict(params or {}), SpuKnobs(runtime, compiler),
                            None, sane, f"{description} with SPU knobs {runtime or ''}{compiler or ''}"))
    return out


def samples(interval, n):
    low, high = interval
    return (np.linspace(float(low), float(high), int(n)),)


def standard_variants(op: str, direct: Protocol, knobs: list[Protocol]) -> list[Protocol]:
    return [direct, *knobs, *load_fitted(op)]
