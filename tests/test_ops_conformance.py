"""Per-op conformance of the JAX lowerings against onnxruntime.

Each case is a one-node model built with onnx.helper. It is prepared with compiler.load_model (opset upgrade,
checker, shape inference), lowered with compiler.lower, evaluated in plaintext (jit) and compared with
onnxruntime on the very same model file. Every lowered program is also checked for `chlo.` ops, which SPU's
StableHLO parser refuses.

Float tensors are exercised in three roles: graph inputs (traced), float initializers (the owner's weights, traced
arguments of the lowered function) and, for integer data, initializers folded at compile time (static numpy).
A few cases lower the raw model without load_model, so the pre-opset-13 lowerings (attribute axes, coerced
Softmax) run as they are instead of after onnx's version converter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import compiler

# float32: a few ulps of accumulated rounding. The absolute part scales with the output's magnitude: a sum of many
# products (conv, matmul) that nearly cancels keeps the absolute rounding error of its largest terms.
RTOL, ATOL = 1e-5, 1e-6
_RNG = np.random.default_rng(1234)


def f32(*shape, lo=-2.0, hi=2.0):
    return _RNG.uniform(lo, hi, shape).astype(np.float32)


def i64(*values):
    return np.array(values, np.int64)


@dataclass
class Case:
    id: str
    op: str
    data: dict                      # name -> array: graph inputs (or weights in the "weights" mode)
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)   # name -> array: always initializers (axes, pads, shapes, ...)
    order: list | None = None       # input names in node order ("" for an omitted optional input)
    opset: int = 18
    outputs: int = 1
    raw: bool = False               # lower without load_model (keeps pre-13 opsets as they are)
    rtol: float = RTOL
    atol: float = ATOL

    def model(self, as_weights: set[str] = frozenset()) -> onnx.ModelProto:
        names = self.order if self.order is not None else list(self.data) + list(self.params)
        outputs = [f"y{i}" for i in range(self.outputs)]
        node = helper.make_node(self.op, names, outputs, **self.attrs)
        initializers = [numpy_helper.from_array(v, k) for k, v in self.params.items()]
        initializers += [numpy_helper.from_array(self.data[k], k) for k in as_weights]
        inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for k, v in self.data.items() if k not in as_weights]
        graph = helper.make_graph([node], self.id, inputs, [onnx.ValueInfoProto(name=o) for o in outputs],
                                  initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        for out in model.graph.output:
            # Some function ops (GroupNormalization, Attention's extra outputs) get no inferred type.
            if not out.type.tensor_type.elem_type:
                out.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(next(iter(self.data.values())).dtype)
        return model


def run_case(case: Case, as_weights: set[str] = frozenset()):
    model = case.model(as_weights)
    feeds = {k: v for k, v in case.data.items() if k not in as_weights}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    for out, value in zip(model.graph.output, want):
        if not out.type.tensor_type.HasField("shape"):
            out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, value.shape))
    prepared = model if case.raw else compiler.load_model(model)
    lowered = compiler.lower(prepared)
    weights = {s.name for s in lowered.weight_specs}
    assert {k for k in as_weights if case.data[k].dtype.kind == "f"} <= weights
    assert weights <= {k for k, v in {**case.params, **case.data}.items() if v.dtype.kind == "f"}
    text = jax.jit(lowered.fn).lower(*lowered.arg_specs()).as_text()
    assert "chlo." not in text, "the lowering emits chlo ops, which SPU cannot parse"
    got = lowered(feeds)
    for spec, expected in zip(lowered.outputs, want):
        actual = got[spec.name]
        assert actual.shape == expected.shape, f"{spec.name}: shape {actual.shape} != {expected.shape}"
        if expected.dtype.kind in "fc":
            finite = expected[np.isfinite(expected)]
            scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
            np.testing.assert_allclose(actual, expected, rtol=case.rtol, atol=case.atol * scale, err_msg=spec.name)
        else:
            # jax computes int64 as int32 and onnxruntime in int64: compare values.
            np.testing.assert_array_equal(actual.astype(expected.dtype), expected, err_msg=spec.name)


def unary(op, x=None, opset=18, **attrs):
    x = f32(2, 3, 5) if x is None else x
    return Case(f"{op}{'_' + '_'.join(f'{k}{v}' for k, v in attrs.items()) if attrs else ''}", op, {"x": x},
                attrs, opset=opset)


def binary(op, a, b, tag=""):
    return Case(f"{op}{tag}", op, {"a": a, "b": b})


_HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51, 3.0], np.float32)
_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, -3.0], np.float32)
_INTS_A = np.array([[7, -7, 9, -9], [5, -5, 0, 13]], np.int64)
_INTS_B = np.array([2, 2, -4, -4], np.int64)

ELEMENTWISE = [
    binary("Add", f32(2, 3, 4), f32(4), "_broadcast_last"),
    binary("Add", f32(2, 1, 4), f32(3, 1), "_broadcast_both"),
    binary("Sub", f32(3, 4), f32(1), "_scalar_like"),
    binary("Mul", f32(2, 3, 4), f32(2, 1, 1)),
    binary("Div", f32(2, 3, 4), f32(3, 4, lo=0.5, hi=2.0)),
    binary("Div", _INTS_A, _INTS_B, "_int_truncates"),
    binary("Pow", f32(2, 3, lo=0.1, hi=2.0), f32(2, 3), "_tensor_exponent"),
    Case("Pow_square", "Pow", {"x": f32(2, 3, 4)}, params={"e": np.array(2.0, np.float32)}),
    Case("Pow_cube_negative_base", "Pow", {"x": f32(2, 3, 4)}, params={"e": np.array([3.0], np.float32)}),
    Case("Pow_sqrt", "Pow", {"x": f32(2, 3, lo=0.1)}, params={"e": np.array(0.5, np.float32)}),
    Case("Pow_rsqrt", "Pow", {"x": f32(2, 3, lo=0.1)}, params={"e": np.array(-0.5, np.float32)}),
    Case("Pow_inverse_square", "Pow", {"x": f32(2, 3, lo=0.5)}, params={"e": np.array(-2.0, np.float32)}),
    Case("Pow_fractional", "Pow", {"x": f32(2, 3, lo=0.1)}, params={"e": np.array(1.7, np.float32)}),
    Case("Mod_int_python", "Mod", {"a": _INTS_A, "b": _INTS_B}),
    Case("Mod_float_fmod", "Mod", {"a": f32(3, 4, lo=-5, hi=5), "b": f32(4, lo=0.5, hi=2)}, {"fmod": 1}),
    binary("Equal", _INTS_A, _INTS_B),
    binary("Less", f32(3, 4), f32(4)),
    binary("LessOrEqual", _INTS_A, _INTS_B),
    binary("Greater", f32(3, 4), f32(3, 1)),
    binary("GreaterOrEqual", _INTS_A, _INTS_B),
    binary("And", f32(3, 4) > 0, f32(4) > 0),
    binary("Or", f32(3, 4) > 0, f32(4) > 0),
    binary("Xor", f32(3, 4) > 0, f32(4) > 0),
    Case("Max_variadic", "Max", {"a": f32(2, 3, 4), "b": f32(4), "c": f32(3, 1)}),
    Case("Min_variadic", "Min", {"a": f32(2, 3, 4), "b": f32(4), "c": f32(3, 1)}),
    Case("Sum_variadic", "Sum", {"a": f32(2, 3, 4), "b": f32(4), "c": f32(3, 1)}),
    Case("Mean_variadic", "Mean", {"a": f32(2, 3, 4), "b": f32(4), "c": f32(3, 1)}),
    Case("Max_single", "Max", {"a": f32(3, 4)}),
    Case("Where_broadcast", "Where", {"c": f32(3, 1) > 0, "a": f32(2, 3, 4), "b": f32(4)}),
    unary("Neg"), unary("Abs"), unary("Exp"), unary("Log", f32(2, 3, 5, lo=0.01, hi=5)),
    unary("Sqrt", f32(2, 3, 5, lo=0.0, hi=5)), unary("Reciprocal", f32(2, 3, 5, lo=0.2, hi=3)),
    unary("Sin", f32(4, 5, lo=-10, hi=10)), unary("Cos", f32(4, 5, lo=-10, hi=10)), unary("Tanh", f32(4, 5, lo=-6, hi=6)),
    unary("Erf", np.linspace(-6, 6, 241, dtype=np.float32)),
    unary("Floor", _HALVES), unary("Ceil", _HALVES), unary("Round", _HALVES), unary("Sign", _HALVES),
    unary("Not", f32(3, 4) > 0), unary("Identity"),
    unary("IsNaN", _SPECIAL),
    unary("IsInf", _SPECIAL), unary("IsInf", _SPECIAL, detect_negative=0), unary("IsInf", _SPECIAL, detect_positive=0),
    unary("Sigmoid", f32(4, 5, lo=-12, hi=12)), unary("Relu"), unary("LeakyRelu"), unary("LeakyRelu", alpha=0.2),
    unary("Softplus", np.concatenate([f32(20, lo=-5, hi=5), np.array([-40, -20, 20, 40], np.float32)])),
    unary("Softsign"), unary("Mish", f32(4, 5, lo=-8, hi=8)),
    unary("Gelu", f32(4, 25, lo=-6, hi=6), opset=20),
    unary("Gelu", f32(4, 25, lo=-6, hi=6), opset=20, approximate="tanh"),
    unary("Elu"), unary("Elu", alpha=0.5), unary("Selu"), unary("Celu", alpha=0.7),
    unary("HardSigmoid"), unary("HardSigmoid", alpha=0.3, beta=0.4), unary("HardSwish", f32(4, 5, lo=-5, hi=5)),
    unary("ThresholdedRelu", alpha=0.5),
    Case("PRelu_broadcast", "PRelu", {"x": f32(2, 3, 4), "slope": f32(3, 1)}),
    Case("Clip_both", "Clip", {"x": f32(3, 4)}, params={"lo": np.array(-0.5, np.float32),
                                                        "hi": np.array(0.7, np.float32)}),
    Case("Clip_min_only", "Clip", {"x": f32(3, 4)}, params={"lo": np.array(-0.5, np.float32)}),
    Case("Clip_max_only", "Clip", {"x": f32(3, 4)}, params={"hi": np.array(0.5, np.float32)},
         order=["x", "", "hi"]),
    Case("Clip_none", "Clip", {"x": f32(3, 4)}),
    Case("Clip_min_above_max", "Clip", {"x": f32(3, 4)}, params={"lo": np.array(1.0, np.float32),
                                                                 "hi": np.array(-1.0, np.float32)}),
    Case("Clip_int", "Clip", {"x": _INTS_A}, params={"lo": np.array(-5, np.int64), "hi": np.array(6, np.int64)}),
    Case("Clip_traced_bounds", "Clip", {"x": f32(3, 4), "lo": np.array(-0.3, np.float32),
                                        "hi": np.array(0.3, np.float32)}),
    Case("Cast_float_to_int32", "Cast", {"x": f32(3, 4, lo=-9, hi=9)}, {"to": onnx.TensorProto.INT32}),
    Case("Cast_float_to_int64", "Cast", {"x": f32(3, 4, lo=-9, hi=9)}, {"to": onnx.TensorProto.INT64}),
    Case("Cast_int_to_float", "Cast", {"x": _INTS_A}, {"to": onnx.TensorProto.FLOAT}),
    Case("Cast_float_to_bool", "Cast", {"x": np.array([0.0, -0.0, 1.5, -2.0], np.float32)},
         {"to": onnx.TensorProto.BOOL}),
    Case("Cast_bool_to_float", "Cast", {"x": f32(3, 4) > 0}, {"to": onnx.TensorProto.FLOAT}),
    Case("Cast_float_to_float16", "Cast", {"x": f32(3, 4)}, {"to": onnx.TensorProto.FLOAT16}),
    Case("CastLike", "CastLike", {"x": f32(3, 4, lo=-9, hi=9), "like": i64(1, 2)}),
    Case("Dropout_inference", "Dropout", {"x": f32(3, 4)}, outputs=2, opset=13),
]


def _sm(op, axis, opset, shape=(2, 3, 4), raw=False):
    attrs = {} if axis is None else {"axis": axis}
    return Case(f"{op}_axis{axis}_opset{opset}{'_raw' if raw else ''}", op, {"x": f32(*shape, lo=-4, hi=4)}, attrs,
                opset=opset, raw=raw)


SOFTMAX = [
    _sm(op, axis, opset, raw=raw)
    for op in ("Softmax", "LogSoftmax", "Hardmax")
    for axis, opset, raw in [(None, 18, False), (-1, 18, False), (0, 18, False), (1, 13, False), (-2, 18, False),
                             (None, 11, False), (1, 11, False), (1, 11, True), (None, 12, True), (0, 11, True)]
    # onnx's version converter rewrites Softmax/LogSoftmax 12->13 (coerce to 2-D) but not Hardmax, so an opset-11
    # Hardmax upgraded by load_model changes meaning; the raw cases check cipherdm's own pre-13 Hardmax.
    if not (op == "Hardmax" and opset < 13 and not raw)
]


def _reduce_cases():
    cases = []
    x = f32(2, 3, 4, lo=0.1, hi=2.0)
    ops = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
    for op in ops:
        since = 13 if op == "ReduceSum" else 18
        cases.append(Case(f"{op}_axes_input", op, {"x": x}, params={"axes": i64(1)}, opset=since))
        cases.append(Case(f"{op}_neg_axes_nokeep", op, {"x": x}, {"keepdims": 0}, params={"axes": i64(-1, 0)},
                          opset=since))
        cases.append(Case(f"{op}_all", op, {"x": x}, opset=since))
        cases.append(Case(f"{op}_noop_empty_axes", op, {"x": x}, {"noop_with_empty_axes": 1}, opset=since))
        cases.append(Case(f"{op}_axes_attribute_opset{since - 1}", op, {"x": x}, {"axes": [0, 2]}, opset=since - 1))
        cases.append(Case(f"{op}_axes_attribute_raw_opset11", op, {"x": x}, {"axes": [-2], "keepdims": 0},
                          opset=11, raw=True))
    cases.append(Case("ReduceMax_int", "ReduceMax", {"x": _INTS_A}, params={"axes": i64(1)}))
    cases.append(Case("ReduceSum_int", "ReduceSum", {"x": _INTS_A}, {"keepdims": 0}, params={"axes": i64(0)}))
    cases.append(Case("ReduceMean_spatial", "ReduceMean", {"x": f32(2, 4, 3, 3)}, params={"axes": i64(2, 3)}))
    return cases


REDUCE = _reduce_cases()


@pytest.mark.parametrize("case", ELEMENTWISE + SOFTMAX + REDUCE, ids=lambda c: c.id)
def test_elementwise_softmax_reduce(case):
    run_case(case)


# Weights: the second operand as a float initializer (a traced argument of the lowered function). Pow is left
# out: its exponent is graph structure and stays a compile-time constant even in an initializer.
@pytest.mark.parametrize("case", [c for c in ELEMENTWISE if len(c.data) >= 2 and c.op != "Pow" and
                                  all(v.dtype == np.float32 for v in c.data.values())], ids=lambda c: c.id)
def test_elementwise_with_weights(case):
    run_case(case, as_weights=set(list(case.data)[1:]))


_I64_MAX, _I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
_X = f32(2, 3, 4, 5)

SHAPE = [
    Case("Reshape_minus_one", "Reshape", {"x": _X}, params={"s": i64(2, -1, 5)}),
    Case("Reshape_zero_copies", "Reshape", {"x": _X}, params={"s": i64(0, 0, -1)}),
    Case("Reshape_allowzero", "Reshape", {"x": _X}, {"allowzero": 1}, params={"s": i64(6, 20)}),
    Case("Flatten_default", "Flatten", {"x": _X}),
    Case("Flatten_axis0", "Flatten", {"x": _X}, {"axis": 0}),
    Case("Flatten_axis_neg", "Flatten", {"x": _X}, {"axis": -1}),
    Case("Squeeze_axes", "Squeeze", {"x": f32(1, 3, 1, 2)}, params={"a": i64(0, -2)}),
    Case("Squeeze_all", "Squeeze", {"x": f32(1, 3, 1, 2)}),
    Case("Squeeze_attribute_raw_opset11", "Squeeze", {"x": f32(1, 3, 1, 2)}, {"axes": [2]}, opset=11, raw=True),
    Case("Squeeze_attribute_opset11", "Squeeze", {"x": f32(1, 3, 1, 2)}, {"axes": [0]}, opset=11),
    Case("Unsqueeze_axes", "Unsqueeze", {"x": f32(3, 2)}, params={"a": i64(0, -1)}),
    Case("Unsqueeze_middle", "Unsqueeze", {"x": f32(3, 2)}, params={"a": i64(1, 3)}),
    Case("Unsqueeze_attribute_raw_opset11", "Unsqueeze", {"x": f32(3, 2)}, {"axes": [0, 3]}, opset=11, raw=True),
    Case("Unsqueeze_attribute_opset12", "Unsqueeze", {"x": f32(3, 2)}, {"axes": [-1]}, opset=12),
    Case("Transpose_perm", "Transpose", {"x": _X}, {"perm": [0, 2, 3, 1]}),
    Case("Transpose_default", "Transpose", {"x": _X}),
    Case("Concat_axis_neg", "Concat", {"a": f32(2, 3), "b": f32(2, 1), "c": f32(2, 2)}, {"axis": -1}),
    Case("Concat_axis0", "Concat", {"a": f32(2, 3), "b": f32(1, 3)}, {"axis": 0}),
    Case("Split_sizes_input", "Split", {"x": f32(2, 7)}, {"axis": 1}, params={"s": i64(2, 5)}, outputs=2),
    Case("Split_equal_default_opset13", "Split", {"x": f32(6, 2)}, outputs=3, opset=13),
    Case("Split_num_outputs_uneven_opset18", "Split", {"x": f32(2, 7)}, {"axis": -1, "num_outputs": 3},
         outputs=3),
    Case("Split_attribute_raw_opset11", "Split", {"x": f32(2, 7)}, {"axis": 1, "split": [3, 4]}, outputs=2,
         opset=11, raw=True),
    Case("Split_attribute_opset11", "Split", {"x": f32(2, 7)}, {"axis": 1, "split": [3, 4]}, outputs=2, opset=11),
    Case("Slice_basic", "Slice", {"x": _X}, params={"s": i64(1, 0), "e": i64(3, -1), "a": i64(1, 3)}),
    Case("Slice_steps", "Slice", {"x": _X}, params={"s": i64(0, 4), "e": i64(4, 0), "a": i64(2, 3),
                                                  "st": i64(2, -2)}),
    Case("Slice_reverse_to_start", "Slice", {"x": _X}, params={"s": i64(-1), "e": i64(_I64_MIN), "a": i64(-1),
                                                               "st": i64(-1)}),
    Case("Slice_clamped_ends", "Slice", {"x": _X}, params={"s": i64(-100), "e": i64(_I64_MAX), "a": i64(0)}),
    Case("Slice_default_axes", "Slice", {"x": f32(5, 6)}, params={"s": i64(1, 2), "e": i64(4, 100)}),
    Case("Slice_empty", "Slice", {"x": f32(5, 6)}, params={"s": i64(3), "e": i64(1), "a": i64(0)}),
    Case("Expand_both_ways", "Expand", {"x": f32(3, 1)}, params={"s": i64(2, 1, 4)}),
    Case("Expand_keeps_larger", "Expand", {"x": f32(2, 3, 4)}, params={"s": i64(3, 1)}),
    Case("Tile", "Tile", {"x": f32(2, 3)}, params={"r": i64(2, 3)}),
    Case("Trilu_upper", "Trilu", {"x": f32(2, 4, 5)}),
    Case("Trilu_lower_k", "Trilu", {"x": f32(4, 5)}, {"upper": 0}, params={"k": np.array(-1, np.int64)}),
    Case("Trilu_upper_k2", "Trilu", {"x": f32(4, 5)}, params={"k": np.array(2, np.int64)}),
    Case("Pad_constant_value", "Pad", {"x": f32(2, 3, 4)}, params={"p": i64(0, 1, 2, 0, 2, 1),
                                                                   "v": np.array(1.5, np.float32)}),
    Case("Pad_reflect", "Pad", {"x": f32(1, 2, 4, 5)}, {"mode": "reflect"}, params={"p": i64(0, 0, 2, 1, 0, 0, 1, 3)}),
    Case("Pad_edge", "Pad", {"x": f32(1, 2, 4, 5)}, {"mode": "edge"}, params={"p": i64(0, 0, 2, 1, 0, 0, 3, 0)}),
    Case("Pad_wrap_opset19", "Pad", {"x": f32(1, 2, 4, 5)}, {"mode": "wrap"}, params={"p": i64(0, 0, 2, 1, 0, 0, 1, 3)},
         opset=19),
    Case("Pad_negative_crops", "Pad", {"x": f32(3, 6)}, params={"p": i64(-1, 2, 0, -3)}),
    Case("Pad_axes_opset18", "Pad", {"x": f32(2, 3, 4)}, params={"p": i64(1, 2, 3, 0), "v": np.array(0.0, np.float32),
                                                                 "a": i64(0, -1)}),
    Case("Pad_traced_value", "Pad", {"x": f32(2, 3), "v": np.array(-7.0, np.float32)}, params={"p": i64(1, 1, 1, 1)},
         order=["x", "p", "v"]),
    Case("DepthToSpace_DCR", "DepthToSpace", {"x": f32(1, 8, 2, 3)}, {"blocksize": 2}),
    Case("DepthToSpace_CRD", "DepthToSpace", {"x": f32(1, 8, 2, 3)}, {"blocksize": 2, "mode": "CRD"}),
    Case("SpaceToDepth", "SpaceToDepth", {"x": f32(1, 2, 4, 6)}, {"blocksize": 2}),
    Case("Shape", "Shape", {"x": _X}),
    Case("Shape_start_end", "Shape", {"x": _X}, {"start": 1, "end": -1}),
    Case("Size", "Size", {"x": _X}),
    Case("EyeLike", "EyeLike", {"x": f32(3, 4)}, {"k": 1}),
]

_IDX = np.array([[0, -1], [2, 1]], np.int64)

INDEXING = [
    Case("Gather_axis0_negative", "Gather", {"x": f32(4, 3)}, params={"i": _IDX}),
    Case("Gather_axis1", "Gather", {"x": f32(2, 4, 3)}, {"axis": 1}, params={"i": i64(3, 0, -2)}),
    Case("Gather_scalar_index", "Gather", {"x": f32(2, 4, 3)}, {"axis": -1}, params={"i": np.array(-1, np.int64)}),
    Case("Gather_traced_indices", "Gather", {"x": f32(5, 3), "i": _IDX}),
    Case("GatherElements", "GatherElements", {"x": f32(3, 4)}, {"axis": 1},
         params={"i": np.array([[0, 3], [-1, 1], [2, 2]], np.int64)}),
    Case("GatherElements_traced", "GatherElements", {"x": f32(3, 4), "i": np.array([[0, 1, 2, 0]], np.int64)}),
    Case("GatherND", "GatherND", {"x": f32(3, 4, 2)}, params={"i": np.array([[0, 1], [2, -1]], np.int64)}),
    Case("GatherND_batch_dims", "GatherND", {"x": f32(2, 3, 4)}, {"batch_dims": 1},
         params={"i": np.array([[[1], [0]], [[2], [2]]], np.int64)}),
    Case("ScatterND", "ScatterND", {"x": f32(4, 3), "u": f32(2, 3)}, params={"i": np.array([[1], [3]], np.int64)},
         order=["x", "i", "u"]),
    Case("ScatterND_add", "ScatterND", {"x": f32(4, 3), "u": f32(2, 3)}, {"reduction": "add"},
         params={"i": np.array([[1], [1]], np.int64)}, order=["x", "i", "u"]),
    Case("ScatterElements_axis1", "ScatterElements", {"x": f32(3, 4), "u": f32(3, 2)}, {"axis": 1},
         params={"i": np.array([[0, 3], [1, 2], [-1, 0]], np.int64)}, order=["x", "i", "u"]),
    Case("OneHot", "OneHot", {"i": i64(0, 2, -1, 1)}, {"axis": -1},
         params={"d": np.array(3, np.int64), "v": np.array([0.5, 2.0], np.float32)}),
    Case("ArgMax_keepdims", "ArgMax", {"x": f32(3, 4)}, {"axis": 1}),
    Case("ArgMax_last_index", "ArgMax", {"x": np.array([[1, 3, 3], [2, 2, 0]], np.float32)},
         {"axis": 1, "keepdims": 0, "select_last_index": 1}),
    Case("ArgMin_axis0", "ArgMin", {"x": f32(3, 4)}, {"axis": 0, "keepdims": 0}),
    Case("CumSum", "CumSum", {"x": f32(3, 4)}, params={"a": np.array(1, np.int64)}),
    Case("CumSum_exclusive_reverse", "CumSum", {"x": f32(3, 4)}, {"exclusive": 1, "reverse": 1},
         params={"a": np.array(0, np.int64)}),
]


# Integer data as initializers: the node folds at compile time (static numpy) instead of being traced.
STATIC = [
    Case("static_Gather_of_shape_ints", "Gather", {}, {"axis": 0}, params={"x": i64(2, 3, 5, 7), "i": i64(3, 0)}),
    Case("static_Concat", "Concat", {}, {"axis": 0}, params={"a": i64(1, 2), "b": i64(-1)}),
    Case("static_Slice_ints", "Slice", {}, params={"x": i64(5, 6, 7, 8), "s": i64(-3), "e": i64(_I64_MAX)}),
    Case("static_Range_int", "Range", {}, params={"a": np.array(1, np.int64), "b": np.array(11, np.int64),
                                                  "c": np.array(3, np.int64)}),
    Case("static_Range_float", "Range", {}, params={"a": np.array(0.5, np.float32), "b": np.array(-2.0, np.float32),
                                                    "c": np.array(-0.75, np.float32)}),
    Case("static_ConstantOfShape", "ConstantOfShape", {}, {"value": numpy_helper.from_array(np.array([2.5],
                                                                                                      np.float32))},
         params={"s": i64(2, 3)}),
    Case("static_ConstantOfShape_default", "ConstantOfShape", {}, params={"s": i64(3)}),
    Case("static_Cast_int_to_float", "Cast", {}, {"to": onnx.TensorProto.FLOAT}, params={"x": i64(3, -4)}),
    Case("static_Div_int", "Div", {}, params={"a": i64(7, -7), "b": i64(2, 2)}),
    Case("static_Mul_Equal", "Equal", {}, params={"a": i64(7, -7), "b": i64(7, 2)}),
    Case("static_Where_ints", "Where", {}, params={"c": np.array([True, False]), "a": i64(1, 2), "b": i64(3, 4)}),
    Case("static_Unsqueeze", "Unsqueeze", {}, params={"x": i64(4, 5), "a": i64(0)}),
    Case("static_ReduceProd", "ReduceProd", {}, {"keepdims": 0}, params={"x": i64(2, 3, 4)}),
    Case("static_NonZero", "NonZero", {}, params={"x": np.array([[1, 0], [0, 3]], np.int64)}),
    Case("static_Constant_scalar", "Constant", {}, {"value_float": 2.5}),
    Case("static_Constant_ints", "Constant", {}, {"value_ints": [3, -1]}),
]


@pytest.mark.parametrize("case", SHAPE + INDEXING + STATIC, ids=lambda c: c.id)
def test_shape_and_indexing(case):
    run_case(case)


LINALG = [
    Case("MatMul_2d", "MatMul", {"a": f32(3, 4), "b": f32(4, 5)}),
    Case("MatMul_batched_broadcast", "MatMul", {"a": f32(2, 1, 3, 4), "b": f32(3, 4, 5)}),
    Case("MatMul_vector_right", "MatMul", {"a": f32(2, 3, 4), "b": f32(4)}),
    Case("MatMul_vector_left", "MatMul", {"a": f32(4), "b": f32(2, 4, 3)}),
    Case("Gemm_transB_bias", "Gemm", {"a": f32(3, 4), "w": f32(5, 4), "c": f32(5)}, {"transB": 1}),
    Case("Gemm_transA_alpha_beta", "Gemm", {"a": f32(4, 3), "w": f32(4, 5), "c": f32(3, 1)},
         {"transA": 1, "alpha": 0.5, "beta": 2.0}),
    Case("Gemm_no_bias", "Gemm", {"a": f32(3, 4), "w": f32(4, 5)}),
    Case("Gemm_scalar_bias_beta0", "Gemm", {"a": f32(3, 4), "w": f32(4, 5), "c": f32(1)}, {"beta": 0.0}),
    Case("Einsum_patchify", "Einsum", {"x": f32(1, 2, 2, 2, 2, 3)}, {"equation": "nhwpqc->nchpwq"}),
    Case("Einsum_batched_matmul", "Einsum", {"a": f32(2, 3, 4), "b": f32(2, 4, 5)}, {"equation": "bij,bjk->bik"}),
    Case("Einsum_ellipsis_transpose", "Einsum", {"x": f32(2, 3, 4)}, {"equation": "...ij->...ji"}),
    Case("Einsum_sum_implicit", "Einsum", {"a": f32(3, 4), "b": f32(4)}, {"equation": "ij,j"}),
    Case("Einsum_attention_scores", "Einsum", {"q": f32(2, 2, 3, 4), "k": f32(2, 2, 5, 4)},
         {"equation": "bhqd, bhkd -> bhqk"}),
]


def conv(id, x, w, b=None, opset=18, **attrs):
    data = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    return Case(f"Conv_{id}", "Conv", data, attrs, opset=opset)


def conv_t(id, x, w, b=None, **attrs):
    data = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    return Case(f"ConvTranspose_{id}", "ConvTranspose", data, attrs)


CONV = [
    conv("3x3_pad1", f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4), pads=[1, 1, 1, 1]),
    conv("stride2_pad1", f32(1, 3, 7, 8), f32(4, 3, 3, 3), f32(4), strides=[2, 2], pads=[1, 1, 1, 1]),
    conv("1x1_no_bias", f32(1, 5, 4, 4), f32(3, 5, 1, 1)),
    conv("dilation2_asymmetric_pads", f32(1, 2, 9, 9), f32(3, 2, 3, 3), f32(3), dilations=[2, 2],
         pads=[0, 1, 2, 3]),
    conv("rect_kernel_strides", f32(1, 2, 8, 9), f32(3, 2, 2, 3), strides=[3, 2], pads=[1, 0, 0, 1]),
    conv("auto_same_upper_stride2", f32(1, 2, 7, 6), f32(3, 2, 4, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    conv("auto_same_lower", f32(1, 2, 7, 6), f32(3, 2, 4, 4), auto_pad="SAME_LOWER"),
    conv("auto_valid", f32(1, 2, 7, 6), f32(3, 2, 3, 3), auto_pad="VALID", strides=[2, 1]),
    conv("groups2", f32(2, 4, 6, 6), f32(6, 2, 3, 3), f32(6), group=2, pads=[1, 1, 1, 1]),
    conv("depthwise", f32(1, 4, 6, 6), f32(4, 1, 3, 3), f32(4), group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
    conv("depthwise_multiplier2", f32(1, 3, 5, 5), f32(6, 1, 3, 3), group=3),
    conv("1d", f32(2, 3, 10), f32(4, 3, 3), f32(4), pads=[2, 1], strides=[2]),
    conv("1d_groups", f32(1, 4, 9), f32(4, 2, 3), group=2, dilations=[2]),
    conv("3d", f32(1, 2, 4, 5, 5), f32(3, 2, 2, 3, 3), pads=[0, 1, 1, 1, 0, 1]),
    conv_t("stride2_k4_pad1", f32(1, 4, 4, 4), f32(4, 3, 4, 4), f32(3), strides=[2, 2], pads=[1, 1, 1, 1]),
    conv_t("stride2_k3_output_padding", f32(2, 3, 3, 4), f32(3, 2, 3, 3), f32(2), strides=[2, 2],
           pads=[1, 1, 1, 1], output_padding=[1, 1]),
    conv_t("no_pads", f32(1, 2, 3, 3), f32(2, 3, 3, 3)),
    conv_t("dilations", f32(1, 2, 4, 4), f32(2, 2, 3, 3), dilations=[2, 2], pads=[1, 0, 2, 1]),
    conv_t("asymmetric_strides", f32(1, 2, 3, 4), f32(2, 2, 3, 2), strides=[3, 2], output_padding=[2, 1]),
    conv_t("groups2", f32(1, 4, 3, 3), f32(4, 3, 3, 3), f32(6), group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
    conv_t("depthwise", f32(1, 3, 4, 4), f32(3, 1, 2, 2), group=3, strides=[2, 2]),
    conv_t("auto_same_upper", f32(1, 2, 3, 3), f32(2, 2, 3, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    conv_t("auto_same_lower", f32(1, 2, 3, 3), f32(2, 2, 4, 4), auto_pad="SAME_LOWER", strides=[2, 2]),
    conv_t("output_shape", f32(1, 2, 3, 3), f32(2, 2, 3, 3), strides=[3, 2], output_shape=[10, 8]),
    conv_t("pads_larger_than_kernel", f32(1, 2, 6, 6), f32(2, 2, 2, 2), strides=[2, 2], pads=[2, 2, 2, 2]),
    conv_t("1d", f32(1, 2, 5), f32(2, 3, 3), f32(3), strides=[2], pads=[1, 0]),
]


def pool(op, id, x, opset=18, **attrs):
    return Case(f"{op}_{id}", op, {"x": x}, attrs, opset=opset)


_P = f32(2, 3, 7, 8)
POOL = [
    pool("AveragePool", "k2s2", _P, kernel_shape=[2, 2], strides=[2, 2]),
    pool("AveragePool", "k3_pads_exclude", _P, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    pool("AveragePool", "k3_pads_include", _P, kernel_shape=[3, 3], pads=[1, 2, 1, 0], count_include_pad=1),
    pool("AveragePool", "ceil_mode", _P, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    pool("AveragePool", "ceil_mode_pads_include", _P, kernel_shape=[3, 2], strides=[2, 3], pads=[1, 1, 1, 1],
         ceil_mode=1, count_include_pad=1),
    pool("AveragePool", "same_upper", _P, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    pool("AveragePool", "same_lower_include", _P, kernel_shape=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1),
    pool("AveragePool", "dilations_opset19", _P, opset=19, kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
    pool("AveragePool", "1d", f32(2, 3, 9), kernel_shape=[3], strides=[2]),
    pool("MaxPool", "k2s2", _P, kernel_shape=[2, 2], strides=[2, 2]),
    pool("MaxPool", "k3_pads", -np.abs(_P), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    pool("MaxPool", "ceil_mode", _P, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    pool("MaxPool", "dilations", _P, kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
    pool("MaxPool", "same_upper", _P, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    pool("LpPool", "p2", _P, kernel_shape=[2, 2], strides=[2, 2]),
    pool("GlobalAveragePool", "4d", _P),
    pool("GlobalMaxPool", "4d", _P),
    pool("GlobalAveragePool", "3d", f32(2, 3, 5)),
]


@pytest.mark.parametrize("case", LINALG + CONV + POOL, ids=lambda c: c.id)
def test_linalg_conv_pool(case):
    run_case(case)


# The weights (W, B, C) as float initializers: traced weight arguments, as in every exported model.
@pytest.mark.parametrize("case", [c for c in LINALG + CONV if len(c.data) >= 2], ids=lambda c: c.id)
def test_linalg_conv_with_weights(case):
    run_case(case, as_weights=set(list(case.data)[1:]))


_N = f32(2, 6, 4, 5) * 3 + 1
NORMALIZATION = [
    Case("InstanceNormalization_4d", "InstanceNormalization", {"x": _N, "s": f32(6), "b": f32(6)}),
    Case("InstanceNormalization_3d_eps", "InstanceNormalization", {"x": f32(2, 3, 7), "s": f32(3), "b": f32(3)},
         {"epsilon": 1e-2}),
    Case("LayerNormalization_last", "LayerNormalization", {"x": f32(2, 5, 8), "s": f32(8), "b": f32(8)},
         {"epsilon": 1e-6}, opset=17),
    Case("LayerNormalization_no_bias", "LayerNormalization", {"x": f32(2, 5, 8), "s": f32(8)}),
    Case("LayerNormalization_axis1_all_outputs", "LayerNormalization", {"x": f32(2, 3, 4), "s": f32(3, 4),
                                                                        "b": f32(4)}, {"axis": 1}, outputs=3),
    Case("LayerNormalization_axis_neg2", "LayerNormalization", {"x": f32(2, 3, 4), "s": f32(3, 4)}, {"axis": -2}),
    Case("GroupNormalization_opset18_per_group_raw", "GroupNormalization", {"x": _N, "s": f32(3), "b": f32(3)},
         {"num_groups": 3, "epsilon": 1e-5}, opset=18, raw=True),  # the checker refuses the deprecated op
    Case("GroupNormalization_opset21_per_channel", "GroupNormalization", {"x": _N, "s": f32(6), "b": f32(6)},
         {"num_groups": 2, "epsilon": 1e-6}, opset=21),
    Case("GroupNormalization_opset21_groups_eq_channels", "GroupNormalization", {"x": _N, "s": f32(6), "b": f32(6)},
         {"num_groups": 6}, opset=21),
    Case("BatchNormalization", "BatchNormalization", {"x": _N, "s": f32(6), "b": f32(6), "m": f32(6),
                                                      "v": f32(6, lo=0.5, hi=2)}, {"epsilon": 1e-3}),
    Case("BatchNormalization_3d", "BatchNormalization", {"x": f32(2, 3, 5), "s": f32(3), "b": f32(3), "m": f32(3),
                                                         "v": f32(3, lo=0.5, hi=2)}, opset=15),
    Case("RMSNormalization_opset23", "RMSNormalization", {"x": f32(2, 5, 8), "s": f32(8)}, {"epsilon": 1e-6},
         opset=23),
    Case("LpNormalization_p2", "LpNormalization", {"x": f32(3, 4)}, {"axis": 1}),
    Case("LpNormalization_p1_axis0", "LpNormalization", {"x": f32(3, 4)}, {"axis": 0, "p": 1}),
]


def resize(id, x, scales=None, sizes=None, opset=19, roi=None, **attrs):
    params = {"roi": np.array([], np.float32) if roi is None else np.array(roi, np.float32)}
    order = ["x", "roi"]
    if scales is not None:
        params["scales"] = np.array(scales, np.float32)
        order.append("scales")
    if sizes is not None:
        params["sizes"] = np.array(sizes, np.int64)
        order += ["", "sizes"] if scales is None else ["sizes"]
    return Case(f"Resize_{id}", "Resize", {"x": x}, attrs, params=params, order=order, opset=opset)


_R = f32(1, 2, 4, 5)
_NEAREST = {"mode": "nearest"}
_LINEAR = {"mode": "linear"}
_CUBIC = {"mode": "cubic"}
RESIZE = [
    # diffusers' upsampling: nearest, asymmetric, floor, scale 2.
    resize("nearest_asymmetric_floor_x2", _R, [1, 1, 2, 2], coordinate_transformation_mode="asymmetric",
           nearest_mode="floor", **_NEAREST),
    resize("nearest_asymmetric_floor_opset11", _R, [1, 1, 2, 2], opset=11, coordinate_transformation_mode="asymmetric",
           nearest_mode="floor", **_NEAREST),
    resize("nearest_half_pixel_round_prefer_floor", _R, [1, 1, 1.5, 2.6], **_NEAREST),
    resize("nearest_half_pixel_round_prefer_ceil", _R, [1, 1, 2.5, 1.7], nearest_mode="round_prefer_ceil",
           **_NEAREST),
    resize("nearest_align_corners_ceil", _R, sizes=[1, 2, 7, 3], coordinate_transformation_mode="align_corners",
           nearest_mode="ceil", **_NEAREST),
    resize("nearest_pytorch_half_pixel_down", _R, [1, 1, 0.5, 0.6],
           coordinate_transformation_mode="pytorch_half_pixel", **_NEAREST),
    resize("nearest_tf_crop_and_resize", _R, sizes=[1, 2, 3, 3], roi=[0, 0, 0.2, 0.3, 1, 1, 0.9, 1.2],
           coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0, **_NEAREST),
    resize("linear_half_pixel_x2", _R, [1, 1, 2, 2], **_LINEAR),
    resize("linear_align_corners", _R, [1, 1, 2, 2], coordinate_transformation_mode="align_corners", **_LINEAR),
    resize("linear_asymmetric", _R, [1, 1, 1.5, 2.5], coordinate_transformation_mode="asymmetric", **_LINEAR),
    resize("linear_pytorch_half_pixel_sizes", _R, sizes=[1, 2, 1, 9],
           coordinate_transformation_mode="pytorch_half_pixel", **_LINEAR),
    resize("linear_half_pixel_symmetric", _R, [1, 1, 1.7, 0.8], coordinate_transformation_mode="half_pixel_symmetric",
           **_LINEAR),
    resize("linear_down", f32(1, 2, 8, 9), [1, 1, 0.5, 0.4], **_LINEAR),
    resize("linear_antialias_down", f32(1, 2, 8, 9), [1, 1, 0.5, 0.4], antialias=1, **_LINEAR),
    resize("linear_axes_sizes", _R, sizes=[8, 3], axes=[2, 3], **_LINEAR),
    resize("linear_keep_aspect_not_larger", _R, sizes=[8, 8], axes=[2, 3], keep_aspect_ratio_policy="not_larger",
           **_LINEAR),
    resize("linear_keep_aspect_not_smaller", _R, sizes=[8, 8], axes=[2, 3], keep_aspect_ratio_policy="not_smaller",
           **_LINEAR),
    resize("linear_tf_crop_and_resize", _R, sizes=[1, 2, 5, 4], roi=[0, 0, 0.4, -0.2, 1, 1, 0.6, 0.9],
           coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0, **_LINEAR),
    resize("linear_3d_input", f32(2, 3, 5), [1, 1, 1.6], **_LINEAR),
    resize("cubic_half_pixel", _R, [1, 1, 2, 1.5], **_CUBIC),
    resize("cubic_a05_exclude_outside", _R, [1, 1, 1.8, 2], cubic_coeff_a=-0.5, exclude_outside=1, **_CUBIC),
    resize("cubic_align_corners_down", f32(1, 1, 9, 8), [1, 1, 0.6, 0.5],
           coordinate_transformation_mode="align_corners", **_CUBIC),
    resize("cubic_antialias_down", f32(1, 1, 9, 8), [1, 1, 0.6, 0.5], antialias=1, **_CUBIC),
]


def attention(id, q, k, v, mask=None, past=None, outputs=1, **attrs):
    data = {"q": q, "k": k, "v": v}
    order = ["q", "k", "v"]
    if mask is not None:
        data["mask"] = mask
    order.append("mask" if mask is not None else "")
    if past is not None:
        data["past_k"], data["past_v"] = past
        order += ["past_k", "past_v"]
    while order[-1] == "":
        order.pop()
    return Case(f"Attention_{id}", "Attention", data, attrs, order=order, opset=23, outputs=outputs)


_B, _H, _S, _D = 2, 2, 5, 4
_q4, _k4, _v4 = f32(_B, _H, _S, _D), f32(_B, _H, 7, _D), f32(_B, _H, 7, 3)
_bool_mask = _RNG.uniform(size=(_B, 1, _S, 7)) > 0.3
_bool_mask[0, 0, 1] = False       # one fully masked row: its output is zero
_float_mask = np.where(_bool_mask, 0.0, -np.inf).astype(np.float32) + f32(_B, 1, _S, 7, lo=-1, hi=1)

ATTENTION = [
    attention("4d", _q4, _k4, _v4),
    attention("4d_scale", _q4, _k4, _v4, scale=0.3),
    attention("3d_heads", f32(_B, _S, 8), f32(_B, 7, 8), f32(_B, 7, 6), q_num_heads=2, kv_num_heads=2),
    attention("3d_gqa", f32(_B, _S, 8), f32(_B, 7, 4), f32(_B, 7, 6), q_num_heads=4, kv_num_heads=2),
    attention("4d_mqa", f32(_B, 4, _S, _D), f32(_B, 1, 7, _D), f32(_B, 1, 7, 3)),
    attention("causal_self", f32(_B, _H, _S, _D), f32(_B, _H, _S, _D), f32(_B, _H, _S, 3), is_causal=1),
    attention("bool_mask", _q4, _k4, _v4, _bool_mask),
    attention("bool_mask_2d", _q4, _k4, _v4, _bool_mask[1, 0]),
    attention("float_mask", _q4, _k4, _v4, f32(_B, _H, _S, 7)),
    attention("float_mask_with_minus_inf", _q4, _k4, _v4, np.where(_bool_mask[1], 0.0, -np.inf).astype(np.float32)),
    attention("causal_and_bool_mask", f32(_B, _H, _S, _D), f32(_B, _H, _S, _D), f32(_B, _H, _S, 3),
              _bool_mask[..., :_S] | np.eye(_S, dtype=bool), is_causal=1),
    attention("softcap", _q4 * 4, _k4, _v4, softcap=2.0),
    attention("past_kv_causal", f32(_B, _H, 2, _D), f32(_B, _H, 2, _D), f32(_B, _H, 2, 3),
              past=(f32(_B, _H, 3, _D), f32(_B, _H, 3, 3)), outputs=3, is_causal=1),
    attention("qk_output_mode0", _q4, _k4, _v4, f32(_B, _H, _S, 7), outputs=4),
    attention("qk_output_mode2", _q4, _k4, _v4, f32(_B, _H, _S, 7), outputs=4, qk_matmul_output_mode=2),
    attention("qk_output_mode3", _q4, _k4, _v4, _bool_mask, outputs=4, qk_matmul_output_mode=3),
]


@pytest.mark.parametrize("case", NORMALIZATION + RESIZE + ATTENTION, ids=lambda c: c.id)
def test_normalization_resize_attention(case):
    run_case(case)


@pytest.mark.parametrize("case", [c for c in NORMALIZATION + ATTENTION[:4] if len(c.data) >= 2],
                         ids=lambda c: c.id)
def test_normalization_attention_with_weights(case):
    run_case(case, as_weights=set(list(case.data)[1:]))


# Features cipherdm deliberately does not lower fail with one LoweringError that names the node and the reason.
REFUSED = [
    (Case("Dropout_training", "Dropout", {"x": f32(3, 4)}, params={"r": np.array(0.5, np.float32),
                                                                 "t": np.array(True)}, opset=13), "training_mode"),
    (Case("MaxPool_indices", "MaxPool", {"x": f32(1, 2, 4, 4)}, {"kernel_shape": [2, 2]}, outputs=2), "Indices"),
    (Case("Reshape_runtime_shape", "Reshape", {"x": f32(2, 3), "s": i64(3, 2)}), "must be known at compile time"),
    (Case("BatchNormalization_training", "BatchNormalization",
          {"x": _N, "s": f32(6), "b": f32(6), "m": f32(6), "v": f32(6, lo=0.5, hi=2)}, {"training_mode": 1},
          outputs=3), "training mode"),
]


@pytest.mark.parametrize("case, reason", REFUSED, ids=lambda c: getattr(c, "id", ""))
def test_refused_features_raise_a_clear_error(case, reason):
    with pytest.raises(compiler.LoweringError, match=reason):
        compiler.lower(compiler.load_model(case.model()))
