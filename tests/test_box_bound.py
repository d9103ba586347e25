"""Attention rows bounded from the keys' bounding box (passes/box_bound.py): the bound holds for every score, the
pipeline takes it on attention scores whose calibrated box ranges fit, and the rewritten graph matches a float64
softmax in onnxruntime and under SPU, stays a distribution far outside calibration, and drops the max tree."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from passes.box_bound import box_bounds
from passes.pipeline import rewrite

HEADS, QUERIES, KEYS, WIDTH, VALUES = 2, 24, 48, 2, 3


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_the_box_bounds_every_score(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(3, 10, 6)) * rng.uniform(0.1, 5.0)
    k = rng.normal(size=(3, 6, 30)) + rng.normal(size=(3, 6, 1))
    scores = q @ k
    upper, spread = box_bounds(q, k)
    assert np.all(scores <= upper + 1e-9) and np.all(scores >= upper - spread - 1e-9)
    # tight where some key sits on the box's corner the query points to
    corner = np.where(q[:, :1, :, None] >= 0, k.max(-1, keepdims=True)[:, None], k.min(-1, keepdims=True)[:, None])
    k_with_corner = np.concatenate([k, corner[:, 0]], axis=-1)
    np.testing.assert_allclose(box_bounds(q, k_with_corner)[0][:, 0, 0], (q @ k_with_corner)[:, 0].max(-1))


def test_lifted_exp_keeps_the_softmax_and_scales_e():
    from runtime.protocols.base import get, op_module
    mod = op_module("softmax")
    p = get("softmax.box.sq.l24.k4.d3.r6")
    lifted = mod.lifted(p, 3.1)
    assert lifted.params["lift"] == 3.25 and lifted.name == "softmax.box.sq.l24.k4.d3.r6@c3.25"
    (rows,) = mod.box_samples(p.params["bound"], rows=64)
    np.testing.assert_allclose(lifted.numpy_fn(rows, axis=-1), p.numpy_fn(rows, axis=-1), rtol=1e-9, atol=1e-12)
    bare = [dataclasses.replace(q, params={**q.params, "normalize": False}) for q in (p, lifted)]
    np.testing.assert_allclose(bare[1].numpy_fn(rows, axis=-1), np.exp(3.25) * bare[0].numpy_fn(rows, axis=-1),
                               rtol=1e-9)
    assert mod.lifted(p, 40.0).params["lift"] == mod.MAX_LIFT and mod.lifted(p, 0.0) is p


def _attention_model() -> onnx.ModelProto:
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [HEADS, QUERIES, WIDTH])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [HEADS, WIDTH, KEYS])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [HEADS, KEYS, VALUES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [HEADS, QUERIES, VALUES])
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="values")]
    return helper.make_model(helper.make_graph(nodes, "g", [q, k, v], [y]),
                             opset_imports=[helper.make_opsetid("", 18)])


def _case(rng, sharpness: float = 1.0):
    # sharp rows, as in trained attention: max - mean up to ~7, the row maxima up to ~4 below the box's bound
    return {"q": (rng.normal(size=(HEADS, QUERIES, WIDTH)) * sharpness).astype(np.float32),
            "k": rng.normal(size=(HEADS, WIDTH, KEYS)).astype(np.float32),
            "v": rng.normal(size=(HEADS, KEYS, VALUES)).astype(np.float32)}


def _attend(case):
    return _softmax(case["q"].astype(np.float64) @ case["k"].astype(np.float64)) @ case["v"].astype(np.float64)


@pytest.fixture(scope="module")
def rewritten():
    rng = np.random.default_rng(7)
    calibration = [_case(rng) for _ in range(6)]
    result = rewrite(_attention_model(), calibration=calibration, budget=2e-3, model_error=None)
    return result, calibration


def test_the_choice_takes_the_box_and_drops_the_max_tree(rewritten):
    result, calibration = rewritten
    (entry,) = result.report["rewrites"]
    assert entry["protocol"].startswith("softmax.box.") and "@c" in entry["protocol"]   # lifted
    assert entry["protocol"].endswith("@s@e") and entry["params"]["prescaled"]          # normalised after V
    ops = [n.op_type for n in result.model.graph.node]
    assert "scores" not in [n.name for n in result.model.graph.node]        # recomputed from the scaled queries
    assert ops.count("MatMul") == 4 and ops.count("ReduceMax") == 1          # the box over the keys only
    # the box range the choice read fits the chosen exp's range, with the margin
    widest = max(float(np.max(box_bounds(c["q"], c["k"])[1])) for c in calibration)
    assert widest * 1.1 <= entry["params"]["bound"]
    # the box's nodes are charged to the softmax's entry, which still costs far less than SPU's own softmax
    assert entry["est_bytes_after"] < entry["est_bytes_before"] / 2
    from passes.report import render_markdown
    assert "box range R <=" in entry["box_bound"] and "keys' bounding box" in render_markdown(result.report)


def _run(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def test_rewritten_graph_matches_float64_and_stays_a_distribution_beyond_calibration(rewritten):
    result, _ = rewritten
    rng = np.random.default_rng(8)
    inside = _case(rng)
    np.testing.assert_allclose(_run(result.model, inside), _attend(inside), atol=2e-3)
    # queries 30x larger than any calibrated one: rows beyond exp's range get a lower temperature, not garbage
    wild = _case(rng, sharpness=30.0)
    _, spread = box_bounds(wild["q"], wild["k"])
    assert spread.max() > 5 * result.report["rewrites"][0]["params"]["bound"]
    # V of ones gives each row's sum of weights; V of one-hot columns some of the weights themselves
    wild["v"] = np.ones((HEADS, KEYS, VALUES), np.float32)
    np.testing.assert_allclose(_run(result.model, wild), 1.0, atol=1e-5)
    for first in range(0, KEYS, VALUES):
        wild["v"] = np.eye(KEYS, VALUES, -first, dtype=np.float32)[None].repeat(HEADS, 0)
        weights = _run(result.model, wild)
        assert np.all(np.isfinite(weights)) and np.all(weights >= -1e-7)


def test_under_spu_through_the_compiler(rewritten):
    from compiler.spu_compile import compile_model
    from runtime.simulate import run_sim
    from tools.benchmark import in_memory_artifact
    result, _ = rewritten
    inputs = _case(np.random.default_rng(9))
    program = compile_model(result.model, rewrites="direct")    # the rewritten graph as it is
    got = run_sim(in_memory_artifact(program), program.weights, inputs, profile=False).outputs["y"]
    np.testing.assert_allclose(got, _attend(inputs), atol=5e-3)


@pytest.mark.parametrize("count", [1, 2, 7, 196, None])
def test_key_box_is_the_max_and_min_over_the_keys(count):
    """One sorting comparison per pair and one tree for both: the keys' max and min exactly, for even, odd and
    unknown counts, in onnxruntime and through cipherdm's lowering under SPU."""
    from compiler.spu_compile import compile_model
    from passes.box_bound import key_box
    from runtime.simulate import run_sim
    from tools.benchmark import in_memory_artifact

    m = count or 5
    keys = np.random.default_rng(m).normal(0.0, 3.0, (2, 3, 4, m)).astype(np.float32)
    nodes = key_box("box", "keys", count)
    nodes.insert(0, helper.make_node("Constant", [], ["box/axes"],
                                     value=onnx.numpy_helper.from_array(np.array([-1], np.int64))))
    graph = helper.make_graph(nodes, "key_box", [helper.make_tensor_value_info("keys", TensorProto.FLOAT, keys.shape)],
                              [helper.make_tensor_value_info(f"box/{name}", TensorProto.FLOAT, (2, 3, 4, 1))
                               for name in ("high", "low")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    high, low = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"keys": keys})
    # (b + (a - b) is a to the last float bit, not always exactly)
    np.testing.assert_allclose(high, keys.max(-1, keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(low, keys.min(-1, keepdims=True), rtol=1e-6, atol=1e-6)
    program = compile_model(model)
    result = run_sim(in_memory_artifact(program), program.weights, {"keys": keys}, profile=False)
    got_high, got_low = (result.outputs[name] for name in ("box/high", "box/low"))
    np.testing.assert_allclose(got_high, keys.max(-1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(got_low, keys.min(-1, keepdims=True), atol=1e-4)
