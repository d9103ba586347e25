"""Measure every protocol variant under SPU (ABY3, FM64, in-process 3-party simulation with SPU's own profile)
and calibrate the cost model: writes runtime/protocols/coefficients/costs.json and prints a table.

    python -m tools.measure_protocols                 # primitives, natives, then every variant (a few minutes)
    python -m tools.measure_protocols --only silu,softmax --no-write
    python -m tools.measure_protocols --primitives --natives   # only the cost-model inputs
    python -m tools.measure_protocols --table                  # the stored table as Markdown

Per variant: elements, measured 3-party MiB and rounds (largest per-party count of send actions), the cost
model's prediction and its deviation, and the max abs error of SPU's output against the float64 reference on a
dense sample of the variant's interval (next to the plaintext emulation's error on the same inputs).
Primitive costs (mul, trunc, compare, select, ...) and SPU's native functions (exp, reciprocal, rsqrt, ... under
every knob setting a variant uses) are measured on their own: the cost model sums them, nothing is fitted to
the variant measurements, which only serve as the check (``tests/test_protocols.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time

import numpy as np

ELEMENTS = 1 << 16
PRIMITIVE_ELEMENTS = 1 << 14


COST_BITS = 18   # costs do not depend on the fraction bits; accuracy does, and is also measured at other bits


def _profile(fn, args, knobs=None, visibilities=None, fraction_bits: int = COST_BITS):
    from runtime.spu_config import SecureConfig
    from runtime.spu_profile import profile_run
    knobs = knobs or {}
    config = SecureConfig(runtime=dict(knobs.get("runtime", {})), compiler=dict(knobs.get("compiler", {})),
                          fxp_bits=fraction_bits)
    return profile_run(fn, [np.asarray(a, np.float32) for a in args], visibilities, config)


# ---------------------------------------------------------------------------------------------------------------
# primitives


def measure_primitives(n: int = PRIMITIVE_ELEMENTS) -> dict:
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, n)
    y = rng.uniform(-4, 4, n)
    coeffs = np.array([0.3, -0.2, 0.1, 0.05], np.float32)

    cases = {
        "mul": (lambda a, b: a * b, [x, y], 0),
        "trunc": (lambda a: a * np.float32(0.3), [x], 0),
        "dot": (lambda a: jnp.stack([a, a + 1, a - 1, a + a], -1) @ coeffs, [x], 0),
        "compare": (lambda a: (a > 0.5).astype(jnp.float32), [x], 0),
        # where(a > 0, a, 0) minus the comparison alone
        "select": (lambda a: jnp.where(a > 0.5, a, 0.0), [x], "compare"),
        "select_public": (lambda a: jnp.where(a > 0.5, 1.0, 0.0), [x], "compare"),
        "bit_and": (lambda a: jnp.where((jnp.concatenate([a, a]) > 0.5)[:n] & (jnp.concatenate([a, a]) > 0.5)[n:],
                                        a, 0.0), [x], "compare2_select"),
        "compare2_select": (lambda a: jnp.where((jnp.concatenate([a, -a]) > 0.5)[:n], a, 0.0), [x], None),
        # one predicate, two selects with secret branches: b2a once + mul_aa per select
        "shared2": (lambda a: (lambda s: jnp.where(s, a, -a) + jnp.where(s, a + a, 1 - a))(a > 0.5), [x], "compare"),
        "shared3": (lambda a: (lambda s: jnp.where(s, a, -a) + jnp.where(s, a + a, 1 - a) +
                                         jnp.where(s, 1 + a, a - a - a))(a > 0.5), [x], "compare"),
    }
    raw = {}
    for name, (fn, args, _) in cases.items():
        r = _profile(fn, args)
        raw[name] = (r.total_bytes / n, r.rounds)
    out = {}
    for name, (fn, args, minus) in cases.items():
        if name == "compare2_select":
            continue
        b, rounds = raw[name]
        if minus:
            mb, mr = raw[minus]
            b, rounds = b - mb, rounds - mr
        out[name] = {"bytes": round(b, 3), "rounds": int(rounds)}
    # shared2 = first + one more; shared3 = first + two more
    two, three = out.pop("shared2"), out.pop("shared3")
    again = {"bytes": round(three["bytes"] - two["bytes"], 3), "rounds": three["rounds"] - two["rounds"]}
    out["select_shared"] = again
    out["select_shared_first"] = {"bytes": round(two["bytes"] - again["bytes"], 3),
                                  "rounds": two["rounds"] - again["rounds"]}
    return out


def measure_reduce_max() -> dict:
    import jax.numpy as jnp
    rng = np.random.default_rng(1)
    rows = []
    for n in (64, 196, 256):
        x = rng.uniform(-4, 4, (ELEMENTS // n, n))
        r = _profile(lambda a: jnp.max(a, axis=-1), [x])
        rows.append({"n": n, "rows": x.shape[0], "bytes": r.total_bytes, "rounds": r.rounds})
    per_pair = float(np.mean([m["bytes"] / (m["rows"] * (m["n"] - 1)) for m in rows]))
    levels = [(math.ceil(math.log2(m["n"])), m["rounds"]) for m in rows]
    per_level = round(float(np.mean([(r - 1) / lv for lv, r in levels])))
    return {"bytes_per_pair": round(per_pair, 3), "rounds_per_level": per_level, "extra_rounds": 1,
            "measured": rows}


# ---------------------------------------------------------------------------------------------------------------
# SPU natives under knob settings


NATIVE_DOMAINS = {
    "exp": (-8.0, 4.0), "reciprocal": (0.05, 20.0), "divide": (0.05, 20.0), "rsqrt": (0.01, 100.0),
    "sqrt": (0.01, 100.0), "tanh": (-6.0, 6.0), "log": (0.05, 20.0), "sigmoid": (-10.0, 10.0),
    "softplus": (-10.0, 10.0), "erf": (-4.0, 4.0),
}


class _Recorder:
    """A cost table that records which natives (and knob settings) the variants need."""

    def __init__(self, base):
        self.base = base
        self.needed = {}

    def __getattr__(self, name):
        return getattr(self.base, name)

    def native(self, fn, knobs):
        from runtime.protocols.cost_model import knob_signature
        sig = knob_signature(fn, knobs)
        self.needed[(fn, json.dumps(sig, sort_keys=True))] = (fn, sig, knobs)
        return 0.0, 0


def needed_natives() -> list[tuple[str, dict, dict]]:
    from runtime.protocols import base
    from runtime.protocols.backends import CostBackend, Sym
    from runtime.protocols.cost_model import load_table
    recorder = _Recorder(load_table())
    for p in base.all_protocols():
        bk = CostBackend(recorder, p.knobs.to_json())
        shape = base.reference_shape(p.op)
        inputs = [Sym(shape)]
        kw = dict(base.reference_kwargs(p.op))
        if p.op == "group_norm":
            inputs += [Sym((shape[1],)), Sym((shape[1],))]
        elif p.op == "layer_norm":
            inputs += [Sym(shape[-1:]), Sym(shape[-1:])]
        p.evaluate(bk, *inputs, **kw)
    # the divide of a per-element softmax, and reciprocal for the hoisted one
    return sorted(recorder.needed.values(), key=lambda v: (v[0], json.dumps(v[1], sort_keys=True)))


def measure_native(fn_name: str, knobs: dict, n: int = PRIMITIVE_ELEMENTS) -> dict:
    from runtime.protocols.backends import JaxBackend, NumpyBackend
    lo, hi = NATIVE_DOMAINS[fn_name]
    x = np.linspace(lo, hi, n)
    bk = JaxBackend()
    if fn_name == "divide":
        y = np.linspace(-3, 3, n)
        r = _profile(lambda a, b: bk.divide(a, b), [y, x], knobs)
        want = y / x
    else:
        r = _profile(lambda a: bk.native(fn_name, a), [x], knobs)
        want = NumpyBackend().native(fn_name, x) if fn_name not in ("exp", "sigmoid") else \
            (np.exp(x) if fn_name == "exp" else 1 / (1 + np.exp(-x)))
    got = r.outputs[0].astype(np.float64)
    err = np.abs(got - want)
    return {"bytes_per_element": round(r.total_bytes / n, 3), "rounds": r.rounds,
            "max_abs_error": float(f"{np.max(err):.4g}"), "max_rel_error": float(f"{np.max(err / np.maximum(np.abs(want), 1e-3)):.4g}"),
            "domain": [lo, hi]}


# ---------------------------------------------------------------------------------------------------------------
# whole protocol variants


def _rows_within_bound(x, params, rng):
    """Rows as a bounded-rows softmax sees them on a node it was chosen for: the chooser takes it only where every
    calibrated row's norm, 10% larger, stays within B (and max - mean within U), so no row is scaled down there.
    Rows beyond B are out of calibration (a lower temperature: sane, not accurate); measuring SPU's deviation on
    them would charge every node the error of SPU's rsqrt on rows it never sees."""
    from runtime.protocols.softmax import row_norms
    norm, bound, upper = int(params.get("norm", 2)), float(params["bound"]), float(params["upper"])
    centered = x - x.mean(axis=1, keepdims=True)
    norms = row_norms(centered, 1, norm)
    peaks = centered.max(axis=1, keepdims=True)
    factor = np.minimum(0.9 * bound / norms, 0.98 * upper / peaks) * rng.uniform(0.3, 1.0, (x.shape[0], 1))
    return centered * factor + rng.normal(0.0, 3.0, (x.shape[0], 1))


