"""Moving a scalar scale from a MatMul product onto its smaller operand: same outputs (onnxruntime), fewer
scaled elements, and left alone wherever the move would change what someone sees."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.cost import estimate_model
from passes.hoist_scale import hoist_scales


def _attention_scores(scale_op: str = "Mul", const_first: bool = False, extra_user: bool = False,
                      const_shape=(), const_node: bool = False) -> onnx.ModelProto:
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 6, 3])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 3, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 6])
    c = numpy_helper.from_array(np.full(const_shape, 0.3536, np.float32), "c")
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
             *([helper.make_node("Constant", [], ["c"], name="c", value=c)] if const_node else []),
             helper.make_node(scale_op, ["c", "s"] if const_first else ["s", "c"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["y"], name="softmax", axis=-1)]
    outputs = [y]
    if extra_user:
        nodes.append(helper.make_node("Relu", ["s"], ["r"], name="other"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 6, 6]))
    graph = helper.make_graph(nodes, "g", [q, k], outputs, [] if const_node else [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)


@pytest.mark.parametrize("scale_op,const_first,const_node", [("Mul", False, False), ("Mul", True, False),
                                                             ("Div", False, False), ("Mul", False, True)])
def test_scale_moves_onto_the_smaller_operand(scale_op, const_first, const_node):
    # const_node: the scale is a Constant node defined after the MatMul (as torch exports attention)
    model = _attention_scores(scale_op, const_first, const_node=const_node)
    hoisted, entries = hoist_scales(model)
    onnx.checker.check_model(hoisted, full_check=True)
    assert len(entries) == 1 and entries[0]["operand"] == "q"       # q: 36 elements, k: 36 too -> the first
    assert entries[0]["elements_before"] == 72 and entries[0]["elements_after"] == 36
    ops = [(n.op_type, list(n.input)) for n in hoisted.graph.node if n.op_type != "Constant"]
    assert ops[0][0] == scale_op and ops[0][1][0] == "q" and ops[1][0] == "MatMul"
    assert len(hoisted.graph.node) == len(model.graph.node)
    rng = np.random.default_rng(0)
    inputs = {"q": rng.normal(size=(2, 6, 3)).astype(np.float32), "k": rng.normal(size=(2, 3, 6)).astype(np.float32)}
    np.testing.assert_allclose(_run(hoisted, inputs)[0], _run(model, inputs)[0], rtol=1e-5, atol=1e-7)


def test_the_scale_stays_where_the_product_has_other_users_or_is_the_divisor():
    assert hoist_scales(_attention_scores(extra_user=True))[1] == []
    assert hoist_scales(_attention_scores("Div", const_first=True))[1] == []       # c / (q @ k) is no scale
    assert hoist_scales(_attention_scores(const_shape=(1, 1, 1, 1)))[1] == []      # would broadcast q to rank 4


def test_hoisting_lowers_the_estimated_bytes():
    model = _attention_scores()
    hoisted, _ = hoist_scales(model)
    before = estimate_model(model, set(), {})["totals"]["bytes"]
    after = estimate_model(hoisted, set(), {})["totals"]["bytes"]
    assert after < before
