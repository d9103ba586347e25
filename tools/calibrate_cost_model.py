"""Measure the constants of the whole-model cost estimator (passes/cost.py) with SPU's own profile, and check it.

::

    python -m tools.calibrate_cost_model                 # per-op constants + whole-model check; writes passes/cost_table.json
    python -m tools.calibrate_cost_model --ops           # only the per-op constants
    python -m tools.calibrate_cost_model --validate      # only the whole-model check (fixtures, direct and rewritten)
    python -m tools.calibrate_cost_model --per-node unet2d_attn.ts17 [--rewritten]
                                                         # every node that communicates, run alone vs its estimate

Everything runs as three in-process SPU parties (ABY3, FM64, 18 fraction bits, profiling on every rank) through
``runtime.spu_profile.profile_run``; bytes are the 3-party link send bytes, rounds the largest per-party count of
send actions. Per-op constants are measured on one-node ONNX models lowered by cipherdm's own compiler (so they
price exactly the expression the compiler emits), on 4096 secret elements; bytes per element are exact integers
and rounds do not depend on the size for elementwise ops. Rounds of a primitive inside a longer program (chains of
32 dependent ops, 3 runs) replace its rounds alone, which overstate a sequence. The batched-matmul rounds (SPU runs dot_general batch
by batch) are fitted as ``base + per_batch * batches`` on 1, 4 and 16 batches. The primitive and native costs
(mul, trunc, compare, select, exp, reciprocal, rsqrt, ...) are not re-measured here: they come from
``runtime/protocols/coefficients/costs.json`` (``python -m tools.measure_protocols``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
MNIST_UNET = REPO / "models" / "cipherdm_mnist_unet.onnx"
VALIDATION_MODELS = ("unet2d_attn.ts17", "unet2d_attn.dynamo18", "unet2d_mish.dynamo18", "dit_block.dynamo23")
ELEMENTS = (64, 64)
OPSET = 18


# ---------------------------------------------------------------------------------------------------------------
# running models


def load_fixture(name: str):
    """(model, inputs, public input names) of a fixture name or an .onnx path with an .npz beside it."""
    import compiler
    path = Path(name) if name.endswith(".onnx") else FIXTURES / f"{name}.onnx"
    data_path = path.with_suffix(".npz")
    model = compiler.load_model(path)
    if data_path.exists():
        with np.load(data_path) as data:
            inputs = {k: data[k] for k in data.files if not k.startswith("out:")}
    else:
        inputs = _example_inputs(model)
    return model, inputs, {"timestep"} & set(inputs)


def _example_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Random inputs of the declared shapes (a timestep of 10): costs do not depend on the values."""
    from compiler.loader import graph_inputs
    rng = np.random.default_rng(0)
    out = {}
    for vi in graph_inputs(model):
        t = vi.type.tensor_type
        shape = tuple(d.dim_value for d in t.shape.dim)
        dtype = np.dtype(h.tensor_dtype_to_np_dtype(t.elem_type))
        if vi.name == "timestep":
            out[vi.name] = np.full(shape, 10, dtype)
        elif np.issubdtype(dtype, np.floating):
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[vi.name] = np.zeros(shape, dtype)
    return out


def measure_model(model: onnx.ModelProto, inputs: dict, public: set[str], config=None):
    """SPU's measured cost of the lowered model: weights and secret inputs shared, public inputs public."""
    from compiler.lowering import lower
    from passes.public import public_initializers
    from runtime.spu_profile import profile_run
    lowered = lower(model, public_initializers=public_initializers(model, set(public)))
    args = lowered.args(inputs)
    visibilities = ["public" if name in public else "secret" for name in lowered.arg_names]
    return profile_run(lowered.fn, args, visibilities, config)


def rewritten(model: onnx.ModelProto, inputs: dict, public: set[str]):
    from passes.pipeline import rewrite
    return rewrite(model, public_inputs=public, calibration=[inputs])


def spu_config(knobs: dict | None):
    """The SecureConfig (ABY3, FM64, 18 bits) a program runs with under ``knobs`` {"runtime", "compiler"}."""
    from runtime.spu_config import SecureConfig
    knobs = knobs or {}
    return SecureConfig(runtime=dict(knobs.get("runtime", {})), compiler=dict(knobs.get("compiler", {})))