def measurement_inputs(p):
    """Inputs (float64) and op kwargs for measuring a variant at ~2^16 elements on its interval."""
    from runtime.protocols.base import op_module
    mod = op_module(p.op)
    interval = p.interval or mod.DEFAULT_INTERVAL
    rng = np.random.default_rng(3)
    if p.op == "softmax":
        low, high = interval
        x = rng.uniform(low, high, (256, 256))
        if p.params.get("clip") == "box":
            x = mod.box_samples(p.params["bound"], rows=256)[0].repeat(4, axis=1)
        if p.params.get("clip") == "bound":
            x = _rows_within_bound(x, p.params, rng)
        return [x], {"axis": -1}
    if p.op == "group_norm":
        low, high = interval
        g = rng.standard_normal((1, 32, 2 * 32 * 32))
        g = (g - g.mean(2, keepdims=True)) / g.std(2, keepdims=True)
        var = np.geomspace(low, high, 32).reshape(1, 32, 1)
        x = np.reshape(g * np.sqrt(var) + rng.normal(0, 1, (1, 32, 1)), (1, 64, 32, 32))
        return [x, rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.5, 64)], {"num_groups": 32, "epsilon": 1e-5}
    if p.op == "layer_norm":
        low, high = interval
        rows = rng.standard_normal((256, 256))
        rows = (rows - rows.mean(1, keepdims=True)) / rows.std(1, keepdims=True)
        x = rows * np.sqrt(np.geomspace(low, high, 256))[:, None] + rng.normal(0, 1, (256, 1))
        return [x, rng.uniform(0.5, 1.5, 256), rng.normal(0, 0.5, 256)], {"axis": -1, "epsilon": 1e-5}
    return [mod.samples(interval, ELEMENTS)[0]], {}


