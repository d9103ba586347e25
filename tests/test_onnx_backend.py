"""ONNX's own backend node tests, run through cipherdm's lowering.

The onnx wheel here ships the node test generators (onnx.backend.test.case.node), not the data directory
(onnx/backend/test/data/node is absent), so the cases come from ``collect_testcases()``: the same models and
inputs/expected outputs that ``data/node/*/model.onnx`` + ``test_data_set_0`` are written from.

Selected: every case whose ops (subgraphs included) all have a cipherdm lowering at the model's opset (opsets
below 17 are upgraded by the loader, so looked up at 17) and whose opset is at most 23, cipherdm's maximum.
Cases named *_expanded (an op's function body) are marked slow. Each runs through an adapter: compiler.load_model -> compiler.lower -> plaintext jit, compared with the stored
outputs at the case's own tolerance (ONNX's defaults, rtol 1e-3 / atol 1e-7).

Adapter rules (not skips):
- Inputs a lowering needs at compile time (axes, sizes, pads, split, repeats...) are graph inputs in these tests;
  cipherdm requires them static, so the adapter binds exactly those (named by the LoweringError) as constants.
- jax runs without x64: float64 cases compute in float32 and are compared at the case tolerance; bfloat16 outputs
  are compared at a few bfloat16 ulps (see _compare).
- Cases generated at opsets above 23 (Einsum's, for one: its schema moved to opset 28) are not selected.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import compiler
from compiler.errors import LoweringError
from compiler.loader import MAX_OPSET, MIN_OPSET, iter_nodes
from compiler.registry import lookup

# Deliberately unsupported features, one reason each. Keep this list honest: a case goes here only when the
# feature cannot exist in cipherdm's setting (MPC over fixed point, static shapes, inference), never to hide a bug.
_TRAINING = "training mode (batch statistics, running means) is not lowered: models are exported in eval mode"
_RANDOM = "Dropout in training mode draws random numbers; cipherdm lowers inference only (noise is an input)"
_STRINGS = "string tensors: nothing in SPU represents them"
_DYNAMIC_SHAPE = "the output shape depends on input values (NonZero of a runtime tensor): shapes must be static"
_MAXPOOL_INDICES = "MaxPool's Indices output is not lowered (only the pooled values)"
_NARROW_FLOATS = "float8/float4/int4 element types: neither jax-without-x64 plaintext nor SPU's fixed point has them"
_INT64_RANGE = "int64 values beyond int32: jax runs without x64, so traced int64 is int32"
_ORT_RESIZE = ("onnxruntime and the ONNX reference disagree here (align_corners with a fractional scale * size: "
               "the reference divides by scale*size-1, onnxruntime by the output size-1); cipherdm follows "
               "onnxruntime, checked in test_ops_conformance")
SKIPS = {
    "test_batchnorm_example_training_mode": _TRAINING,
    "test_batchnorm_epsilon_training_mode": _TRAINING,
    **{f"test_training_dropout{suffix}": _RANDOM for suffix in
       ("", "_default", "_default_mask", "_mask", "_zero_ratio", "_zero_ratio_mask")},
    "test_equal_string": _STRINGS,
    "test_equal_string_broadcast": _STRINGS,
    "test_nonzero_example": _DYNAMIC_SHAPE,
    "test_maxpool_with_argmax_2d_precomputed_pads": _MAXPOOL_INDICES,
    "test_maxpool_with_argmax_2d_precomputed_strides": _MAXPOOL_INDICES,
    "test_resize_downsample_scales_linear_align_corners": _ORT_RESIZE,
    "test_resize_downsample_scales_cubic_align_corners": _ORT_RESIZE,
}
_NARROW_DTYPES = ("float8", "float4", "int4", "uint4", "int2", "uint2")


def _opset(model: onnx.ModelProto) -> int | None:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)


def _supported(model: onnx.ModelProto) -> bool:
    opset = _opset(model)
    if opset is None or opset > MAX_OPSET:
        return False
    at = max(opset, MIN_OPSET)
    return all(lookup(n.domain, n.op_type, at) is not None for n in iter_nodes(model.graph))


def _collect():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators divide by zero on purpose in a few cases
        cases = collect_testcases()
    return sorted((c for c in cases if c.model is not None and _supported(c.model)), key=lambda c: c.name)


CASES = _collect()


def _array(value):
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value


def _freeze(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """``model`` with graph input ``name`` turned into an initializer holding ``value``."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    kept = [i for i in frozen.graph.input if i.name != name]
    frozen.graph.ClearField("input")
    frozen.graph.input.extend(kept)
    frozen.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return frozen


