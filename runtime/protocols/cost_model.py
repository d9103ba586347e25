"""Per-element costs of the ABY3/FM64 primitives and of SPU's own nonlinear functions, as measured.

The numbers live in ``coefficients/costs.json``, written by ``python -m tools.measure_protocols`` from SPU's own
profile (3-party send bytes, and the largest per-party count of send actions as rounds). A protocol's cost is
the sum of its primitives, counted by :class:`runtime.protocols.backends.CostBackend` from the same code SPU
runs, so the model has no per-protocol fudge factors; the measured table also holds every protocol variant
measured whole, which is what the cost-model test compares with.

Primitives (bytes per element over the three parties, rounds per op):

* ``mul``: secret x secret fixed-point product (mul_aa + truncation)
* ``trunc``: secret x public fixed-point product (local product + truncation); also the public dot of a
  polynomial (``dot``) and a mean
* ``compare``: x > c (msb of x - c via a2b)
* ``select``: where(bit, a, b) (mul_a1b); ``select_public``: where(bit, c1, c2) with public c1, c2;
  ``select_shared_first`` / ``select_shared``: a predicate used by several selects with two secret branches is
  converted once (b2a) and then costs one mul_aa per select
* ``bit_and``: AND of two comparison bits
* ``reduce_max``: per element of a max over an axis of length n, (n-1)/n x (compare + select); rounds
  ceil(log2 n) x (compare + select rounds) + 1
* natives: SPU's exp / reciprocal / divide / rsqrt / tanh / log / sigmoid / ... per element, measured under
  each knob setting a protocol variant uses (fxp_exp_iters, fxp_div_goldschmidt_iters, ...).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

COSTS_PATH = Path(__file__).resolve().parent / "coefficients" / "costs.json"

# Which SPU knobs change the cost (and accuracy) of each native function, with SPU 0.9.5's defaults.
KNOB_DEFAULTS = {
    "fxp_exp_mode": "EXP_DEFAULT",
    "fxp_exp_iters": 8,
    "fxp_div_goldschmidt_iters": 2,
    "enable_lower_accuracy_rsqrt": False,
    "fxp_log_mode": "LOG_DEFAULT",
    "fxp_log_iters": 3,
    "fxp_log_orders": 8,
}
_EXP = ("fxp_exp_mode", "fxp_exp_iters")
_DIV = ("fxp_div_goldschmidt_iters",)
_LOG = ("fxp_log_mode", "fxp_log_iters", "fxp_log_orders")
NATIVE_KNOBS = {
    "exp": _EXP,
    "reciprocal": _DIV,
    "divide": _DIV,
    "rsqrt": ("enable_lower_accuracy_rsqrt",),
    "sqrt": ("enable_lower_accuracy_rsqrt",),
    "sigmoid": _EXP + _DIV,
    "tanh": (),
    "log": _LOG,
    "softplus": _EXP + _LOG,
    "erf": _EXP + _DIV,
}

# First measurements on this machine (ABY3, FM64, 2^16 elements); costs.json overrides them.
PROVISIONAL = {
    "primitives": {
        "mul": {"bytes": 52.0, "rounds": 3}, "trunc": {"bytes": 28.0, "rounds": 2},
        "dot": {"bytes": 28.0, "rounds": 2}, "compare": {"bytes": 108.0, "rounds": 8},
        "select": {"bytes": 64.0, "rounds": 3}, "select_public": {"bytes": 32.0, "rounds": 2},
        "select_shared_first": {"bytes": 56.0, "rounds": 3}, "select_shared": {"bytes": 24.0, "rounds": 1},
        "bit_and": {"bytes": 3.0, "rounds": 1},
    },
    "reduce_max": {"bytes_per_pair": 172.0, "rounds_per_level": 11, "extra_rounds": 1},
    "natives": [],
}


def knob_signature(fn: str, knobs: dict | None) -> dict:
    """The knob values that matter for ``fn`` (defaults filled in), from a {"runtime": {...}} dict."""
    runtime = dict((knobs or {}).get("runtime", {}))
    return {k: _plain(runtime.get(k, KNOB_DEFAULTS[k])) for k in NATIVE_KNOBS.get(fn, ())}


def _plain(value):
    return value.name if hasattr(value, "name") else value


class CostTable:
    def __init__(self, data: dict):
        self.data = data
        self.primitives = {**PROVISIONAL["primitives"], **data.get("primitives", {})}
        self.reduce = {**PROVISIONAL["reduce_max"], **data.get("reduce_max", {})}
        self.natives = data.get("natives", [])
        self.measured = bool(data.get("primitives"))

    def primitive(self, name: str) -> tuple[float, int]:
        p = self.primitives[name]
        return float(p["bytes"]), int(p["rounds"])

    def reduce_max(self, n: int) -> tuple[float, int]:
        """(bytes per output element, rounds) of a max over n elements."""
        levels = math.ceil(math.log2(n)) if n > 1 else 0
        return (n - 1) * float(self.reduce["bytes_per_pair"]), \
            levels * int(self.reduce["rounds_per_level"]) + (int(self.reduce["extra_rounds"]) if levels else 0)

    def native(self, fn: str, knobs: dict | None) -> tuple[float, int]:
        sig = knob_signature(fn, knobs)
        for entry in self.natives:
            if entry["fn"] == fn and entry.get("knobs", {}) == sig:
                return float(entry["bytes_per_element"]), int(entry["rounds"])
        raise KeyError(f"no measured cost of SPU's {fn} with {sig or 'default knobs'}; run "
                       "`python -m tools.measure_protocols --natives` to measure it")

    @staticmethod
    def knob(knobs: dict | None, section: str, name: str, default=None):
        return (knobs or {}).get(section, {}).get(name, default)


@lru_cache(maxsize=1)
def load_table() -> CostTable:
    data = json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}
    return CostTable(data)


def reload_table() -> CostTable:
    load_table.cache_clear()
    return load_table()