def measure_protocol(p, fraction_bits: int = COST_BITS) -> dict:
    inputs, kw = measurement_inputs(p)
    r = _profile(lambda *a: p.jax_fn(*a, **kw), inputs, p.knobs.to_json(), fraction_bits=fraction_bits)
    got = r.outputs[0].astype(np.float64)
    want = p.reference(*inputs, **kw)
    emulated = p.numpy_fn(*inputs, **kw)
    shape = np.shape(inputs[0])
    predicted = p.cost(shape, **{k: v for k, v in kw.items() if k in ("num_groups", "axis")})
    return {
        "protocol": p.name, "op": p.op, "shape": list(shape), "elements": int(np.prod(shape)),
        "interval": list(p.interval) if p.interval else None,
        "bytes": int(r.total_bytes), "rounds": int(r.rounds),
        "predicted_bytes": round(predicted.bytes, 1), "predicted_rounds": int(predicted.rounds),
        "spu_max_error": float(f"{np.max(np.abs(got - want)):.4g}"),
        "emulated_max_error": float(f"{np.max(np.abs(emulated - want)):.4g}"),
        "spu_vs_emulation": float(f"{np.max(np.abs(got - emulated)):.4g}"),
        "wall_time": round(r.wall_time, 3), "fraction_bits": fraction_bits,
    }


