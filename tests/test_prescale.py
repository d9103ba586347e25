"""The exp inside SoftMax in monic form, and its input scale folded into the score product: the same numbers as the
fitted polynomial (float64), the same outputs in onnxruntime, and left alone where the fold would change anything
else."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime.protocols as protocols
from passes.cost import estimate_model
from passes.prescale import fold_prescales, input_scale, prescaled
from passes.report import charge_estimates
from runtime.protocols.base import load_fitted
from runtime.protocols.families import MONIC_MAX_DEGREE, monic_form

EXPS = [p for p in load_fitted("exp") if len(p.params["coeffs"]) - 1 <= MONIC_MAX_DEGREE]
SOFTMAXES = [p for p in load_fitted("softmax") if input_scale(p) is not None]


def _polynomial_form(p, x):
    """q(x / 2^k) with q's fitted coefficients, 0 below L, squared k times: the protocol as specified."""
    k = int(p["squarings"])
    q = np.polynomial.polynomial.polyval(x / 2.0 ** k, np.asarray(p["coeffs"], np.float64))
    if p.get("clip", True):
        q = np.where(x > p["lower"], q, 0.0)
    return q ** (2 ** k)


@pytest.mark.parametrize("exp", EXPS, ids=lambda p: p.name)
def test_monic_form_is_the_fitted_polynomial(exp):
    lower = float(exp.params["lower"])
    x = np.concatenate([np.linspace(lower, 0.0, 20001), [lower, lower * (1 - 1e-9), 0.0, 2 * lower, -1e3]])
    if not exp.params.get("clip", True):   # no clip: meant for rows within [L, 0] only (softmax.box)
        x = x[x >= lower]
    got = exp.numpy_fn(x)
    np.testing.assert_allclose(got, _polynomial_form(exp.params, x), rtol=1e-9, atol=1e-12)
    gamma, sign, b = monic_form(exp.params)
    assert gamma > 0 and sign in (1.0, -1.0) and len(b) == len(exp.params["coeffs"]) - 1


@pytest.mark.parametrize("softmax", SOFTMAXES, ids=lambda p: p.name)
def test_prescaled_softmax_takes_the_scaled_input(softmax):
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 2.0, (16, 40))
    x[0] = 0.0
    x[1, 3] = 30.0                           # one dominant logit: the clips and the shift's bound
    gamma = input_scale(softmax)
    got = prescaled(softmax).numpy_fn(gamma * x, axis=-1)
    np.testing.assert_allclose(got, softmax.numpy_fn(x, axis=-1), rtol=1e-9, atol=1e-12)