_STATIC_INPUT = re.compile(r"input \d+ \('([^']*)'\) must be known at compile time")


def _lower_binding_static_inputs(model, feeds):
    """Lower, binding as constants the graph inputs a lowering needs at compile time (one retry per input).

    When the value needed is computed inside the graph (an _expanded function body deriving pads from a `shape`
    input), the integer graph inputs it can come from are bound instead.
    """
    for _ in range(len(feeds) + 2):
        try:
            return compiler.lower(compiler.load_model(model)), feeds
        except LoweringError as exc:
            if not _STATIC_INPUT.search(str(exc)):
                raise
            names = [m.group(1) for m in _STATIC_INPUT.finditer(str(exc)) if m.group(1) in feeds]
            if not names:
                names = [k for k, v in feeds.items() if v.dtype.kind in "iu"]
            if not names:
                raise
            for name in names:
                model = _freeze(model, name, feeds[name])
            feeds = {k: v for k, v in feeds.items() if k not in names}
    raise AssertionError("could not bind the static inputs")


def _compare(name, got, want, case):
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype.name == "bfloat16":
        # The reference rounds every intermediate to bfloat16, cipherdm computes in float32 and rounds once: a few
        # bfloat16 ulps (2^-8 relative each) apart.
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2.0 ** -5, atol=case.atol,
                                   err_msg=name)
    elif want.dtype.kind in "fc":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=case.rtol, atol=case.atol,
                                   err_msg=name)
    else:
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)


# The *_expanded cases run an op's ONNX function body (other ops composed) instead of the op: useful, but they
# double the runtime, so they belong to `make test-slow`.
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if "_expanded" in c.name else c
                                  for c in CASES], ids=lambda c: c.name)
def test_backend_node_case(case):
    if case.name in SKIPS:
        pytest.skip(SKIPS[case.name])
    inputs, outputs = case.data_sets[0]
    inputs, outputs = [_array(v) for v in inputs], [_array(v) for v in outputs]
    if any(not isinstance(v, np.ndarray) for v in inputs + outputs):
        pytest.skip("sequence or optional values: cipherdm lowers tensors only")
    if any(v.dtype.name.startswith(_NARROW_DTYPES) for v in inputs + outputs):
        pytest.skip(_NARROW_FLOATS)
    int64s = [v for v in inputs + outputs if v.dtype == np.int64 and v.size]
    if any(np.abs(v).max() > np.iinfo(np.int32).max for v in int64s):
        pytest.skip(_INT64_RANGE)
    names = [i.name for i in compiler.loader.graph_inputs(case.model)]
    feeds = dict(zip(names, inputs))
    lowered, feeds = _lower_binding_static_inputs(case.model, feeds)
    got = lowered(feeds)
    assert len(lowered.outputs) == len(outputs)
    for spec, want in zip(lowered.outputs, outputs):
        _compare(spec.name, got[spec.name], want, case)


def test_selection_covers_the_diffusion_ops():
    """The selection is not vacuous: every op the diffusers exports use has backend cases here."""
    ops = {n.op_type for c in CASES for n in c.model.graph.node}
    needed = {"Add", "Mul", "Div", "Sub", "Pow", "Sqrt", "Erf", "Sigmoid", "Tanh", "Softplus", "Mish", "Gelu",
              "Sin", "Cos", "Where", "Equal", "Cast", "Concat", "Split", "Slice", "Gather", "Expand", "Tile",
              "Reshape", "Transpose", "Unsqueeze", "Squeeze", "MatMul", "Gemm", "Conv", "ConvTranspose",
              "Softmax", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "Resize",
              "Attention", "Shape", "ConstantOfShape", "Identity", "ReduceMean"}
    assert needed <= ops, sorted(needed - ops)