def merge_measurements(old: list[dict], rows: list[dict], names: set[str]) -> list[dict]:
    """Rows at the cost setting replace a variant's entry; rows at other fraction bits only add their accuracy
    under ``by_fraction_bits`` (bytes and rounds do not depend on the bits)."""
    merged = {m["protocol"]: m for m in old}
    for row in rows:
        bits = row.pop("fraction_bits")
        accuracy = {k: row[k] for k in ("spu_max_error", "spu_vs_emulation")}
        previous = merged.get(row["protocol"], {})
        by_bits = {**previous.get("by_fraction_bits", {}), str(bits): accuracy}
        if bits == COST_BITS or not previous:
            merged[row["protocol"]] = {**row, "by_fraction_bits": by_bits}
        else:
            merged[row["protocol"]] = {**previous, "by_fraction_bits": by_bits}
    return [merged[k] for k in sorted(merged) if k in names]


def print_table(rows: list[dict], file=sys.stdout) -> None:
    head = f"{'protocol':44s} {'elements':>8s} {'MiB':>8s} {'rounds':>6s} {'model MiB':>9s} {'dev':>6s} " \
           f"{'model r':>7s} {'SPU err':>9s} {'emul err':>9s}"
    print(head, file=file)
    print("-" * len(head), file=file)
    for m in rows:
        dev = (m["predicted_bytes"] - m["bytes"]) / m["bytes"] if m["bytes"] else 0.0
        print(f"{m['protocol']:44s} {m['elements']:8d} {m['bytes'] / 2 ** 20:8.2f} {m['rounds']:6d} "
              f"{m['predicted_bytes'] / 2 ** 20:9.2f} {dev:+6.1%} {m['predicted_rounds']:7d} {m['spu_max_error']:9.2e} "
              f"{m['emulated_max_error']:9.2e}", file=file)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.measure_protocols", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated ops or protocol names (measure just these variants)")
    parser.add_argument("--primitives", action="store_true", help="measure the primitive costs")
    parser.add_argument("--natives", action="store_true", help="measure SPU's natives under the knobs variants use")
    parser.add_argument("--no-write", action="store_true", help="print, do not update costs.json")
    parser.add_argument("--table", action="store_true", help="print the stored measurements as Markdown; run nothing")
    parser.add_argument("--fxp-bits", type=int, default=COST_BITS,
                        help=f"fraction bits of the variant runs (default {COST_BITS}, the cost setting); other "
                             "values add only the variants' accuracy at those bits")
    args = parser.parse_args(argv)
    if args.table:
        from runtime.protocols.cost_model import COSTS_PATH as path
        print(markdown_table(json.loads(path.read_text())))
        return 0

    from runtime.protocols import base
    from runtime.protocols.cost_model import COSTS_PATH, reload_table
    data = json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}
    # At other fraction bits only the variants' accuracy is new: costs stay those measured at COST_BITS.
    everything = not (args.primitives or args.natives or args.only) and args.fxp_bits == COST_BITS
    started = time.perf_counter()

    def save():
        if args.no_write:
            return
        data["generated_by"] = "python -m tools.measure_protocols"
        data["setting"] = {"spu": _spu_version(), "protocol": "ABY3", "field": "FM64", "fxp_bits": COST_BITS,
                           "note": "3-party send bytes; rounds = largest per-party send actions"}
        data["date"] = datetime.date.today().isoformat()
        COSTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        tmp = COSTS_PATH.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(COSTS_PATH)
        reload_table()

    if args.primitives or everything:
        data["primitives"] = measure_primitives()
        data["reduce_max"] = measure_reduce_max()
        print("primitives (bytes per element, rounds):")
        for k, v in data["primitives"].items():
            print(f"  {k:14s} {v['bytes']:8.2f} B {v['rounds']:3d} r")
        print(f"  reduce_max     {data['reduce_max']['bytes_per_pair']:.2f} B per pair, "
              f"{data['reduce_max']['rounds_per_level']} rounds per level")
        save()
    if args.natives or everything:
        natives = []
        for fn_name, sig, knobs in needed_natives():
            m = measure_native(fn_name, {"runtime": dict(sig), "compiler": {}})
            natives.append({"fn": fn_name, "knobs": sig, **m})
            print(f"  native {fn_name:10s} {json.dumps(sig, sort_keys=True):90s} {m['bytes_per_element']:8.1f} B "
                  f"{m['rounds']:3d} r  err {m['max_abs_error']:.2e}")
        data["natives"] = natives
        save()
    if args.only or everything or args.fxp_bits != COST_BITS:
        wanted = None if not args.only else {w.strip() for w in args.only.split(",") if w.strip()}
        rows = []
        for p in base.all_protocols():
            if wanted and p.op not in wanted and p.name not in wanted:
                continue
            rows.append(measure_protocol(p, args.fxp_bits))
            print_table(rows[-1:], file=sys.stderr)
        print_table(rows)
        data["measurements"] = merge_measurements(data.get("measurements", []), rows,
                                                  {p.name for p in base.all_protocols()})
        save()
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def markdown_table(data: dict) -> str:
    """The stored measurements as a Markdown table: one row per variant, ratios against the op's direct run."""
    from runtime.protocols import base
    measured = {m["protocol"]: m for m in data.get("measurements", [])}
    lines = ["| variant | interval | segments x degree | comparisons/elt | max err (emulated) | max err (SPU) | "
             "MiB | rounds | bytes vs direct |", "|---|---|---|---|---|---|---|---|---|"]
    for op in base.OPS:
        direct = measured.get(base.direct(op).name)
        for p in base.variants(op):
            m = measured.get(p.name)
            if m is None:
                continue
            params = p.params
            if p.family == "abs_piecewise":
                shape = f"{len(params['segments'])} x {params['degree']}"
            elif p.family in ("exp_square", "softmax_max", "softmax_shift"):
                e = params.get("exp", params)
                shape = f"deg {e['degree']}, {e['squarings']} sq"
            elif p.family.startswith("newton"):
                shape = f"{params['segments']} x {params['degree']}, {params['newton_steps']} Newton"
            elif p.family == "norm":
                r = params["rsqrt"].get("params")
                shape = f"rsqrt {r['segments']} x {r['degree']}, {r['newton_steps']} Newton" if r else "SPU rsqrt"
            else:
                shape = "SPU" + (f" {json.dumps(p.knobs.to_json(), separators=(',', ':'))}" if p.knobs else "")
            interval = f"[{p.interval[0]:g}, {p.interval[1]:g}]" if p.interval else "-"
            comparisons = p.cost(m["shape"], **({"num_groups": 32} if op == "group_norm" else {})).comparisons
            ratio = f"{direct['bytes'] / m['bytes']:.2f}x less" if direct and p.name != direct["protocol"] else "-"
            lines.append(f"| {p.name} | {interval} | {shape} | {comparisons / m['elements']:.2g} | "
                         f"{m['emulated_max_error']:.2g} | {m['spu_max_error']:.2g} | {m['bytes'] / 2 ** 20:.2f} | "
                         f"{m['rounds']} | {ratio} |")
    return "\n".join(lines)


def _spu_version() -> str:
    try:
        from importlib.metadata import version
        return version("spu")
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
