"""Whole-model cost estimate for ABY3 / FM64 from static shapes: bytes and rounds per node and in total.

::

    from passes.cost import estimate_model
    est = estimate_model(model, public_inputs={"timestep"})           # knobs: {"runtime": {...}, "compiler": {...}}
    est["totals"]        # {"bytes", "mib", "rounds", "critical_path_rounds", "nodes", "secret_nodes"}
    est["nodes"]         # [{"name", "op_type", "bytes", "rounds", "rule"}, ...] in graph order
    est["unsupported"]   # [{"name", "op_type", "reason"}]: secret nodes no rule covers (counted as zero)

What a node costs (3-party send bytes, SPU's measured per-element primitives of
``runtime/protocols/coefficients/costs.json`` plus the per-op constants in ``passes/cost_table.json``, measured by
``python -m tools.calibrate_cost_model``):

* nodes whose inputs are all public (public inputs, non-weight constants, ``passes.public.public_initializers``)
  cost nothing; weights and secret inputs enter already shared, so sharing is not counted;
* products (Conv, ConvTranspose, MatMul, Gemm, Einsum): one fixed-point product per output element,
  ``mul`` (resharing + truncation) when both operands are secret, ``trunc`` when one is public; SPU runs a batched
  matmul batch by batch, so its rounds grow with the batch count (fitted);
* elementwise Mul / Div: secret x secret ``mul``, secret x public ``trunc``; division by a compile-time constant is
  a truncated product, by a run-time public value two, by a secret SPU's ``divide``;
* Add, Sub, Reshape, Transpose, Concat, Slice, Pad, Gather with constant indices, nearest Resize: free; ReduceSum:
  one truncation per output (a product with ones: runtime/fxp_scale.weighted_sum);
  ReduceMean, Mean, GlobalAveragePool, AveragePool: one truncation per output; linear/cubic Resize: a public
  interpolation matrix per resized axis, one truncation per element of each stage;
* nonlinear ops in the form the compiler lowers them (SPU's exp, reciprocal, rsqrt, tanh, sigmoid, erf, ... under
  the program's knobs; Softmax, the norms, Gelu, Mish through their ``direct`` protocol variants, which count the
  compiler's own expression), comparisons, Where with a secret condition, Max/Min, Clip, Abs, Pow;
* ``cipherdm::`` protocol nodes: :meth:`runtime.protocols.Protocol.cost` of the protocol the node names, under the
  program's knobs (the union of every protocol node's ``spu_knobs`` unless ``knobs`` is given).

Rounds: SPU 0.9.5 interprets the program one op at a time and every op's messages are its own send actions, so the
rounds it runs (and ``spu_profile`` measures: the largest per-party count of send actions) are the *sum* over the
nodes: ``totals["rounds"]``. ``totals["critical_path_rounds"]`` is the longest dependency path (node rounds along
the graph's edges): what a scheduler that overlapped independent branches could reach, a lower bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from compiler.shapes import traced_shapes
from onnx import numpy_helper

from compiler.interpreter import attribute_dict
from compiler.lowering import is_weight
from passes.public import public_initializers, public_tensors

TABLE_PATH = Path(__file__).resolve().parent / "cost_table.json"
CIPHERDM_DOMAIN = "cipherdm"

# Ops that move or add shares locally: no communication.
FREE = {
    "Add", "Sub", "Neg", "Identity", "Reshape", "Transpose", "Concat", "Slice", "Squeeze", "Unsqueeze", "Flatten",
    "Expand", "Split", "Pad", "Tile", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements",
    "Sum", "Constant", "ConstantOfShape", "Shape", "Size", "Dropout",
    "SpaceToDepth", "DepthToSpace", "Trilu", "CumSum", "Range", "EyeLike",
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
              onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
# Indexing ops: free with public indices (a permutation of shares), priced by no rule with secret ones.
INDEXING = {"Gather": 1, "GatherElements": 1, "GatherND": 1, "ScatterND": 1, "ScatterElements": 1}
# Elementwise ops with one secret input whose per-element cost the calibration measured through the compiler's
# own lowering (cost_table.json "ops"), under SPU's default knobs.
MEASURED_UNARY = ("Abs", "Relu", "LeakyRelu", "Sqrt", "Log", "Sin", "Cos", "Sign", "Floor", "Ceil", "Round",
                  "HardSigmoid", "HardSwish", "Softsign", "Elu", "Selu", "Celu", "ThresholdedRelu")
_VALUE_PRESERVING = ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast", "Transpose", "Flatten", "Tile")
COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual")


@dataclass
class NodeCost:
    bytes: float = 0.0
    rounds: float = 0.0
    rule: str = ""
    parts: dict = field(default_factory=dict)

    def add(self, what: str, nbytes: float, rounds: float) -> "NodeCost":
        self.bytes += nbytes
        self.rounds += rounds
        self.parts[what] = self.parts.get(what, 0.0) + nbytes
        return self


class Unsupported(Exception):
    """No rule prices this node."""


# ---------------------------------------------------------------------------------------------------------------
# tables


@lru_cache(maxsize=1)
def load_cost_table() -> dict:
    return json.loads(TABLE_PATH.read_text()) if TABLE_PATH.exists() else {}


def reload_cost_table() -> dict:
    load_cost_table.cache_clear()
    return load_cost_table()


class EffectiveTable:
    """costs.json's table with the rounds a primitive adds inside a longer program (cost_table.json
    ``effective_rounds``, measured on chains of dependent ops) instead of its rounds alone; bytes unchanged.

    Alone, an op's rounds are its busiest party's send actions; over a program the parties' counts add up and the
    busiest party sends fewer than the sum of per-op maxima, so summing the alone values overestimates."""

    def __init__(self, table, effective: dict | None):
        self.table = table
        self.data = table.data
        self.measured = table.measured
        effective = effective or {}
        self._prim = {k: float(v["rounds"]) for k, v in effective.get("primitives", {}).items()}
        # Natives under other knobs: shift the measured rounds by the default setting's difference.
        self._native_shift = {k: float(v["rounds"]) - float(v["alone"])
                              for k, v in effective.get("natives", {}).items()}

    def primitive(self, name: str) -> tuple[float, float]:
        b, r = self.table.primitive(name)
        return b, self._prim.get(name, r)

    def native(self, fn: str, knobs: dict | None) -> tuple[float, float]:
        b, r = self.table.native(fn, knobs)
        return b, r + self._native_shift.get(fn, 0.0)

    def reduce_max(self, n: int) -> tuple[float, float]:
        return self.table.reduce_max(n)

    @staticmethod
    def knob(knobs: dict | None, section: str, name: str, default=None):
        return (knobs or {}).get(section, {}).get(name, default)


class Prices:
    """Per-element primitive and native costs (costs.json) and the per-op constants of cost_table.json."""

    # Natives measured whole in costs.json that are compositions: under knobs nobody measured, price the
    # measured default plus the change of their parts.
    COMPOSITE = {"sigmoid": ("exp", "reciprocal"), "erf": ("exp", "reciprocal"), "softplus": ("exp",),
                 "divide": ("reciprocal",)}

    def __init__(self, knobs: dict | None, effective_rounds: bool = True):
        from runtime.protocols.cost_model import load_table
        self.own = load_cost_table()
        self.table = EffectiveTable(load_table(), self.own.get("effective_rounds") if effective_rounds else None)
        self.knobs = {"runtime": dict((knobs or {}).get("runtime", {})),
                      "compiler": dict((knobs or {}).get("compiler", {}))}

    def primitive(self, name: str) -> tuple[float, float]:
        return self.table.primitive(name)

    def native(self, fn: str) -> tuple[float, float]:
        try:
            return self.table.native(fn, self.knobs)
        except KeyError:
            pass
        base = self._default(fn)
        if base is None:
            raise Unsupported(f"no measured cost of SPU's {fn}")
        b, r = base
        for part in self.COMPOSITE.get(fn, ()):
            try:
                pb, pr = self.table.native(part, self.knobs)
            except KeyError:
                continue
            db, dr = self._default(part) or (pb, pr)
            b, r = b + pb - db, r + pr - dr
        return b, r

    def _default(self, fn: str) -> tuple[float, float] | None:
        try:
            return self.table.native(fn, None)
        except KeyError:
            return None

    def op(self, name: str) -> tuple[float, float]:
        ops = self.own.get("ops", {})
        if name not in ops:
            raise Unsupported(f"no measured per-element cost for {name} (run python -m tools.calibrate_cost_model)")
        return float(ops[name]["bytes"]), float(ops[name]["rounds"])

    def batched_dot_rounds(self, secret: bool, batches: int) -> float:
        fit = self.own.get("batched_dot", {}).get("secret" if secret else "public")
        if not fit:
            return self.primitive("mul" if secret else "trunc")[1] * batches
        return float(fit["base"]) + float(fit["per_batch"]) * batches

    def reduce_max(self, n: int) -> tuple[float, float]:
        return self.table.reduce_max(n)

    def backend(self, knobs):
        """A CostBackend counting with these prices (for protocol expressions)."""
        return _folding_backend()(self.table, knobs.to_json())

    @property
    def spu_knobs(self):
        from runtime.protocols import SpuKnobs
        return SpuKnobs(dict(self.knobs["runtime"]), dict(self.knobs["compiler"]))


@lru_cache(maxsize=1)
def _folding_backend():
    """CostBackend that knows constants of ones (a norm's default scale): SPU's compiler folds products with them
    away, so they cost nothing (built lazily: the protocol package is imported on first use)."""
    from dataclasses import dataclass as _dataclass

    from runtime.protocols.backends import CostBackend, Sym

    @_dataclass
    class One(Sym):
        public: bool = True

    class FoldingBackend(CostBackend):
        one = One

        def mul_many(self, pairs):
            outs: list = [None] * len(pairs)
            rest, where = [], []
            for k, (a, b) in enumerate(pairs):
                if isinstance(a, One) or isinstance(b, One):
                    other = b if isinstance(a, One) else a
                    shape = self._shape(a, b)
                    outs[k] = One(shape) if isinstance(other, One) else Sym(shape, other.public)
                else:
                    rest.append((a, b))
                    where.append(k)
            for k, out in zip(where, super().mul_many(rest) if rest else []):
                outs[k] = out
            return outs

        def channel_vector(self, scale):
            return One((1, scale.shape[0], 1)) if isinstance(scale, One) else super().channel_vector(scale)

        def channel_fold(self, per_group, scale, num_groups, like):
            if isinstance(scale, One):
                return Sym((like.shape[0], like.shape[1], 1), per_group.public)
            return super().channel_fold(per_group, scale, num_groups, like)

        def rows_apply(self, normalized, scale, bias, like):
            if isinstance(scale, One):
                return Sym(like.shape, normalized.public and (bias is None or bias.public))
            return super().rows_apply(normalized, scale, bias, like)

    return FoldingBackend


# ---------------------------------------------------------------------------------------------------------------
# per-node context


class Node:
    """What a rule sees of one node: attributes, shapes, which inputs are secret, constant values."""

    def __init__(self, node: onnx.NodeProto, graph: "GraphInfo", prices: Prices):
        self.node = node
        self.op_type = node.op_type
        self.attrs = attribute_dict(node)
        self.g = graph
        self.prices = prices

    def shape(self, i: int) -> tuple[int, ...]:
        return self.g.shape(self.node.input[i])

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.g.shape(self.node.output[i])

    def out_size(self, i: int = 0) -> int:
        return _size(self.out_shape(i))

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def secret(self, i: int) -> bool:
        return self.has(i) and self.node.input[i] not in self.g.public

    def constant(self, i: int) -> bool:
        """A value known when the program is compiled (public and independent of every graph input)."""
        return self.has(i) and self.node.input[i] in self.g.constants

    def ones(self, i: int) -> bool:
        """A compile-time constant that is all ones (a product with it is folded away)."""
        return self.has(i) and self.node.input[i] in self.g.ones

    def value(self, i: int) -> np.ndarray | None:
        return self.g.values.get(self.node.input[i]) if self.has(i) else None

    def inputs(self) -> list[int]:
        return [i for i in range(len(self.node.input)) if self.has(i)]


class GraphInfo:
    def __init__(self, model: onnx.ModelProto, public_inputs: set[str]):
        graph = model.graph
        self.public = public_tensors(model, set(public_inputs) | public_initializers(model, set(public_inputs)))
        self.values: dict[str, np.ndarray] = {}
        weights = {i.name for i in graph.initializer if is_weight(i)} - self.public
        for init in graph.initializer:
            if init.name not in weights:
                self.values[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attrs = attribute_dict(node)
                value = attrs.get("value")
                if value is None:
                    for key in ("value_float", "value_int", "value_floats", "value_ints"):
                        if key in attrs:
                            value = np.asarray(attrs[key])
                if value is not None:
                    self.values[node.output[0]] = np.asarray(value)
        # Compile-time constants: public values that depend on no graph input (the interpreter folds them).
        graph_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
        self.constants = set(self.values)
        for node in graph.node:
            if node.op_type in ("Shape", "Size") or (node.input and all(
                    (not n) or n in self.constants for n in node.input)) or node.op_type == "Constant":
                self.constants.update(o for o in node.output if o)
        self.constants -= graph_inputs
        self.constants &= self.public | set(self.values)
        # Constants that are all ones: SPU's compiler folds a product with them away.
        self.ones = {name for name, v in self.values.items()
                     if name in self.constants and np.size(v) and np.issubdtype(np.asarray(v).dtype, np.floating)
                     and np.all(np.asarray(v) == 1)}
        for node in graph.node:
            if node.op_type in _VALUE_PRESERVING and node.input and node.input[0] in self.ones:
                self.ones.update(o for o in node.output if o)
        self.shapes, self.types = _infer_shapes(model)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        if name in self.values:
            return tuple(np.shape(self.values[name]))
        raise Unsupported(f"no static shape for tensor '{name}'")


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _infer_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Static shapes and ONNX element types of the model's tensors."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to what the model declares
        inferred = model
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.elem_type:
            types[vi.name] = t.elem_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        types[init.name] = init.data_type
    # Protocol nodes keep their input's shape (shape inference may not see through their function bodies).
    for node in g.node:
        if node.domain == CIPHERDM_DOMAIN and node.input and node.input[0] in shapes:
            for out in node.output:
                shapes.setdefault(out, shapes[node.input[0]])
    if any(out and out not in shapes for node in g.node for out in node.output):
        # ONNX shape inference gave up somewhere (e.g. a Slice whose bounds come from Shape arithmetic): trace the
        # compiler's own lowering abstractly, which folds such arithmetic.
        try:
            shapes.update(traced_shapes(model))
        except Exception:  # noqa: BLE001 - nodes without a shape are reported as unsupported
            pass
    return shapes, types


# ---------------------------------------------------------------------------------------------------------------
# rules

RULES: dict[tuple[str, str], Callable[[Node], NodeCost]] = {}


def rule(*op_types: str, domain: str = ""):
    def decorate(fn):
        for op in op_types:
            RULES[(domain, op)] = fn
        return fn
    return decorate


def _product(n: Node, a: int, b: int, out_elements: int, what: str, batches: int = 1, calls: int = 1) -> NodeCost:
    c = NodeCost(rule=what)
    sa, sb = n.secret(a), n.secret(b)
    if not (sa or sb):
        return c
    prim = "mul" if sa and sb else "trunc"
    pb, pr = n.prices.primitive(prim)
    rounds = n.prices.batched_dot_rounds(sa and sb, batches) if batches > 1 else pr * calls
    return c.add(prim, pb * out_elements, rounds)


@rule("Conv", "ConvTranspose")
def _conv(n: Node) -> NodeCost:
    groups = int(n.attrs.get("group", 1))
    # Grouped convolutions run as one convolution per group (SPU 0.9.5 refuses feature groups).
    return _product(n, 0, 1, n.out_size(), f"{n.op_type}: one product per output element", calls=groups)


def _matmul_batches(a_shape, b_shape, out_shape) -> int:
    """SPU runs dot_general batch by batch when both operands carry batch dimensions, unless the lowering made
    the batches one product (compiler/ops/linalg.py: a short contraction)."""
    from compiler.ops.linalg import runs_as_one_product
    if len(a_shape) <= 2 or len(b_shape) <= 2 or runs_as_one_product(a_shape, b_shape):
        return 1
    return _size(out_shape[:-2])


@rule("MatMul")
def _matmul(n: Node) -> NodeCost:
    return _product(n, 0, 1, n.out_size(), "MatMul: one product per output element",
                    batches=_matmul_batches(n.shape(0), n.shape(1), n.out_shape()))


@rule("Gemm")
def _gemm(n: Node) -> NodeCost:
    c = _product(n, 0, 1, n.out_size(), "Gemm: one product per output element")
    out = n.out_size()
    if float(n.attrs.get("alpha", 1.0)) != 1.0 and (n.secret(0) or n.secret(1)):
        c.add("trunc", n.prices.primitive("trunc")[0] * out, n.prices.primitive("trunc")[1])
    beta = float(n.attrs.get("beta", 1.0))
    if n.has(2) and beta not in (0.0, 1.0) and n.secret(2):
        size = _size(n.shape(2))
        c.add("trunc", n.prices.primitive("trunc")[0] * size, n.prices.primitive("trunc")[1])
    return c


@rule("Einsum")
def _einsum(n: Node) -> NodeCost:
    if len(n.inputs()) == 1:
        return NodeCost(rule="Einsum of one operand: a sum or a transpose")
    if len(n.inputs()) > 2:
        raise Unsupported("Einsum of more than two operands")
    eq = str(n.attrs.get("equation", "")).replace(" ", "")
    lhs, out = eq.split("->") if "->" in eq else (eq, None)
    a, b = lhs.split(",")
    batch = set(a) & set(b) & set(out or "")
    sizes = dict(zip(a, n.shape(0)))
    sizes.update(zip(b, n.shape(1)))
    batches = _size([sizes[ch] for ch in batch]) if batch else 1
    return _product(n, 0, 1, n.out_size(), "Einsum: one product per output element", batches=batches)


@rule("Mul")
def _mul(n: Node) -> NodeCost:
    if n.ones(0) or n.ones(1):
        return NodeCost(rule="Mul by a constant one: folded away")
    return _product(n, 0, 1, n.out_size(), "Mul: secret x secret mul, secret x public truncation")


@rule("Div")
def _div(n: Node) -> NodeCost:
    c = NodeCost()
    out = n.out_size()
    if not (n.secret(0) or n.secret(1)):
        return c
    if not n.secret(1):
        if n.ones(1):
            c.rule = "Div by a constant one: folded away"
            return c
        if n.constant(1):
            c.rule = "Div by a constant: a product with its reciprocal"
            b, r = n.prices.primitive("trunc")
        else:
            c.rule = "Div by a run-time public value"
            b, r = n.prices.op("div_public")
        return c.add("div_public", b * out, r)
    den = n.shape(1)
    if n.prices.knobs["compiler"].get("enable_optimize_denominator_with_broadcast") and _size(den) < out:
        c.rule = "Div by a broadcast secret: one reciprocal per denominator, one multiply per element"
        rb, rr = n.prices.native("reciprocal")
        mb, mr = n.prices.primitive("mul")
        return c.add("native:reciprocal", rb * _size(den), rr).add("mul", mb * out, mr)
    c.rule = "Div by a secret: SPU's divide per element"
    b, r = n.prices.native("divide")
    return c.add("native:divide", b * out, r)


@rule("Cast", "CastLike")
def _cast(n: Node) -> NodeCost:
    """Free (a comparison's bit is already arithmetic, ints widen locally) except fixed point to integer."""
    src = n.g.types.get(n.node.input[0])
    dst = n.attrs.get("to") if n.op_type == "Cast" else n.g.types.get(n.node.input[1])
    if src in _FLOAT_TYPES and dst in _INT_TYPES:
        return _measured(n, "cast_to_int")
    return NodeCost(rule="Cast: local")


@rule("Reciprocal")
def _reciprocal(n: Node) -> NodeCost:
    return _native(n, "reciprocal")


def _native(n: Node, fn: str) -> NodeCost:
    c = NodeCost(rule=f"SPU's {fn} per element")
    if not n.secret(0):
        return c
    b, r = n.prices.native(fn)
    return c.add(f"native:{fn}", b * n.out_size(), r)


@rule("Exp")
def _exp(n): return _native(n, "exp")


@rule("Tanh")
def _tanh(n): return _native(n, "tanh")


@rule("Sigmoid")
def _sigmoid(n): return _native(n, "sigmoid")


@rule("Erf")
def _erf(n): return _native(n, "erf")


@rule("Softplus")
def _softplus(n): return _native(n, "softplus")


def _measured(n: Node, name: str, elements: int | None = None) -> NodeCost:
    c = NodeCost(rule=f"{name}: measured per element through the compiler's lowering")
    if not any(n.secret(i) for i in n.inputs()):
        return c
    b, r = n.prices.op(name)
    return c.add(name, b * (n.out_size() if elements is None else elements), r)


for _op in MEASURED_UNARY:
    rule(_op)(lambda n, _op=_op: _measured(n, _op))


@rule("Sqrt")
def _sqrt(n: Node) -> NodeCost:
    c = _measured(n, "Sqrt")
    if c.bytes and n.prices.knobs["runtime"].get("enable_lower_accuracy_rsqrt"):
        # sqrt is x * rsqrt(x) in SPU: the knob changes its rsqrt.
        lo = n.prices.native("rsqrt")
        hi = n.prices.table.native("rsqrt", None)
        c.add("rsqrt knob", (lo[0] - hi[0]) * n.out_size(), lo[1] - hi[1])
    return c


@rule("PRelu")
def _prelu(n: Node) -> NodeCost:
    # where(x >= 0, x, slope * x): a comparison, a product with the slope, a select.
    c = NodeCost(rule="PRelu: compare, slope product, select")
    if not n.secret(0):
        return c
    out = n.out_size()
    c.add("compare", n.prices.primitive("compare")[0] * out, n.prices.primitive("compare")[1])
    prim = "mul" if n.secret(1) else "trunc"
    c.add(prim, n.prices.primitive(prim)[0] * out, n.prices.primitive(prim)[1])
    return c.add("select", n.prices.primitive("select")[0] * out, n.prices.primitive("select")[1])


@rule(*COMPARISONS)
def _compare(n: Node) -> NodeCost:
    c = NodeCost(rule="secure comparison per element")
    if not (n.secret(0) or n.secret(1)):
        return c
    b, r = n.prices.primitive("compare")
    return c.add("compare", b * n.out_size(), r)


@rule("Equal")
def _equal(n: Node) -> NodeCost:
    return _measured(n, "Equal")


@rule("And", "Or", "Xor")
def _logic(n: Node) -> NodeCost:
    c = NodeCost(rule="bit logic on secret bits")
    if n.op_type == "Xor" or not (n.secret(0) and n.secret(1)):
        return c
    b, r = n.prices.primitive("bit_and")
    return c.add("bit_and", b * n.out_size(), r)


@rule("Not")
def _not(n: Node) -> NodeCost:
    return NodeCost(rule="Not: local")


@rule("Where")
def _where(n: Node) -> NodeCost:
    c = NodeCost(rule="Where: select per element when the condition is secret")
    if not n.secret(0):
        return c
    prim = "select" if (n.secret(1) or n.secret(2)) else "select_public"
    b, r = n.prices.primitive(prim)
    return c.add(prim, b * n.out_size(), r)


@rule("Max", "Min")
def _max(n: Node) -> NodeCost:
    c = NodeCost(rule="pairwise compare + select")
    ins = n.inputs()
    if not any(n.secret(i) for i in ins):
        return c
    out = n.out_size()
    for _ in range(len(ins) - 1):
        for prim in ("compare", "select"):
            b, r = n.prices.primitive(prim)
            c.add(prim, b * out, r)
    return c


@rule("Clip")
def _clip(n: Node) -> NodeCost:
    c = NodeCost(rule="Clip: compare + select per bound")
    if not n.secret(0):
        return c
    bounds = [i for i in (1, 2) if n.has(i)] or [k for k in ("min", "max") if k in n.attrs]
    out = n.out_size()
    for _ in bounds:
        for prim in ("compare", "select"):
            b, r = n.prices.primitive(prim)
            c.add(prim, b * out, r)
    return c


@rule("Pow")
def _pow(n: Node) -> NodeCost:
    c = NodeCost()
    if not n.secret(0) and not n.secret(1):
        return c
    exponent = n.value(1)
    out = n.out_size()
    values = np.unique(np.asarray(exponent)) if exponent is not None else np.array([])
    if n.secret(0) and values.size == 1 and np.isfinite(values[0]):
        e = float(values[0])
        if e == int(e) and abs(e) <= 16:
            k = abs(int(e))
            muls = (k.bit_length() - 1 + bin(k).count("1") - 1) if k else 0
            c.rule = f"Pow {e:g}: {muls} products" + (" and a reciprocal" if e < 0 else "")
            mb, mr = n.prices.primitive("mul")
            if muls:
                c.add("mul", mb * muls * out, mr * muls)
            if e < 0:
                rb, rr = n.prices.native("reciprocal")
                c.add("native:reciprocal", rb * out, rr)
            return c
        if e == 0.5:
            c.rule = "Pow 0.5: sqrt"
            b, r = n.prices.op("Sqrt")
            return c.add("Sqrt", b * out, r)
        if e == -0.5:
            c.rule = "Pow -0.5: rsqrt"
            b, r = n.prices.native("rsqrt")
            return c.add("native:rsqrt", b * out, r)
    # x^y = exp(y log x)
    c.rule = "Pow: exp(y * log(x))"
    lb, lr = n.prices.op("Log")
    eb, er = n.prices.native("exp")
    prim = "mul" if n.secret(1) else "trunc"
    pb, pr = n.prices.primitive(prim)
    return c.add("Log", lb * out, lr).add(prim, pb * out, pr).add("native:exp", eb * out, er)


def _axes(n: Node, rank: int) -> list[int]:
    axes = n.attrs.get("axes")
    if axes is None and n.has(1):
        value = n.value(1)
        axes = None if value is None else [int(v) for v in np.ravel(value)]
    if not axes:
        return [] if int(n.attrs.get("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


@rule("ReduceSum")
def _reduce_sum(n: Node) -> NodeCost:
    c = NodeCost(rule="ReduceSum: a product with a public column of ones, one truncation per output")
    if not n.secret(0) or not _axes(n, len(n.shape(0))) or n.out_size() == _size(n.shape(0)):
        return c
    b, r = n.prices.primitive("trunc")
    return c.add("trunc", b * n.out_size(), r)


@rule("ReduceMean")
def _reduce_mean(n: Node) -> NodeCost:
    c = NodeCost(rule="ReduceMean: a sum times a public 1/n, one truncation per output")
    if not n.secret(0) or not _axes(n, len(n.shape(0))):
        return c
    b, r = n.prices.primitive("trunc")
    return c.add("trunc", b * n.out_size(), r)


@rule("ReduceMax", "ReduceMin", "ArgMax", "ArgMin")
def _reduce_max(n: Node) -> NodeCost:
    c = NodeCost(rule="max tree: compare + select per pair")
    if not n.secret(0):
        return c
    shape = n.shape(0)
    if n.op_type.startswith("Arg"):
        axes = [int(n.attrs.get("axis", 0)) % len(shape)]
    else:
        axes = _axes(n, len(shape))
    count = _size([shape[a] for a in axes])
    b, r = n.prices.reduce_max(count)
    return c.add("reduce_max", b * n.out_size(), r)


@rule("ReduceSumSquare", "ReduceL2", "ReduceProd", "ReduceL1", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_other(n: Node) -> NodeCost:
    c = NodeCost(rule=f"{n.op_type}")
    if not n.secret(0):
        return c
    size, out = _size(n.shape(0)), n.out_size()
    if n.op_type in ("ReduceSumSquare", "ReduceL2"):
        c.add("mul", n.prices.primitive("mul")[0] * size, n.prices.primitive("mul")[1])
        if n.op_type == "ReduceL2":
            b, r = n.prices.op("Sqrt")
            c.add("Sqrt", b * out, r)
    elif n.op_type == "ReduceProd":
        levels = max(math.ceil(math.log2(max(size // max(out, 1), 1))), 0)
        c.add("mul", n.prices.primitive("mul")[0] * (size - out), n.prices.primitive("mul")[1] * levels)
    elif n.op_type == "ReduceL1":
        b, r = n.prices.op("Abs")
        c.add("Abs", b * size, r)
    elif n.op_type == "ReduceLogSum":
        b, r = n.prices.op("Log")
        c.add("Log", b * out, r)
    else:
        mb, mr = n.prices.reduce_max(max(size // max(out, 1), 1))
        eb, er = n.prices.native("exp")
        lb, lr = n.prices.op("Log")
        c.add("reduce_max", mb * out, mr).add("native:exp", eb * size, er).add("Log", lb * out, lr)
    return c


@rule("Mean")
def _mean(n: Node) -> NodeCost:
    c = NodeCost(rule="Mean: a sum times a public 1/k")
    if len(n.inputs()) < 2 or not any(n.secret(i) for i in n.inputs()):
        return c
    b, r = n.prices.primitive("trunc")
    return c.add("trunc", b * n.out_size(), r)


@rule("GlobalAveragePool", "AveragePool")
def _avg_pool(n: Node) -> NodeCost:
    c = NodeCost(rule="average pool: window sums times a public 1/k")
    if not n.secret(0):
        return c
    b, r = n.prices.primitive("trunc")
    return c.add("trunc", b * n.out_size(), r)


@rule("MaxPool", "GlobalMaxPool")
def _max_pool(n: Node) -> NodeCost:
    c = NodeCost(rule="max pool: compare + select tree per window")
    if not n.secret(0):
        return c
    shape = n.shape(0)
    window = _size(n.attrs.get("kernel_shape", shape[2:])) if n.op_type == "MaxPool" else _size(shape[2:])
    b, r = n.prices.reduce_max(window)
    return c.add("reduce_max", b * n.out_size(), r)


@rule("Resize")
def _resize(n: Node) -> NodeCost:
    mode = n.attrs.get("mode", "nearest")
    c = NodeCost(rule=f"Resize {mode}: " + ("a gather, free" if mode == "nearest" else
                                           "one public interpolation matrix per resized axis (truncations)"))
    if mode == "nearest" or not n.secret(0):
        return c
    stage = list(n.shape(0))
    out = n.out_shape()
    b, r = n.prices.primitive("trunc")
    for axis, size in enumerate(out):
        if size != stage[axis]:
            stage[axis] = size
            c.add("trunc", b * _size(stage), r)
    return c


def _protocol_cost(n: Node, op: str, proto=None, shape=None, secret: bool | None = None, **kw) -> NodeCost:
    """Cost of a protocol (default: the op's direct variant, the compiler's own expression) on this node.

    Like :meth:`Protocol.cost`, but a norm's scale and bias count as public when they are (a constant scale is a
    truncated product, not a secret one; a constant of ones is folded away by SPU's compiler)."""
    import runtime.protocols as protocols
    from runtime.protocols.backends import Sym
    if proto is None:
        proto = protocols.direct(op, **({"approximate": kw["approximate"]} if op == "gelu" else {}))
    kw.pop("approximate", None)
    c = NodeCost(rule=f"{op}: " + ("the compiler's expression" if proto.family == "direct" else "protocol")
                 + f" ({proto.name})")
    if not (n.secret(0) if secret is None else secret):
        return c
    shape = tuple(n.shape(0) if shape is None else shape)
    bk = n.prices.backend(n.prices.spu_knobs.merged(proto.knobs))
    inputs = [Sym(shape)]
    if op in ("group_norm", "layer_norm"):
        if op == "group_norm":
            inner = (shape[1],)
            kw.setdefault("num_groups", 1)
        else:
            kw["axis"] = kw.get("axis", -1) % len(shape)
            inner = shape[kw["axis"]:]
        kw.setdefault("epsilon", 1e-5)
        one = type(bk).one
        for i in (1, 2):
            if not (n.has(i) or op == "group_norm"):
                inputs.append(None)
            else:
                inputs.append(one(inner) if n.ones(i) else Sym(inner, public=not n.secret(i)))
    elif op == "softmax":
        kw["axis"] = kw.get("axis", -1)
    proto.evaluate(bk, *inputs, **kw)
    t = bk.tally
    c.bytes, c.rounds, c.parts = float(t.bytes), float(t.rounds), dict(t.breakdown)
    return c


@rule("Softmax")
def _softmax(n: Node) -> NodeCost:
    shape = n.shape(0)
    rank = len(shape)
    if n.node.domain in ("", "ai.onnx") and _opset(n) < 13:
        axis = int(n.attrs.get("axis", 1)) % rank
        shape2 = (_size(shape[:axis]), _size(shape[axis:]))
        c = _protocol_cost(n, "softmax", shape=shape2, axis=1)
        rows = shape2[0]
    else:
        axis = int(n.attrs.get("axis", -1)) % rank
        c = _protocol_cost(n, "softmax", axis=axis)
        rows = _size(shape) // max(shape[axis], 1)
    return _softmax_initial(n, c, rows)


def _softmax_initial(n: Node, c: NodeCost, rows: int) -> NodeCost:
    """jax.nn.softmax takes max(-inf, row max): one more comparison and select per row."""
    if c.bytes:
        for prim in ("compare", "select"):
            b, r = n.prices.primitive(prim)
            c.add(prim, b * rows, r)
    return c


def _opset(n: Node) -> int:
    return n.g.opset


@rule("GroupNormalization")
def _group_norm(n: Node) -> NodeCost:
    return _protocol_cost(n, "group_norm", num_groups=int(n.attrs["num_groups"]))


@rule("InstanceNormalization")
def _instance_norm(n: Node) -> NodeCost:
    return _protocol_cost(n, "group_norm", num_groups=int(n.shape(0)[1]))


@rule("LayerNormalization")
def _layer_norm(n: Node) -> NodeCost:
    return _protocol_cost(n, "layer_norm", axis=int(n.attrs.get("axis", -1)) % len(n.shape(0)))


@rule("Mish")
def _mish(n: Node) -> NodeCost:
    return _protocol_cost(n, "mish")


@rule("Gelu")
def _gelu(n: Node) -> NodeCost:
    return _protocol_cost(n, "gelu", approximate=str(n.attrs.get("approximate", "none")))


@rule("RMSNormalization")
def _rms_norm(n: Node) -> NodeCost:
    c = NodeCost(rule="RMSNorm: square, mean, rsqrt per row, two products per element")
    if not n.secret(0):
        return c
    shape = n.shape(0)
    axis = int(n.attrs.get("axis", -1)) % len(shape)
    size, rows = _size(shape), _size(shape[:axis])
    mb, mr = n.prices.primitive("mul")
    tb, tr = n.prices.primitive("trunc")
    rb, rr = n.prices.native("rsqrt")
    c.add("mul", mb * size, mr).add("trunc", tb * rows, tr).add("native:rsqrt", rb * rows, rr)
    c.add("mul", mb * size, mr)
    prim = "mul" if n.secret(1) else "trunc"
    return c.add(prim, n.prices.primitive(prim)[0] * size, n.prices.primitive(prim)[1])


@rule("BatchNormalization")
def _batch_norm(n: Node) -> NodeCost:
    # factor = scale * rsqrt(var + eps) and shift = bias - mean * factor per channel, then x * factor + shift.
    c = NodeCost(rule="BatchNorm (inference): per-channel factor, one product per element")
    channels, size = _size(n.shape(1)), n.out_size()
    if n.secret(4):
        c.add("native:rsqrt", n.prices.native("rsqrt")[0] * channels, n.prices.native("rsqrt")[1])
    if n.secret(1) or n.secret(4):
        prim = "mul" if (n.secret(1) and n.secret(4)) else "trunc"
        c.add(prim, n.prices.primitive(prim)[0] * channels, n.prices.primitive(prim)[1])
        prim = "mul" if n.secret(3) else "trunc"
        c.add(prim, n.prices.primitive(prim)[0] * channels, n.prices.primitive(prim)[1])
    factor_secret = n.secret(1) or n.secret(4)
    if n.secret(0) or factor_secret:
        prim = "mul" if (n.secret(0) and factor_secret) else "trunc"
        c.add(prim, n.prices.primitive(prim)[0] * size, n.prices.primitive(prim)[1])
    return c


@rule("Attention")
def _attention(n: Node) -> NodeCost:
    """Opset-23 Attention as the compiler lowers it: Q * scale, Q K^T, softmax, P V (per head)."""
    c = NodeCost(rule="Attention: Q*scale, Q K^T, softmax, P V")
    q, k, v = n.shape(0), n.shape(1), n.shape(2)
    if len(q) == 3:
        hq, hkv = int(n.attrs["q_num_heads"]), int(n.attrs["kv_num_heads"])
        q = (q[0], hq, q[1], q[2] // hq)
        k = (k[0], hkv, k[1], k[2] // hkv)
        v = (v[0], hkv, v[1], v[2] // hkv)
    b, h, lq, d = q
    lk = k[2] + (n.shape(4)[2] if n.has(4) else 0)
    dv = v[3]
    if n.secret(0):
        tb, tr = n.prices.primitive("trunc")
        c.add("trunc", tb * _size(q), tr)
    batches = b * h
    scores = (b, h, lq, lk)
    secret_qk = n.secret(0) or n.secret(1) or n.secret(4)
    if secret_qk:
        prim = "mul" if (n.secret(0) and (n.secret(1) or n.secret(4))) else "trunc"
        c.add(prim, n.prices.primitive(prim)[0] * _size(scores), n.prices.batched_dot_rounds(prim == "mul", batches))
    if float(n.attrs.get("softcap", 0.0) or 0.0) > 0 and secret_qk:
        tb, tr = n.prices.primitive("trunc")
        nb, nr = n.prices.native("tanh")
        c.add("trunc", 2 * tb * _size(scores), 2 * tr).add("native:tanh", nb * _size(scores), nr)
    if secret_qk or (n.has(3) and n.secret(3)):
        sm = _protocol_cost(n, "softmax", shape=scores, axis=3, secret=True)
        c.add("softmax", sm.bytes, sm.rounds)
        masked = int(n.attrs.get("is_causal", 0)) or (n.has(3) and _is_bool_input(n, 3))
        if not masked:
            # Unmasked, the compiler calls jax.nn.softmax; masked, it selects with the public mask (local).
            _softmax_initial(n, c, _size(scores) // lk)
    out = (b, h, lq, dv)
    secret_pv = secret_qk or n.secret(2) or n.secret(5)
    if secret_pv:
        prim = "mul" if (secret_qk and (n.secret(2) or n.secret(5))) else "trunc"
        c.add(prim, n.prices.primitive(prim)[0] * _size(out), n.prices.batched_dot_rounds(prim == "mul", batches))
    return c


def _is_bool_input(n: Node, i: int) -> bool:
    return n.g.types.get(n.node.input[i]) == onnx.TensorProto.BOOL


# cipherdm:: protocol nodes ------------------------------------------------------------------------------------


def _cipherdm(n: Node) -> NodeCost:
    import runtime.protocols as protocols
    from runtime.protocols.base import OP_OF_TYPE
    op = OP_OF_TYPE.get(n.op_type)
    if op is None:
        raise Unsupported(f"unknown cipherdm op type '{n.op_type}'")
    try:
        proto = protocols.from_onnx_attributes(n.attrs, op_type=n.op_type)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    shape = n.shape(0)
    kw = {}
    if op == "softmax":
        kw["axis"] = int(n.attrs.get("axis", -1)) % len(shape)
    elif op == "group_norm":
        kw["num_groups"] = int(n.attrs["num_groups"])
        kw["epsilon"] = float(n.attrs.get("epsilon", 1e-5))
    elif op == "layer_norm":
        kw["axis"] = int(n.attrs.get("axis", -1)) % len(shape)
        kw["epsilon"] = float(n.attrs.get("epsilon", 1e-5))
    c = _protocol_cost(n, op, proto=proto, **kw)
    c.rule = f"cipherdm::{n.op_type} protocol {proto.name}"
    return c


# ---------------------------------------------------------------------------------------------------------------
# the estimate


def program_knobs(model: onnx.ModelProto) -> dict:
    """The SPU knobs a rewritten model runs with: the union of its protocol nodes' ``spu_knobs``."""
    from runtime.protocols import SpuKnobs
    knobs = SpuKnobs()
    for node in model.graph.node:
        if node.domain == CIPHERDM_DOMAIN:
            raw = attribute_dict(node).get("spu_knobs")
            if raw:
                knobs = knobs.merged(SpuKnobs.from_json(json.loads(raw)))
    return knobs.to_json()


def estimate_model(model: onnx.ModelProto, public_inputs: set[str] | frozenset[str] = frozenset(),
                   knobs: dict | None = None, effective_rounds: bool = True) -> dict:
    """Estimated 3-party bytes and rounds of running ``model`` under ABY3/FM64 (see the module docs).

    ``public_inputs``: graph inputs every party knows (the timestep); ``knobs``: {"runtime": {...}, "compiler":
    {...}} the whole program runs with (default: the union of the protocol nodes' ``spu_knobs``).
    ``effective_rounds`` False: each op's rounds as if it ran alone (what the report's per-node entries compare).
    """
    if knobs is None:
        knobs = program_knobs(model)
    prices = Prices(knobs, effective_rounds)
    info = GraphInfo(model, set(public_inputs))
    info.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    nodes, unsupported = [], []
    depth: dict[str, float] = {}
    for node in model.graph.node:
        n = Node(node, info, prices)
        secret = any(n.secret(i) for i in n.inputs())
        try:
            if not secret:
                cost = NodeCost(rule="public: computed in the clear")
            elif node.domain == CIPHERDM_DOMAIN:
                cost = _cipherdm(n)
            elif node.op_type in INDEXING and n.secret(INDEXING[node.op_type]):
                raise Unsupported(f"{node.op_type} with secret indices")
            elif node.op_type in FREE:
                cost = NodeCost(rule="local: no communication")
            else:
                fn = RULES.get(("", node.op_type))
                if fn is None:
                    raise Unsupported(f"no cost rule for {node.domain + '::' if node.domain else ''}{node.op_type}")
                cost = fn(n)
        except Unsupported as exc:
            unsupported.append({"name": node.name, "op_type": node.op_type, "reason": str(exc)})
            cost = NodeCost(rule=f"unsupported: {exc}")
        start = max((depth.get(i, 0.0) for i in node.input if i), default=0.0)
        for out in node.output:
            depth[out] = start + cost.rounds
        nodes.append({"name": node.name, "op_type": node.op_type, "domain": node.domain,
                      "bytes": float(cost.bytes), "rounds": float(cost.rounds), "rule": cost.rule,
                      "secret": secret})
    total_bytes = sum(n["bytes"] for n in nodes)
    outputs = [o.name for o in model.graph.output]
    return {
        "setting": {"protocol": "ABY3", "field": "FM64", "knobs": prices.knobs},
        "nodes": nodes,
        "unsupported": unsupported,
        "totals": {
            "bytes": total_bytes,
            "mib": total_bytes / 2 ** 20,
            "rounds": sum(n["rounds"] for n in nodes),
            "critical_path_rounds": max((depth.get(o, 0.0) for o in outputs), default=0.0),
            "nodes": len(nodes),
            "secret_nodes": sum(1 for n in nodes if n["secret"]),
        },
    }


def by_op_type(estimate: dict) -> dict[str, dict]:
    """Bytes and rounds summed per op type, most bytes first."""
    out: dict[str, dict] = {}
    for n in estimate["nodes"]:
        key = f"{n['domain']}::{n['op_type']}" if n["domain"] else n["op_type"]
        e = out.setdefault(key, {"count": 0, "bytes": 0.0, "rounds": 0.0})
        e["count"] += 1
        e["bytes"] += n["bytes"]
        e["rounds"] += n["rounds"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))
