"""Small ONNX models for the secure-execution tests, built with onnx.helper (no torch).

* ``tiny``: elementwise only (Mul, Add, Tanh, Exp, Cast) with a public integer input ``t``, like a timestep.
* ``convnet``: Conv 3x3 (3->4, pad 1) + bias, SiLU (x * Sigmoid(x)), Conv 3x3 stride 2 (4->2), a public
  timestep scaling the result.
* ``attention``: single-head self-attention with a residual: softmax(Q K^T / sqrt(d)) V W_o + x.

Each builder returns ``(model, inputs)``; weights are float initializers, so they become the model owner's.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def _model(name, nodes, inputs, outputs, weights: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    inits = [nh.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = h.make_graph(nodes, name, inputs, outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny(rng: np.random.Generator):
    nodes = [h.make_node("Mul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["a"]),
             h.make_node("Tanh", ["a"], ["th"]), h.make_node("Cast", ["t"], ["tf"], to=T.FLOAT),
             h.make_node("Mul", ["th", "tf"], ["y"]), h.make_node("Exp", ["x"], ["e"])]
    model = _model("tiny", nodes,
                   [h.make_tensor_value_info("x", T.FLOAT, [2, 4]), h.make_tensor_value_info("t", T.INT64, [1])],
                   [h.make_tensor_value_info("y", T.FLOAT, [2, 4]), h.make_tensor_value_info("e", T.FLOAT, [2, 4])],
                   {"w": rng.standard_normal((2, 4)), "b": rng.standard_normal(4)})
    inputs = {"x": rng.standard_normal((2, 4)).astype(np.float32), "t": np.array([3], np.int64)}
    return model, inputs


def convnet(rng: np.random.Generator):
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Sigmoid", ["c1"], ["s1"]),
        h.make_node("Mul", ["c1", "s1"], ["a1"]),
        h.make_node("Conv", ["a1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Cast", ["t"], ["tf"], to=T.FLOAT),
        h.make_node("Mul", ["c2", "tf"], ["y"]),
    ]
    model = _model("convnet", nodes,
                   [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8]), h.make_tensor_value_info("t", T.INT64, [1])],
                   [h.make_tensor_value_info("y", T.FLOAT, [1, 2, 4, 4])],
                   {"w1": rng.standard_normal((4, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(4) * 0.1,
                    "w2": rng.standard_normal((2, 4, 3, 3)) * 0.3, "b2": rng.standard_normal(2) * 0.1})
    inputs = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "t": np.array([2], np.int64)}
    return model, inputs


def attention(rng: np.random.Generator, tokens: int = 8, dim: int = 16):
    scale = np.array(1.0 / np.sqrt(dim), np.float32)
    nodes = [
        h.make_node("MatMul", ["x", "wq"], ["q"]), h.make_node("MatMul", ["x", "wk"], ["k"]),
        h.make_node("MatMul", ["x", "wv"], ["v"]),
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node("Mul", ["s", "scale"], ["ss"]),
        h.make_node("Softmax", ["ss"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v"], ["o"]),
        h.make_node("MatMul", ["o", "wo"], ["proj"]), h.make_node("Add", ["proj", "x"], ["y"]),
    ]
    weights = {name: rng.standard_normal((dim, dim)) / np.sqrt(dim) for name in ("wq", "wk", "wv", "wo")}
    weights["scale"] = scale
    model = _model("attention", nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, tokens, dim])],
                   [h.make_tensor_value_info("y", T.FLOAT, [1, tokens, dim])], weights)
    inputs = {"x": rng.standard_normal((1, tokens, dim)).astype(np.float32)}
    return model, inputs


BUILDERS = {"tiny": tiny, "convnet": convnet, "attention": attention}
PUBLIC = {"tiny": ["t"], "convnet": ["t"], "attention": []}
