"""Fit every protocol's coefficients and write runtime/protocols/coefficients/<op>.json.

    python -m runtime.protocols.fit [--only silu,exp] [--check]

Minimax fits by linear programming (scipy.optimize.linprog, HiGHS) on a dense grid: minimise e subject to
|w(t) (P(t) - f(t))| <= e at every grid point, with equality constraints for what must hold exactly
(continuity between segments, the value at the end of the interval that makes the clamp to the asymptote
continuous, the value at 0, exp(0) = 1) and bounds on the coefficients (large monomial coefficients would
amplify SPU's 2^-18 fixed-point rounding). Each op module lists the variants it wants (``FIT_SPECS``) and turns
one spec into a protocol (``build(spec)``), using the helpers here; ``--check`` refits in memory and reports
differences from the stored files without writing them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

COEFF_DIR = Path(__file__).resolve().parent / "coefficients"
GRID = 2001            # points per segment in the LP
COEFF_BOUND = 64.0     # |c_k| bound (in w = 2u - 1): keeps SPU's 2^-18 rounding of the powers from being amplified


@dataclass
class SegmentFit:
    coeffs: list[list[float]]   # per segment, per polynomial (one, or pos/neg for sided fits)
    error: float                # minimax value of the LP (on the grid)


def _lp(rows_ub, b_ub, rows_eq, b_eq, nvar, bounds):
    from scipy.optimize import linprog
    c = np.zeros(nvar + 1)
    c[-1] = 1.0
    res = linprog(c, A_ub=np.vstack(rows_ub), b_ub=np.concatenate(b_ub),
                  A_eq=np.vstack(rows_eq) if rows_eq else None, b_eq=np.array(b_eq) if rows_eq else None,
                  bounds=list(bounds) + [(0, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"LP failed: {res.message}")
    return res.x[:-1], float(res.x[-1])


def fit_piecewise(targets: Sequence[Callable], breaks: Sequence[float], degrees: Sequence[int],
                  end_values: Sequence[float | None] = (), start_values: Sequence[float | None] = (),
                  tie_start: bool = False, weight: Callable | None = None, grid: int = GRID,
                  coeff_bound: float | None = None, centered: bool = True) -> SegmentFit:
    """Minimax piecewise polynomials in u on [0, 1] with segments split at ``breaks``.

    ``targets``: one function of u per polynomial family (one for SiLU; two, positive and negative side, for
    Mish), each family continuous across the breaks. ``end_values[i]``: P_i(1) (continuity with the clamp),
    ``start_values[i]``: P_i(0); ``tie_start``: all families equal at 0. ``weight(u)``: relative importance.
    ``centered``: the polynomials are in w = 2u - 1 (in [-1, 1]), which keeps monomial coefficients small, so
    SPU's fixed-point rounding of the powers is not amplified.
    """
    var = (lambda u: 2.0 * np.asarray(u) - 1.0) if centered else (lambda u: np.asarray(u))
    edges = [0.0, *[float(b) for b in breaks], 1.0]
    nseg, nfam = len(edges) - 1, len(targets)
    if len(degrees) != nseg:
        raise ValueError("one degree per segment")
    # variable layout: for each family, for each segment, degree+1 coefficients
    offsets, pos = {}, 0
    for f in range(nfam):
        for s in range(nseg):
            offsets[f, s] = pos
            pos += degrees[s] + 1
    nvar = pos
    rows_ub, b_ub, rows_eq, b_eq = [], [], [], []

    def row(f, s, u):
        r = np.zeros(nvar + 1)
        r[offsets[f, s]:offsets[f, s] + degrees[s] + 1] = np.power(var(u), np.arange(degrees[s] + 1))
        return r

    for f, target in enumerate(targets):
        for s in range(nseg):
            u = np.linspace(edges[s], edges[s + 1], grid)
            y = target(u)
            w = np.ones_like(u) if weight is None else weight(u)
            block = np.zeros((grid, nvar + 1))
            block[:, offsets[f, s]:offsets[f, s] + degrees[s] + 1] = np.power.outer(var(u), np.arange(degrees[s] + 1))
            a = block * w[:, None]
            a[:, -1] = -1.0
            rows_ub.append(a)
            b_ub.append(y * w)
            a2 = -block * w[:, None]
            a2[:, -1] = -1.0
            rows_ub.append(a2)
            b_ub.append(-y * w)
        for s in range(nseg - 1):
            rows_eq.append(row(f, s, edges[s + 1]) - row(f, s + 1, edges[s + 1]))
            b_eq.append(0.0)
        if f < len(end_values) and end_values[f] is not None:
            rows_eq.append(row(f, nseg - 1, 1.0))
            b_eq.append(float(end_values[f]))
        if f < len(start_values) and start_values[f] is not None:
            rows_eq.append(row(f, 0, 0.0))
            b_eq.append(float(start_values[f]))
    if tie_start:
        for f in range(1, nfam):
            rows_eq.append(row(0, 0, 0.0) - row(f, 0, 0.0))
            b_eq.append(0.0)
    bound = COEFF_BOUND if coeff_bound is None else coeff_bound
    x, err = _lp(rows_ub, b_ub, rows_eq, b_eq, nvar, [(-bound, bound)] * nvar)
    coeffs = [[[float(v) for v in x[offsets[f, s]:offsets[f, s] + degrees[s] + 1]] for f in range(nfam)]
              for s in range(nseg)]
    return SegmentFit(coeffs, err)


def best_breaks(fit: Callable[[list[float]], SegmentFit], segments: int, grid=None) -> tuple[list[float], SegmentFit]:
    """Breakpoints (in u) minimising the fit error: a scan for one break, a coarse scan for two."""
    if segments == 1:
        return [], fit([])
    candidates = grid if grid is not None else np.round(np.arange(0.1, 0.8, 0.025), 4)
    best = None
    if segments == 2:
        for b in candidates:
            r = fit([float(b)])
            if best is None or r.error < best[1].error:
                best = ([float(b)], r)
        return best
    if segments == 3:
        coarse = np.round(np.arange(0.1, 0.9, 0.05), 4)
        for i, b1 in enumerate(coarse):
            for b2 in coarse[i + 1:]:
                r = fit([float(b1), float(b2)])
                if best is None or r.error < best[1].error:
                    best = ([float(b1), float(b2)], r)
        return best
    raise ValueError("up to 3 segments")


def fit_polynomial(target: Callable, low: float, high: float, degree: int, weight: Callable | None = None,
                   equal: Sequence[tuple[float, float]] = (), relative_to: Callable | None = None,
                   grid: int = 4001, coeff_bound: float = COEFF_BOUND, spacing: str = "linear") -> tuple[list[float], float]:
    """Minimax polynomial on [low, high]: min max |w (P - target)|, or with ``relative_to`` = g,
    min max |g P - target| (for 1/x: g = x, target = 1). ``equal``: exact values (point, value)."""
    if spacing == "geometric":
        t = np.geomspace(low, high, grid)
    else:
        t = np.linspace(low, high, grid)
    y = target(t)
    w = np.ones_like(t) if weight is None else weight(t)
    basis = np.power.outer(t, np.arange(degree + 1))
    if relative_to is not None:
        basis = basis * relative_to(t)[:, None]
    a = np.hstack([basis * w[:, None], -np.ones((grid, 1))])
    a2 = np.hstack([-basis * w[:, None], -np.ones((grid, 1))])
    rows_eq, b_eq = [], []
    for point, value in equal:
        r = np.zeros(degree + 2)
        r[:degree + 1] = np.power(point, np.arange(degree + 1))
        rows_eq.append(r)
        b_eq.append(value)
    x, err = _lp([a, a2], [y * w, -y * w], rows_eq, b_eq, degree + 1, [(-coeff_bound, coeff_bound)] * (degree + 1))
    return [float(v) for v in x], err


def dense_error(protocol, interval=None, n: int = 40001) -> dict:
    """Max and mean error of the protocol's numpy emulation on a dense grid of its interval, and beyond."""
    from runtime.protocols.base import op_module
    mod = op_module(protocol.op)
    interval = interval or protocol.interval
    samples = mod.samples(interval, n)
    return protocol.error(*samples)