def _attention(scaled_query: bool = True, extra_user: bool = False, protocol=None,
               secret_scale: bool = False) -> onnx.ModelProto:
    """scores = (q * c) @ k (or q @ k) -> a softmax protocol node; ``secret_scale``: c is an initializer (the model
    owner's weight) instead of a Constant node."""
    protocol = protocol or SOFTMAXES[0]
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 6, 3])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 3, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 6])
    c = numpy_helper.from_array(np.array(0.5774, np.float32), "c")
    nodes = ([] if secret_scale or not scaled_query else [helper.make_node("Constant", [], ["c"], name="c", value=c)]
             ) + ([helper.make_node("Mul", ["q", "c"], ["qs"], name="scale")] if scaled_query else []) + [
        helper.make_node("MatMul", ["qs" if scaled_query else "q", "k"], ["s"], name="scores"),
        protocols.make_node(protocol, ["s"], "y", "softmax", axis=-1)]
    outputs = [y]
    if extra_user:
        nodes.append(helper.make_node("Relu", ["s"], ["r"], name="other"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 6, 6]))
    graph = helper.make_graph(nodes, "g", [q, k], outputs, [c] if secret_scale else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    protocols.add_functions(model, [protocol])
    return model


def _run(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)


def _inputs():
    rng = np.random.default_rng(0)
    return {"q": rng.normal(size=(2, 6, 3)).astype(np.float32), "k": rng.normal(size=(2, 3, 6)).astype(np.float32)}


def _entry(protocol):
    return {"node": "softmax", "protocol": protocol.name, "params": protocol.params,
            "est_bytes_after": float(protocol.cost((2, 6, 6)).bytes),
            "est_rounds_after": float(protocol.cost((2, 6, 6)).rounds)}


@pytest.mark.parametrize("scaled_query", [True, False])
def test_the_input_scale_moves_onto_the_query(scaled_query):
    protocol = SOFTMAXES[0]
    model = _attention(scaled_query)
    entry = _entry(protocol)
    folded = fold_prescales(model, [entry])
    onnx.checker.check_model(folded, full_check=True)
    node = next(n for n in folded.graph.node if n.name == "softmax")
    assert node.overload == f"{protocol.name}@s" and entry["protocol"] == node.overload
    muls = [n for n in folded.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and muls[0].input[0] == "q"                 # merged, or a new one on q
    gamma = input_scale(protocol)
    # a public constant (a Constant node): a float initializer would be taken for a secret weight
    assert all(i.name != muls[0].input[1] for i in folded.graph.initializer)
    constant = next(n for n in folded.graph.node if n.op_type == "Constant" and n.output[0] == muls[0].input[1])
    merged = numpy_helper.to_array(constant.attribute[0].t)
    assert float(merged) == pytest.approx((0.5774 if scaled_query else 1.0) * gamma, rel=1e-6)
    # merged: one truncation per score fewer; a new Mul on q: 36 truncations instead of 72 (counted in the entry)
    priced, unfolded = dict(entry), _entry(protocol)
    charge_estimates([priced], folded, estimate_model(folded))
    charge_estimates([unfolded], model, estimate_model(model))
    assert priced["est_bytes_after"] < unfolded["est_bytes_after"]
    if not scaled_query:
        assert priced["est_bytes_after"] > prescaled(protocol).cost((2, 6, 6), axis=-1).bytes
    assert "folded into scores" in entry["prescale"]
    np.testing.assert_allclose(_run(folded, _inputs())[0], _run(model, _inputs())[0], rtol=1e-5, atol=1e-6)


def test_the_scale_stays_in_the_protocol_when_the_scores_have_other_users():
    model = _attention(extra_user=True)
    entry = _entry(SOFTMAXES[0])
    assert fold_prescales(model, [entry]) is model
    assert entry["prescale"].startswith("the input scale stays in the protocol: the MatMul product has other")


def test_the_report_says_where_the_scale_went():
    from passes.report import render_markdown
    entry = {**_entry(SOFTMAXES[0]), "pattern": "softmax", "nodes": ["softmax"], "interval": [-4.0, 0.0],
             "error_max": 1e-3, "error_mean": 1e-4, "est_bytes_before": 1.0, "est_rounds_before": 1.0}
    fold_prescales(_attention(), [entry])
    report = {"mode": "cipherdm", "rewrites": [entry], "declined": []}
    assert "Softmax input scale folded into the score product" in render_markdown(report)


def test_a_secret_scale_is_not_merged():
    """A float initializer is the owner's weight: merging it into a public constant would reveal it."""
    model = _attention(secret_scale=True)
    folded = fold_prescales(model, [_entry(SOFTMAXES[0])])
    muls = [n for n in folded.graph.node if n.op_type == "Mul"]
    assert len(muls) == 2 and any(m.input == ["q", "c"] for m in muls)      # kept, and a new Mul on its output
    constants = [numpy_helper.to_array(n.attribute[0].t) for n in folded.graph.node if n.op_type == "Constant"]
    assert all(abs(float(v) - 0.5774 * input_scale(SOFTMAXES[0])) > 1e-6 for v in constants)
    np.testing.assert_allclose(_run(folded, _inputs())[0], _run(model, _inputs())[0], rtol=1e-5, atol=1e-6)
