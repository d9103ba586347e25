"""How many fraction bits the fixed-point encoding can afford, from the values the model really computes.

SPU encodes a real x as round(x * 2^f) in the ring (FM64: 64 bits). A product of two encodings carries 2f fraction
bits until it is truncated, so the largest value v the program forms must keep |v| * 2^(2f) below 2^62 (sign bit
and one bit of slack); sums wrap harmlessly in the ring, so only final values count, not partial sums. More
fraction bits cost nothing in bytes or rounds (the ring stays 64 bits) and cut every op's rounding error: on the
CipherDM MNIST U-Net, the same rewritten program measured 0.012 x std of output error with 20 bits, 0.0096 with 22.

The bound comes from onnxruntime on the calibration cases, over every float tensor of the graph (inputs,
weights' products, activations), times MARGIN for inputs the calibration did not see; public tensors (the
timestep and its embedding's arguments) count without their square. The squares a norm or a
polynomial forms are values of the graph too (variances, powers), but GroupNorm's x^2 is not a tensor of the
ONNX graph, so the bound is taken as max(B, B^2) with B the largest magnitude.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

MARGIN = 4.0
MAX_BITS = 22      # softmax's low-clip headroom is checked for sums up to 2^40 (room for 22 fraction bits)
MIN_BITS = 12
RING_BITS = {"FM64": 64, "FM128": 128, "FM32": 32}


def value_bound(model: onnx.ModelProto, cases: list[dict[str, np.ndarray]],
                public: set[str] = frozenset()) -> tuple[float, float]:
    """The largest |value| of the secret float tensors of ``model`` on ``cases`` (onnxruntime), and of the public
    ones (``public``: inputs every party knows and what is computed from them alone, e.g. a timestep of 999 and
    its embedding's arguments; SPU multiplies those in the clear, so only their own size matters, not a square)."""
    from passes.calibrate import probe_session

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                   onnx.TensorProto.FLOAT16)}
    session, out_names = probe_session(model, [name for node in model.graph.node for name in node.output
                                               if name in floats])
    names = {i.name for i in session.get_inputs()}
    bounds = {False: 0.0, True: 0.0}   # keyed by "is public"
    for case in cases:
        values = list(case.items()) + list(zip(out_names, session.run(None, {k: v for k, v in case.items()
                                                                             if k in names})))
        for name, value in values:
            value = np.asarray(value)
            if value.size and np.issubdtype(value.dtype, np.floating):
                magnitude = float(np.max(np.abs(value[np.isfinite(value)]), initial=0.0))
                bounds[name in public] = max(bounds[name in public], magnitude)
    return bounds[False], bounds[True]


def fraction_bits(bound: float, field: str = "FM64", public_bound: float = 0.0) -> int:
    """The most fraction bits (between MIN_BITS and MAX_BITS) that keep MARGIN x the secret bound, and its square,
    and MARGIN x the public bound clear of the ring's range while a product is untruncated."""
    largest = max(MARGIN * bound, (MARGIN * bound) ** 2, MARGIN * public_bound, 1.0)
    room = (RING_BITS[field] - 2 - math.log2(largest)) / 2
    return int(max(MIN_BITS, min(MAX_BITS, math.floor(room))))