def validate(names=VALIDATION_MODELS, log=print) -> list[dict]:
    """Whole-model bytes and rounds, measured and estimated, direct and rewritten."""
    from passes.cost import estimate_model
    rows = []
    for name in names:
        model, inputs, public = load_fixture(name)
        result = rewritten(model, inputs, public)
        for mode, m, knobs in (("direct", model, {}), ("rewritten", result.model, result.knobs.to_json())):
            start = time.perf_counter()
            measured = measure_model(m, inputs, public, spu_config(knobs))
            est = estimate_model(m, public, knobs)["totals"]
            row = {"model": Path(name).stem if name.endswith(".onnx") else name, "mode": mode,
                   "measured_bytes": int(measured.total_bytes), "estimated_bytes": est["bytes"],
                   "error": round(est["bytes"] / measured.total_bytes - 1, 6),
                   "measured_rounds": int(measured.rounds), "estimated_rounds": round(est["rounds"], 1),
                   "critical_path_rounds": round(est["critical_path_rounds"], 1),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            log(_row_text(row))
    return rows


def _row_text(r: dict) -> str:
    return (f"{r['model']:24s} {r['mode']:9s} measured {r['measured_bytes'] / 2**20:8.3f} MiB  estimated "
            f"{r['estimated_bytes'] / 2**20:8.3f} MiB  ({100 * r['error']:+5.1f}%)  rounds {r['measured_rounds']:5d} "
            f"vs {r['estimated_rounds']:6.0f} (critical path {r['critical_path_rounds']:.0f})")


# ---------------------------------------------------------------------------------------------------------------
# per-op constants


def _one_node(op_type: str, inputs: list[tuple[str, np.ndarray, str]], attrs: dict | None = None,
              opset: int = OPSET, out_type=TensorProto.FLOAT):
    """A one-node model; inputs are (name, value, "secret" | "public" | "constant")."""
    graph_inputs, inits, feeds, public = [], [], {}, set()
    for name, value, kind in inputs:
        if kind == "constant":
            inits.append(numpy_helper.from_array(value, name))
            continue
        graph_inputs.append(h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        feeds[name] = value
        if kind == "public":
            public.add(name)
    node = h.make_node(op_type, [name for name, _, _ in inputs], ["y"], **(attrs or {}))
    graph = h.make_graph([node], op_type.lower(), graph_inputs, [h.make_tensor_value_info("y", out_type, None)],
                         inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model = onnx.shape_inference.infer_shapes(model)
    return model, feeds, public


def _op_cases():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, ELEMENTS).astype(np.float32)
    pos = rng.uniform(0.1, 4, ELEMENTS).astype(np.float32)
    f = np.float32
    unary = {name: (name, [("x", x, "secret")], {}) for name in
             ("Abs", "Relu", "Sin", "Cos", "Sign", "Floor", "Ceil", "Round", "HardSigmoid", "HardSwish", "Softsign",
              "Elu", "Selu", "Celu", "ThresholdedRelu")}
    unary["LeakyRelu"] = ("LeakyRelu", [("x", x, "secret")], {"alpha": 0.1})
    unary["Sqrt"] = ("Sqrt", [("x", pos, "secret")], {})
    unary["Log"] = ("Log", [("x", pos, "secret")], {})
    unary["Equal"] = ("Equal", [("x", x, "secret"), ("c", np.array(1.0, f), "constant")], {})
    unary["div_public"] = ("Div", [("x", x, "secret"), ("p", pos, "public")], {})
    unary["cast_to_int"] = ("Cast", [("x", x, "secret")], {"to": TensorProto.INT32})
    return unary


def measure_ops(log=print) -> dict:
    ops = {}
    size = int(np.prod(ELEMENTS))
    for key, (op_type, inputs, attrs) in _op_cases().items():
        out_type = {"Equal": TensorProto.BOOL, "Cast": TensorProto.INT32}.get(op_type, TensorProto.FLOAT)
        model, feeds, public = _one_node(op_type, inputs, attrs, out_type=out_type)
        r = measure_model(model, feeds, public)
        ops[key] = {"bytes": r.total_bytes / size, "rounds": int(r.rounds), "op_type": op_type,
                    "elements": size}
        log(f"{key:16s} {r.total_bytes / size:8.2f} B/element  {r.rounds:4d} rounds")
    return ops


def measure_batched_dot(log=print) -> dict:
    rng = np.random.default_rng(1)
    fits = {}
    for kind in ("secret", "public"):
        points = []
        for batches in (1, 4, 16):
            a = rng.standard_normal((batches, 16, 16)).astype(np.float32)
            b = rng.standard_normal((batches, 16, 16)).astype(np.float32)
            model, feeds, public = _one_node("MatMul", [("a", a, "secret"), ("b", b, kind)])
            runs = [measure_model(model, feeds, public) for _ in range(REPEATS)]
            rounds = sum(r.rounds for r in runs) / REPEATS
            points.append((batches, rounds))
            log(f"batched matmul secret x {kind}, {batches:2d} batches: {rounds:.1f} rounds, "
                f"{runs[0].total_bytes / (batches * 256):.1f} B per output element")
        xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        per_batch, base = np.polyfit(xs, ys, 1)
        fits[kind] = {"base": round(float(base), 3), "per_batch": round(float(per_batch), 3),
                      "points": [list(p) for p in points]}
    return fits


CHAIN = 32
REPEATS = 3


def _chain_rounds(step, secret_b: bool = True) -> tuple[float, float]:
    """(rounds, bytes per element) per step of ``CHAIN`` dependent steps ``a = step(a, b_i)`` in one program,
    rounds averaged over ``REPEATS`` runs (the parties' send-action counts vary a little from run to run)."""
    from runtime.spu_profile import profile_run
    rng = np.random.default_rng(2)
    a = rng.uniform(0.5, 2.0, (16, 64)).astype(np.float32)
    b = rng.uniform(0.9, 1.1, (16, 64)).astype(np.float32)

    def program(x, y):
        for i in range(CHAIN):
            # b_i differs per step so no two steps can be folded into one
            x = step(x, y + np.float32(i * 1e-3))
        return x

    runs = [profile_run(program, [a, b], ["secret", "secret" if secret_b else "public"]) for _ in range(REPEATS)]
    return (sum(r.rounds for r in runs) / (REPEATS * CHAIN), runs[0].total_bytes / (a.size * CHAIN))


def measure_effective_rounds(log=print) -> dict:
    """Rounds a primitive adds inside a longer program (``CHAIN`` dependent copies), next to costs.json's rounds
    of one op measured alone.

    Alone, an op's rounds are its busiest party's send actions; in a program the parties' counts add up op after
    op and the busiest party over the whole program sends fewer than the sum of per-op maxima (a multiply alone:
    3, 3 and 2 send actions; 16 in a row: about 2.8 each). The estimator sums these per-step values."""
    import jax
    import jax.numpy as jnp
    from runtime.protocols.cost_model import load_table
    table = load_table()
    mul = _chain_rounds(lambda x, y: x * y)
    mul_trunc = _chain_rounds(lambda x, y: (x * y) * np.float32(0.999))
    poly = _chain_rounds(lambda x, y: jnp.stack([x * y, x], axis=-1) @ np.array([0.5, 0.5], np.float32))
    cmp_sel = _chain_rounds(lambda x, y: jnp.where(x < 1.0, y, x))
    compare_rounds = table.primitive("compare")[1]
    primitives = {"mul": mul[0], "trunc": mul_trunc[0] - mul[0], "dot": poly[0] - mul[0],
                  "select": cmp_sel[0] - compare_rounds, "compare": compare_rounds}
    natives = {
        "exp": _chain_rounds(lambda x, y: jnp.exp(x - 1.5)),
        "reciprocal": _chain_rounds(lambda x, y: 1.0 / (x + 0.5)),
        "rsqrt": _chain_rounds(lambda x, y: jax.lax.rsqrt(x + 0.5)),
        "tanh": _chain_rounds(lambda x, y: jnp.tanh(x)),
        "sigmoid": _chain_rounds(lambda x, y: jax.nn.sigmoid(x)),
        "divide": _chain_rounds(lambda x, y: x / (y + x)),
    }
    out = {"primitives": {}, "natives": {}, "chain": CHAIN}
    for name, value in primitives.items():
        alone = table.primitive(name)[1]
        out["primitives"][name] = {"rounds": round(float(value), 3), "alone": alone}
        log(f"{name:12s} {value:6.2f} rounds per step in a chain of {CHAIN} (alone: {alone})")
    for name, (rounds, _) in natives.items():
        alone = table.native(name, None)[1]
        out["natives"][name] = {"rounds": round(float(rounds), 3), "alone": alone}
        log(f"{name:12s} {rounds:6.2f} rounds per step in a chain of {CHAIN} (alone: {alone})")
    return out


# ---------------------------------------------------------------------------------------------------------------
# per-node check


def node_alone(model: onnx.ModelProto, index: int, public_inputs: set[str], inputs: dict):
    """The node ``index`` of ``model`` as a one-node model: its inputs become graph inputs (secret, or public when
    the analysis says so), compile-time constants stay constants. Returns (model, feeds, public names)."""
    from compiler.interpreter import Interpreter
    from passes.cost import GraphInfo
    info = GraphInfo(model, set(public_inputs))
    node = model.graph.node[index]
    values = _values_before(model, index, inputs, Interpreter)
    graph_inputs, constants, feeds, public = [], [], {}, set()
    for name in dict.fromkeys(i for i in node.input if i):
        value = np.asarray(values[name])
        if name in info.constants:
            # A Constant node, not an initializer: a float initializer would be taken for a secret weight.
            constants.append(h.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
            continue
        graph_inputs.append(h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        feeds[name] = value
        if name in info.public:
            public.add(name)
    outputs = [h.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    graph = h.make_graph(constants + [node], "alone", graph_inputs, outputs)
    one = h.make_model(graph, opset_imports=list(model.opset_import))
    one.ir_version = model.ir_version
    one.functions.extend(f for f in model.functions if f.name == node.op_type)
    one = onnx.shape_inference.infer_shapes(one)
    return one, feeds, public


def _values_before(model, index, inputs, interpreter_cls):
    """Every tensor's plaintext value, by running the model's first ``index`` nodes (numpy via jax)."""
    import jax
    from compiler.interpreter import Interpreter

    class Recorder(Interpreter):
        def __init__(self, m):
            super().__init__(m)
            self.seen = {}

        def on_node_done(self, node, ins, outs):
            for name, value in zip(node.output, outs):
                self.seen[name] = value

    rec = Recorder(model)
    feeds = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    feeds.update(inputs)
    with jax.ensure_compile_time_eval():
        rec.run(feeds)
    return {**feeds, **{k: np.asarray(v) for k, v in rec.seen.items()}}


def per_node(name: str, use_rewritten: bool = False, log=print, min_bytes: float = 1.0) -> list[dict]:
    from passes.cost import estimate_model
    model, inputs, public = load_fixture(name)
    knobs = {}
    if use_rewritten:
        result = rewritten(model, inputs, public)
        model, knobs = result.model, result.knobs.to_json()
    est = estimate_model(model, public, knobs)
    rows = []
    for index, entry in enumerate(est["nodes"]):
        if entry["bytes"] < min_bytes and entry["rounds"] == 0:
            continue
        one, feeds, pub = node_alone(model, index, public, inputs)
        r = measure_model(one, feeds, pub, spu_config(knobs))
        alone = estimate_model(one, pub, knobs)["totals"]
        row = {"name": entry["name"], "op_type": entry["op_type"], "measured_bytes": int(r.total_bytes),
               "estimated_bytes": entry["bytes"], "measured_rounds": int(r.rounds), "estimated_rounds": entry["rounds"],
               "estimated_alone": alone["bytes"]}
        rows.append(row)
        log(f"{row['op_type']:14s} {row['name'][-48:]:48s} bytes {row['measured_bytes']:9d} vs {row['estimated_bytes']:11.0f}"
            f"  rounds {row['measured_rounds']:4d} vs {row['estimated_rounds']:5.0f}")
    return rows


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.calibrate_cost_model", description=__doc__.split("\n")[0])
    parser.add_argument("--ops", action="store_true", help="only measure the per-op constants")
    parser.add_argument("--validate", nargs="*", metavar="MODEL",
                        help="only compare whole models, measured vs estimated (default: the validation fixtures)")
    parser.add_argument("--per-node", metavar="MODEL", help="measure every communicating node of MODEL alone")
    parser.add_argument("--rewritten", action="store_true", help="with --per-node: the rewritten model")
    parser.add_argument("--no-write", action="store_true", help="do not write passes/cost_table.json")
    args = parser.parse_args(argv)
    from passes.cost import TABLE_PATH, load_cost_table, reload_cost_table

    if args.per_node:
        per_node(args.per_node, args.rewritten)
        return 0
    table = dict(load_cost_table())
    if args.validate is None:
        table["ops"] = measure_ops()
        table["batched_dot"] = measure_batched_dot()
        table["effective_rounds"] = measure_effective_rounds()
        table.update(generated_by="python -m tools.calibrate_cost_model",
                     setting={"spu": _spu_version(), "protocol": "ABY3", "field": "FM64", "fxp_bits": 18,
                              "note": "3-party send bytes per element; rounds = largest per-party send actions"},
                     date=datetime.date.today().isoformat())
        if not args.no_write:
            TABLE_PATH.write_text(json.dumps(table, indent=1) + "\n")
            reload_cost_table()
    if not args.ops:
        names = args.validate or list(VALIDATION_MODELS) + ([str(MNIST_UNET)] if MNIST_UNET.exists() else [])
        table["validation"] = validate(names)
        if not args.no_write and not args.validate:
            TABLE_PATH.write_text(json.dumps(table, indent=1) + "\n")
    return 0


def _spu_version() -> str:
    try:
        import spu
        return getattr(spu, "__version__", "0.9.5")
    except ImportError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