def _round(v, digits=6):
    return float(f"{v:.{digits}g}")


# ---------------------------------------------------------------------------------------------------------------
# CLI


def fit_op(op: str) -> dict:
    from runtime.protocols.base import op_module
    mod = op_module(op)
    specs = mod.fit_specs() if hasattr(mod, "fit_specs") else getattr(mod, "FIT_SPECS", [])
    entries = [mod.build(spec) for spec in specs]
    return {
        "op": op,
        "generated_by": f"python -m runtime.protocols.fit --only {op}",
        "reference": mod.REFERENCE_TEXT,
        "variants": entries,
    }


def write_op(op: str, data: dict) -> Path:
    COEFF_DIR.mkdir(parents=True, exist_ok=True)
    path = COEFF_DIR / f"{op}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


# ops whose variants embed other ops' fitted coefficients come after them
FIT_ORDER = ("silu", "gelu", "mish", "sigmoid", "tanh", "exp", "reciprocal", "rsqrt", "softmax", "group_norm",
             "layer_norm")


def main(argv=None) -> int:
    from runtime.protocols.base import reload_registry
    parser = argparse.ArgumentParser(prog="python -m runtime.protocols.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated ops (default: all)")
    parser.add_argument("--check", action="store_true", help="refit and compare with the stored files; write nothing")
    args = parser.parse_args(argv)
    ops = FIT_ORDER if not args.only else [o.strip() for o in args.only.split(",") if o.strip()]
    unknown = [o for o in ops if o not in FIT_ORDER]
    if unknown:
        parser.error(f"unknown op(s): {', '.join(unknown)}")
    status = 0
    for op in ops:
        data = fit_op(op)
        if args.check:
            path = COEFF_DIR / f"{op}.json"
            stored = json.loads(path.read_text()) if path.exists() else None
            same = stored is not None and _same(stored, data)
            print(f"{op}: {'matches' if same else 'DIFFERS from'} {path.name}")
            status |= 0 if same else 1
            continue
        path = write_op(op, data)
        reload_registry()
        for v in data["variants"]:
            print(f"{v['name']:<34} max err {v['fit']['max_error']:.3g} on {v['interval']}")
        print(f"wrote {path}")
    return status


def _same(a, b, tol=1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


if __name__ == "__main__":
    sys.exit(main())
