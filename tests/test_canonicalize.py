"""Canonicalization recognises every exporter spelling, in any operand order and constant form."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.canonicalize import canonicalize

N = helper.make_node


def _graph_model(nodes, shape=(2, 4, 6, 6), extra_inputs=(), initializers=(), opset=18, out_shape=None):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))] + list(extra_inputs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape or shape))
    graph = helper.make_graph(nodes, "g", inputs, [out], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def _const(name, value):
    return N("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))


def _patterns(model, public=()):
    result = canonicalize(model, set(public))
    return [(c.pattern, sorted(c.original_ops)) for c in result.canonical], result


SILU_FORMS = {
    "mul_sigmoid": [N("Sigmoid", ["x"], ["s"]), N("Mul", ["x", "s"], ["y"])],
    "sigmoid_mul_swapped": [N("Sigmoid", ["x"], ["s"]), N("Mul", ["s", "x"], ["y"])],
    "div_exp": [_const("one", 1.0), N("Neg", ["x"], ["n"]), N("Exp", ["n"], ["e"]), N("Add", ["one", "e"], ["d"]),
                N("Div", ["x", "d"], ["y"])],
    "reciprocal_exp": [_const("one", 1.0), _const("m1", -1.0), N("Mul", ["x", "m1"], ["n"]), N("Exp", ["n"], ["e"]),
                       N("Add", ["e", "one"], ["d"]), N("Reciprocal", ["d"], ["r"]), N("Mul", ["r", "x"], ["y"])],
}


@pytest.mark.parametrize("form", sorted(SILU_FORMS))
def test_silu_spellings(form):
    found, result = _patterns(_graph_model(SILU_FORMS[form]))
    assert [p for p, _ in found] == ["silu"]
    assert len(result.model.graph.node) == 1 and result.model.graph.node[0].op_type == "SiLU"
    assert result.model.graph.node[0].input[0] == "x"


GELU_FORMS = {
    "erf_div": ([_const("r2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5), N("Div", ["x", "r2"], ["a"]),
                 N("Erf", ["a"], ["b"]), N("Add", ["b", "one"], ["c"]), N("Mul", ["x", "c"], ["d"]),
                 N("Mul", ["d", "half"], ["y"])], "none"),
    "erf_mul_cast": ([_const("ir2", 1 / math.sqrt(2)), _const("one", 1.0), _const("half", 0.5),
                      N("Mul", ["half", "x"], ["h"]), N("Mul", ["ir2", "x"], ["a"]), N("Erf", ["a"], ["b"]),
                      N("Add", ["one", "b"], ["c"]), N("Cast", ["c"], ["cc"], to=TensorProto.FLOAT),
                      N("Mul", ["cc", "h"], ["y"])], "none"),
    "tanh_pow": ([_const("three", 3.0), _const("k", 0.044715), _const("s", math.sqrt(2 / math.pi)),
                  _const("one", 1.0), _const("half", 0.5), N("Pow", ["x", "three"], ["p"]),
                  N("Mul", ["p", "k"], ["q"]), N("Add", ["x", "q"], ["r"]), N("Mul", ["r", "s"], ["t"]),
                  N("Tanh", ["t"], ["u"]), N("Add", ["u", "one"], ["v"]), N("Mul", ["x", "v"], ["w"]),
                  N("Mul", ["w", "half"], ["y"])], "tanh"),
}


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
def test_gelu_spellings(form):
    nodes, approximate = GELU_FORMS[form]
    found, result = _patterns(_graph_model(nodes))
    assert [p for p, _ in found] == ["gelu"]
    assert result.canonical[0].attrs["approximate"] == approximate


def test_gelu_op_and_quick_gelu_is_not_gelu():
    found, result = _patterns(_graph_model([N("Gelu", ["x"], ["y"], approximate="tanh")], opset=20))
    assert found == [("gelu", ["Gelu"])] and result.canonical[0].attrs["approximate"] == "tanh"
    quick = [_const("k", 1.702), N("Mul", ["x", "k"], ["a"]), N("Sigmoid", ["a"], ["s"]), N("Mul", ["x", "s"], ["y"])]
    found, _ = _patterns(_graph_model(quick))
    # x*sigmoid(1.702x) is neither GELU nor SiLU; only its Sigmoid is a known op.
    assert [p for p, _ in found] == ["sigmoid"]


def test_mish_forms():
    found, _ = _patterns(_graph_model([N("Mish", ["x"], ["y"])]))
    assert found == [("mish", ["Mish"])]
    spelled = [N("Softplus", ["x"], ["sp"]), N("Tanh", ["sp"], ["t"]), N("Mul", ["t", "x"], ["y"])]
    assert [p for p, _ in _patterns(_graph_model(spelled))[0]] == ["mish"]
    # torch's softplus threshold under dynamo, and log(1 + exp(x)) spelled out.
    thresholded = [_const("one", 1.0), _const("th", 20.0), N("Exp", ["x"], ["e"]), N("Add", ["e", "one"], ["a"]),
                   N("Log", ["a"], ["l"]), N("Greater", ["x", "th"], ["g"]), N("Where", ["g", "x", "l"], ["sp"]),
                   N("Tanh", ["sp"], ["t"]), N("Mul", ["x", "t"], ["y"])]
    assert [p for p, _ in _patterns(_graph_model(thresholded))[0]] == ["mish"]


def test_shared_intermediate_declines_with_reason():
    nodes = [N("Sigmoid", ["x"], ["s"]), N("Mul", ["x", "s"], ["m"]), N("Add", ["m", "s"], ["y"])]
    found, result = _patterns(_graph_model(nodes))
    assert any(d.pattern == "silu" and "also used" in d.reason for d in result.declined)
    assert [p for p, _ in found] == ["sigmoid"]


def test_softmax_op_and_spelled_out():
    found, result = _patterns(_graph_model([N("Softmax", ["x"], ["y"], axis=1)]))
    assert found == [("softmax", ["Softmax"])] and result.canonical[0].attrs["axis"] == 1
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    spelled = [N("ReduceMax", ["x", "axes"], ["m"], keepdims=1), N("Sub", ["x", "m"], ["d"]), N("Exp", ["d"], ["e"]),
               N("ReduceSum", ["e", "axes"], ["s"], keepdims=1), N("Div", ["e", "s"], ["y"])]
    found, result = _patterns(_graph_model(spelled, initializers=[axes]))
    assert [p for p, _ in found] == ["softmax"] and result.canonical[0].attrs["axis"] == 3
    assert len(result.canonical[0].original) == 5


def test_group_norm_instance_norm_form_and_op():
    c, g = 4, 2
    inits = [numpy_helper.from_array(np.array([2, g, -1], np.int64), "s1"),
             numpy_helper.from_array(np.array([2, c, 6, 6], np.int64), "s2"),
             numpy_helper.from_array(np.ones(g, np.float32), "ones"),
             numpy_helper.from_array(np.zeros(g, np.float32), "zeros"),
             numpy_helper.from_array(np.linspace(0.5, 2, c).reshape(c, 1, 1).astype(np.float32), "gamma"),
             numpy_helper.from_array(np.linspace(-1, 1, c).reshape(c, 1, 1).astype(np.float32), "beta")]
    nodes = [N("Reshape", ["x", "s1"], ["r"]), N("InstanceNormalization", ["r", "ones", "zeros"], ["i"], epsilon=1e-5),
             N("Reshape", ["i", "s2"], ["b"]), N("Mul", ["b", "gamma"], ["m"]), N("Add", ["m", "beta"], ["y"])]
    found, result = _patterns(_graph_model(nodes, initializers=inits))
    assert [p for p, _ in found] == ["group_norm"]
    assert result.canonical[0].attrs["num_groups"] == g and len(result.canonical[0].original) == 5
    onnx.checker.check_model(result.model)
    op = [N("GroupNormalization", ["x", "sc", "bi"], ["y"], num_groups=g, epsilon=1e-6)]
    inits21 = [numpy_helper.from_array(np.ones(c, np.float32), "sc"), numpy_helper.from_array(np.zeros(c, np.float32), "bi")]
    found, result = _patterns(_graph_model(op, initializers=inits21, opset=21))
    assert found == [("group_norm", ["GroupNormalization"])]


def test_public_activations_are_left_in_the_clear():
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4, 6, 6])
    nodes = [N("Sigmoid", ["t"], ["st"]), N("Mul", ["t", "st"], ["a"]), N("Add", ["x", "a"], ["b"]),
             N("Sigmoid", ["b"], ["sb"]), N("Mul", ["b", "sb"], ["y"])]
    found, result = _patterns(_graph_model(nodes, extra_inputs=[t]), public={"t"})
    assert [p for p, _ in found] == ["silu"]
    assert [d.pattern for d in result.declined] == ["silu"] and "public" in result.declined[0].reason
