"""Fraction bits chosen from the calibrated value range (passes/fixed_point.py)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from passes.fixed_point import MAX_BITS, MIN_BITS, fraction_bits, value_bound


def _scaled_relu(scale: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["big"]), helper.make_node("Relu", ["big"], ["y"]),
         helper.make_node("Mul", ["y", "tiny"], ["out"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("tiny", TensorProto.FLOAT, [], [1e-3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_bound_sees_intermediate_values_not_only_the_output():
    x = np.array([-2.0, 0.5, 1.0, 3.0], np.float32)
    model = _scaled_relu(250.0)
    bound, public = value_bound(model, [{"x": x}])
    assert bound == np.float32(750.0) and public == 0.0   # the Mul's output, 250 x 3; the graph output is 0.75
    assert value_bound(model, [{"x": x}, {"x": -4 * x}])[0] == np.float32(3000.0)   # 250 x -12, before the Relu
    # public tensors (here: x and everything computed from it) are bounded apart, without their square
    everything = {"x", "big", "y", "out"}
    assert value_bound(model, [{"x": x}], everything) == (0.0, np.float32(750.0))
    assert fraction_bits(0.0, public_bound=750.0) == MAX_BITS > fraction_bits(750.0)


def test_bits_keep_the_largest_square_inside_the_ring():
    for bound in (0.5, 3.0, 40.0, 250.0, 3000.0, 1e5):
        bits = fraction_bits(bound)
        assert MIN_BITS <= bits <= MAX_BITS
        largest = max(4 * bound, (4 * bound) ** 2)
        if bits > MIN_BITS:
            assert largest * 2.0 ** (2 * bits) < 2.0 ** 62
        if bits < MAX_BITS:   # and one more bit would not
            assert largest * 2.0 ** (2 * (bits + 1)) >= 2.0 ** 62
    assert fraction_bits(3.0) == MAX_BITS
    assert fraction_bits(1000.0) == math.floor((62 - 2 * math.log2(4000.0)) / 2)
    assert fraction_bits(1e5) == MIN_BITS
    assert fraction_bits(250.0, "FM128") == MAX_BITS


def test_compile_picks_the_bits_and_the_secure_run_uses_them():
    from compiler.spu_compile import compile_model
    from runtime.simulate import run_sim
    from tests.conftest import FIXTURES
    from tools.benchmark import in_memory_artifact

    data = np.load(FIXTURES / "unet2d_attn.ts17.npz")
    inputs = {k: data[k] for k in data.files if not k.startswith("out:")}
    path = FIXTURES / "unet2d_attn.ts17.onnx"
    program = compile_model(str(path), public=["timestep"], calibration=inputs, auto_fraction_bits=True,
                            model_error=1e-2)
    chosen = program.report["fixed_point"]
    assert chosen["chosen"] and chosen["fraction_bits"] == program.config.fxp_bits
    assert chosen["fraction_bits"] == fraction_bits(chosen["value_bound"], "FM64", chosen["public_value_bound"])
    assert chosen["public_value_bound"] >= float(np.max(inputs["timestep"]))
    assert chosen["value_bound"] >= float(np.max(np.abs(data["out:output"])))
    artifact = in_memory_artifact(program)
    assert artifact.config.fxp_bits == chosen["fraction_bits"]
    result = run_sim(artifact, program.weights, inputs, profile=False)
    want = data["out:output"]
    # the float error is within 1e-2 x std (the whole-model check); the fixed point adds little on top
    assert np.abs(result.outputs["output"] - want).max() <= 1.5e-2 * want.std()
    # without calibration the given bits stay
    plain = compile_model(str(path), public=["timestep"], auto_fraction_bits=True)
    assert plain.config.fxp_bits == 18 and plain.report["fixed_point"]["chosen"] is False
