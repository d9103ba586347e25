"""Constant subgraphs computed from static shapes become Constant nodes, and attention's two operand scales (as
torch exports scaled_dot_product_attention) merge into one: the same outputs in onnxruntime, never a weight folded
into the public program."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from passes.fold_constants import fold_constants
from passes.hoist_scale import merge_operand_scales


def _sdpa_scores(weight_scale: bool = False) -> onnx.ModelProto:
    """scores = (q * s) @ (k^T * s) with s = sqrt(1 / sqrt(d)) computed from q's shape, softmax."""
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 6, 4])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 6, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 6])
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "last")]
    if weight_scale:
        inits.append(numpy_helper.from_array(np.array(0.7, np.float32), "one"))   # a float initializer: a weight
        nodes = []
    else:
        nodes = [helper.make_node("Constant", [], ["one"], name="one",
                                  value=numpy_helper.from_array(np.array(1.0, np.float32), "one"))]
    nodes += [
        helper.make_node("Shape", ["q"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "last"], ["d"], name="d", axis=0),
        helper.make_node("Cast", ["d"], ["df"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["df"], ["root"], name="root"),
        helper.make_node("Div", ["one", "root"], ["inv"], name="inv"),
        helper.make_node("Sqrt", ["inv"], ["s"], name="s"),
        helper.make_node("Mul", ["q", "s"], ["qs"], name="q_scale"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("Mul", ["kt", "s"], ["ks"], name="k_scale"),
        helper.make_node("MatMul", ["qs", "ks"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "g", [q, k], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)


def _inputs():
    rng = np.random.default_rng(1)
    return {"q": rng.normal(size=(2, 6, 4)).astype(np.float32), "k": rng.normal(size=(2, 6, 4)).astype(np.float32)}


def test_shape_derived_scale_becomes_a_constant():
    model = _sdpa_scores()
    folded, entries = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Shape" not in ops and "Sqrt" not in ops and "Gather" not in ops
    constant = next(n for n in folded.graph.node if n.op_type == "Constant" and n.output[0] == "s")
    assert float(numpy_helper.to_array(constant.attribute[0].t)) == np.float32(np.sqrt(1 / np.sqrt(4)))
    assert [e["output"] for e in entries] == ["s"]
    np.testing.assert_allclose(_run(folded, _inputs())[0], _run(model, _inputs())[0], rtol=1e-6, atol=1e-7)


def test_a_weight_is_never_folded_into_the_program():
    folded, entries = fold_constants(_sdpa_scores(weight_scale=True))
    ops = [n.op_type for n in folded.graph.node]
    assert "Div" in ops and "Sqrt" in ops        # 0.7 / sqrt(d) reads a weight: computed, not baked in
    assert all(e["output"] != "s" for e in entries)
    assert any(e["output"] == "root" for e in entries)   # the shape-only part still folds


def test_both_operand_scales_merge_onto_one():
    model = _sdpa_scores()
    folded, _ = fold_constants(model)
    merged, entries = merge_operand_scales(folded)
    onnx.checker.check_model(merged, full_check=True)
    muls = [n for n in merged.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and muls[0].input[0] == "q"
    value = next(numpy_helper.to_array(n.attribute[0].t) for n in merged.graph.node
                 if n.op_type == "Constant" and n.output[0] == muls[0].input[1])
    assert float(value) == np.float32(np.float32(np.sqrt(0.5)) ** 2)
    assert entries == [{"pattern": "scale", "nodes": ["k_scale", "q_scale", "scores"], "op": "Mul", "operand": "q",
                        "elements_before": 96, "elements_after": 48}]
    np.testing.assert_allclose(_run(merged, _inputs())[0], _run(model, _inputs())[0], rtol=1e-5, atol=1e-7)
    # scales that are not public constants stay where they are
    assert merge_operand_scales(fold_constants(_sdpa_scores(weight_scale=True))[0])[1] == []
