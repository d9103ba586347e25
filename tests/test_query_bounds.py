"""Bounded rows moved onto the queries (passes/query_bounds.py): the same outputs as the protocol bounding its own
scores, for rows inside B and far beyond it, in onnxruntime (float) and under SPU (through the compiler), at fewer
estimated bytes; left alone where it does not apply."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import runtime.protocols as protocols
from compiler.interpreter import attribute_dict
from passes.cost import estimate_model
from passes.prescale import fold_prescales
from passes.query_bounds import bound_on_queries, prebound
from passes.report import charge_estimates
from runtime.protocols.base import get

BOUNDED = get("softmax.shiftb.u2.sq.l12.k2.d3")       # B = 9.76 on x - mean
HEADS, QUERIES, KEYS, WIDTH = 3, 12, 20, 4


def _attention(protocol=BOUNDED, norm_scale: float = 0.5) -> onnx.ModelProto:
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [HEADS, QUERIES, WIDTH])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [HEADS, WIDTH, KEYS])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [HEADS, QUERIES, KEYS])
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [norm_scale])
    nodes = [helper.make_node("Constant", [], ["c"], name="c", value=c),
             helper.make_node("Mul", ["q", "c"], ["qs"], name="scale"),
             helper.make_node("MatMul", ["qs", "k"], ["s"], name="scores"),
             protocols.make_node(protocol, ["s"], "y", "softmax", axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [q, k], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    protocols.add_functions(model, [protocol])
    return model


def _inputs(spread: np.ndarray | None = None):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(HEADS, QUERIES, WIDTH))
    if spread is not None:
        q *= spread[None, :, None]
    return {"q": q.astype(np.float32), "k": rng.normal(size=(HEADS, WIDTH, KEYS)).astype(np.float32)}


def _run(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def _entry(protocol, shape=(HEADS, QUERIES, KEYS)):
    cost = protocol.cost(shape, axis=-1)
    return {"node": "softmax", "protocol": protocol.name, "params": protocol.params,
            "est_bytes_after": float(cost.bytes), "est_rounds_after": float(cost.rounds)}


def _priced(model, entry):
    """The entry priced from the whole-model estimate of ``model``, as the pipeline does after its graph passes."""
    priced = dict(entry)
    charge_estimates([priced], model, estimate_model(model))
    return priced


def _row_norms(inputs, scale=0.5):
    s = np.einsum("hqd,hdk->hqk", inputs["q"].astype(np.float64) * scale, inputs["k"].astype(np.float64))
    return np.sqrt(((s - s.mean(-1, keepdims=True)) ** 2).sum(-1))


@pytest.mark.parametrize("prescale", [False, True])
def test_same_outputs_inside_and_beyond_the_bound_at_fewer_bytes(prescale):
    model = _attention()
    entry = _entry(BOUNDED)
    if prescale:   # the prescale runs first in the pipeline: the protocol then sees gamma x, B in those units
        model = fold_prescales(model, [entry])
    before = _priced(model, entry)["est_bytes_after"]
    moved = bound_on_queries(model, [entry])
    onnx.checker.check_model(moved, full_check=True)
    node = next(n for n in moved.graph.node if n.name == "softmax")
    assert protocols.from_onnx_attributes(attribute_dict(node), op_type=node.op_type).params["clip"] == "prebound"
    assert node.overload.endswith("@q") and entry["protocol"] == node.overload
    assert any(n.name.endswith("query_bound/gram") for n in moved.graph.node)
    after = _priced(moved, entry)["est_bytes_after"]
    # the bound's chain on the queries is counted in the entry, and it still costs less than bounding the scores
    assert protocols.from_onnx_attributes(attribute_dict(node), op_type=node.op_type).cost(
        (HEADS, QUERIES, KEYS), axis=-1).bytes < after < before
    assert "bounded on the queries" in entry["query_bounds"]
    from passes.report import render_markdown
    entry.update(pattern="softmax", nodes=["softmax"], interval=[-4.0, 0.0], error_max=1e-3, error_mean=1e-4,
                 est_bytes_before=1.0, est_rounds_before=1.0)
    assert "Softmax rows bounded on the queries" in render_markdown({"mode": "cipherdm", "rewrites": [entry],
                                                                       "declined": []})
    # rows from far inside B to ~60x beyond it: scaled by the same factor either way
    inputs = _inputs(np.geomspace(0.05, 60.0, QUERIES))
    norms = _row_norms(inputs)
    bound = BOUNDED.params["bound"]
    assert (norms < bound).sum() >= 3 and (norms > 10 * bound).sum() >= 3
    np.testing.assert_allclose(_run(moved, inputs), _run(model, inputs), rtol=1e-4, atol=2e-6)


def test_left_alone_without_a_bounded_two_norm_softmax():
    for name in ("softmax.shiftlo.u4.sq.l12.k2.d3", "softmax.shiftb4.u2.sq.l12.k2.d3"):
        entry = {**_entry(get(name)), "params": {**get(name).params}}
        model = _attention(get(name))
        assert bound_on_queries(model, [entry]) is model
    entry = _entry(get("softmax.shiftb4.u2.sq.l12.k2.d3"))
    bound_on_queries(_attention(get("softmax.shiftb4.u2.sq.l12.k2.d3")), [entry])
    assert entry["query_bounds"] == "bounded inside the protocol: bounded by the 4-norm (no quadratic form in the query)"


def test_prebound_protocol_skips_its_own_bound():
    rows = np.random.default_rng(2).normal(0.0, 0.3, (8, 20))        # inside B: the same numbers
    np.testing.assert_allclose(prebound(BOUNDED).numpy_fn(rows, axis=-1), BOUNDED.numpy_fn(rows, axis=-1),
                               rtol=1e-12)
    assert prebound(BOUNDED).cost((8, 20), axis=-1).bytes < BOUNDED.cost((8, 20), axis=-1).bytes


def test_under_spu_through_the_compiler():
    """The moved bound lowered and run by SPU: the same outputs as onnxruntime on the rewritten graph."""
    from compiler.spu_compile import compile_model
    from runtime.simulate import run_sim
    from tools.benchmark import in_memory_artifact
    model = bound_on_queries(fold_prescales(_attention(), [_entry(BOUNDED)]), [_entry(BOUNDED)])
    inputs = _inputs(np.geomspace(0.05, 60.0, QUERIES))
    program = compile_model(model, rewrites="direct")       # the graph as it is: its protocol nodes lower as such
    got = run_sim(in_memory_artifact(program), program.weights, inputs, profile=False).outputs["y"]
    want = _run(model, inputs)
    assert np.all(got >= -1e-4) and np.allclose(got.sum(-1), 1.0, atol=5e-3)
    np.testing.assert_allclose(got, want, atol=3e-3)
