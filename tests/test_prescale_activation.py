"""An activation's 1/B folded into the GroupNorm before it (passes/prescale_activation.py): the prescaled protocol
computes the activation of B x exactly as the plain one computes it of x (plaintext and under SPU), one truncation
per element fewer; the pass divides the GroupNorm's weights at compile time, leaves the graph's outputs as they
were, and the float twin rebuilt on the divided weights is the original model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import runtime.protocols as protocols
from passes.pipeline import rewrite
from passes.prescale_activation import prescaled, restore_divided_weights
from runtime import fxp_scale
from runtime.protocols.base import load_fitted
from runtime.protocols.cost_model import load_table
from tests.test_rewrite_pipeline import _fixture

ACTIVATIONS = [p for op in ("silu", "gelu", "mish") for p in load_fitted(op)
               if p.params.get("form") == "relu_minus" and float(p.params["bound"]).is_integer()]


@pytest.mark.parametrize("p", ACTIVATIONS, ids=lambda p: p.name)
def test_prescaled_protocol_is_the_protocol_of_b_x(p):
    bound = float(p.params["bound"])
    x = np.concatenate([np.linspace(-1.5 * bound, 1.5 * bound, 20001), [-bound, bound, 0.0, -1e3, 1e3]])
    np.testing.assert_allclose(prescaled(p).numpy_fn(x / bound), p.numpy_fn(x), rtol=1e-12, atol=1e-12)
    shape = (4096,)
    plain, folded = p.cost(shape), prescaled(p).cost(shape)
    assert folded.bytes == plain.bytes - load_table().primitive("trunc")[0] * 4096
    assert folded.comparisons == plain.comparisons


def test_prescaled_silu_under_spu_matches_the_plain_one():
    from spu.utils.simulation import Simulator, sim_jax
    import spu.libspu as libspu
    simulator = Simulator.simple(3, libspu.ProtocolKind.ABY3, libspu.FieldType.FM64)
    p = protocols.get("silu.pw.b10.d9")
    x = np.concatenate([np.linspace(-15.0, 15.0, 2042), [-50.0, 50.0, -1e3, 1e3, -10.0, 10.0]])
    with fxp_scale.fraction_bits(18):
        got = np.asarray(sim_jax(simulator, lambda a: prescaled(p).jax_fn(a))(np.float32(x / 10.0)), np.float64)
    reference = x * 0.5 * (1.0 + np.tanh(x / 2.0))
    assert np.max(np.abs(got - reference)) <= p.fit["max_error"] + 1e-3
    np.testing.assert_allclose(got[-6:], p.numpy_fn(x[-6:]), atol=1e-3, rtol=1e-4)


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def test_fold_divides_the_groupnorm_weights_and_keeps_the_outputs():
    from compiler.spu_compile import strip_weights
    from onnx import numpy_helper

    model, inputs = _fixture("unet2d_attn.ts17")
    result = rewrite(model, public_inputs={"timestep"}, calibration=[inputs], budget=1e-2, model_error=0)
    folded = [r for r in result.report["rewrites"] if r["op"] == "silu" and r["protocol"].endswith("@i")]
    assert folded and all(r["input_scale"].startswith("1/") for r in folded)
    divided = result.report["weights_divided"]
    assert len(divided) == 2 * len(folded)
    # this export shares identical GroupNorm weights between nodes: those are divided copies, the rest in place
    assert any("copy_of" in d for d in divided) and any("copy_of" not in d for d in divided)
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    for d in divided:
        source = original[d.get("copy_of", d["weight"])]
        np.testing.assert_allclose(weights[d["weight"]].reshape(source.shape) * d["divisor"], source, rtol=1e-6)
    assert not any(n.op_type == "Mul" and n.name.endswith("_over_bound") for n in result.model.graph.node)
    # the protocol nodes' function bodies: the rewritten graph computes what the float model does, within budget
    want = _ort(model, inputs)[0]
    got = _ort(result.model, inputs)[0]
    assert np.max(np.abs(got - want)) / np.std(want) < 0.05
    # the float twin: the original graph on the divided weights, with the divisors put back
    # (some shared originals are read by nothing but their divided copies now: the twin rebuilds those)
    assert any(d["copy_of"] not in weights for d in divided if "copy_of" in d)
    twin = restore_divided_weights(strip_weights(model), divided, set(weights))
    np.testing.assert_allclose(_ort(twin, {**inputs, **weights})[0], want, rtol=1e-4, atol=1e-5)


def _groupnorm_silu(parameters: str, rng):
    """GroupNormalization -> SiLU with the norm's scale and bias as public Constant nodes or as inputs given at run
    time (a conditional norm's), neither of which is a weight the fold can divide at compile time."""
    from onnx import TensorProto, helper, numpy_helper
    channels, shape = 4, (2, 4, 6, 6)
    scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    nodes = []
    if parameters == "constants":
        nodes += [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(scale)),
                  helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(bias))]
        feeds = {}
    else:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, (channels,)) for n in ("s", "b")]
        feeds = {"s": scale, "b": bias}
    nodes += [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=2, epsilon=1e-5, name="gn"),
              helper.make_node("Sigmoid", ["g"], ["gate"], name="gate"),
              helper.make_node("Mul", ["g", "gate"], ["y"], name="silu")]
    graph = helper.make_graph(nodes, "gn_silu", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, {"x": rng.normal(0.0, 2.0, shape).astype(np.float32), **feeds}


@pytest.mark.parametrize("parameters", ["constants", "run_time"])
def test_fold_into_a_groupnorm_without_weights(parameters):
    """No weights to divide: the scale and bias are multiplied by 1/B in the program instead (a public product
    for constants, a product of C secret values for inputs), and a norm whose scale is known only at run time is
    chosen on the identity and says so. The rewritten graph and the program under SPU still compute the SiLU of
    the norm."""
    from compiler.spu_compile import compile_model
    from runtime.simulate import run_sim
    from tools.benchmark import in_memory_artifact

    model, case = _groupnorm_silu(parameters, np.random.default_rng(3))
    result = rewrite(model, calibration=[case], budget=1e-3, model_error=0)
    entries = {r["op"]: r for r in result.report["rewrites"]}
    assert entries["silu"]["protocol"].endswith("@i")
    assert "scale times 1/" in entries["silu"]["input_scale"] and "bias times 1/" in entries["silu"]["input_scale"]
    assert result.report["weights_divided"] == []
    assert ("measured_with" in entries["group_norm"]) == (parameters == "run_time")
    want = _ort(model, case)[0]
    np.testing.assert_allclose(_ort(result.model, case)[0], want, atol=3e-3)
    program = compile_model(result.model, rewrites="direct")     # the rewritten graph as it is
    got = run_sim(in_memory_artifact(program), program.weights, case, profile=False).outputs["y"]
    np.testing.assert_allclose(got, want, atol=1e-2)
