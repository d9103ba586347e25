"""Lower a loaded ONNX model to a JAX function that takes the model inputs and then the weights as arguments.

Float initializers are the model owner's weights: they become arguments of the function (secret inputs under
MPC), never constants baked into the program. Every other initializer (integer shapes, axes, indices) stays a
compile-time constant so shape arithmetic folds away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import numpy as np
import onnx
from onnx import numpy_helper

from compiler.interpreter import Interpreter
from compiler.loader import graph_inputs

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name as the ONNX graph declares it ("float32", "int64", ...)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)

    def jax_spec(self) -> jax.ShapeDtypeStruct:
        # jax without x64 computes in 32 bits; the spec says what the traced program really receives.
        return jax.ShapeDtypeStruct(self.shape, jax.dtypes.canonicalize_dtype(np.dtype(self.dtype)))


@dataclass
class LoweredModel:
    """``fn(*inputs, *weights) -> tuple(outputs)``, with arguments in the order of ``arg_names``."""

    fn: Callable
    weights: dict[str, np.ndarray]
    inputs: list[TensorSpec]
    weight_specs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=list)
    model: onnx.ModelProto | None = None

    @property
    def arg_names(self) -> list[str]:
        return [s.name for s in self.inputs] + [s.name for s in self.weight_specs]

    def arg_specs(self) -> list[jax.ShapeDtypeStruct]:
        return [s.jax_spec() for s in self.inputs + self.weight_specs]

    def args(self, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> list:
        weights = self.weights if weights is None else weights
        return [np.asarray(inputs[s.name], dtype=s.dtype) for s in self.inputs] + \
               [np.asarray(weights[s.name], dtype=s.dtype) for s in self.weight_specs]

    def __call__(self, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
        """Plaintext evaluation on the CPU (jit-compiled): the reference every secure mode is compared with."""
        results = jax.jit(self.fn)(*self.args(inputs, weights))
        return {spec.name: np.asarray(r) for spec, r in zip(self.outputs, results)}


def is_weight(init: onnx.TensorProto) -> bool:
    return init.data_type in _FLOAT_TYPES


def lower(model: onnx.ModelProto, interpreter_cls: type[Interpreter] = Interpreter,
          public_initializers: frozenset[str] | set[str] = frozenset()) -> LoweredModel:
    """Lower a model prepared by :func:`compiler.load_model` into a traceable JAX function.

    ``public_initializers`` names float initializers that are architecture constants rather than weights (the
    dynamo exporter stores the timestep frequency table as one): they are baked into the program as public
    constants. See :func:`passes.public.public_initializers` for how they are found.
    """
    weights: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        secret = is_weight(init) and init.name not in public_initializers
        (weights if secret else constants)[init.name] = array
    inputs = [spec_of(vi) for vi in graph_inputs(model)]
    weight_specs = [TensorSpec(name, tuple(a.shape), a.dtype.name) for name, a in weights.items()]
    names = [s.name for s in inputs] + [s.name for s in weight_specs]
    interpreter = interpreter_cls(model)

    def fn(*args):
        feeds = dict(constants)
        feeds.update(zip(names, args))
        return tuple(interpreter.run(feeds))

    lowered = LoweredModel(fn, weights, inputs, weight_specs, model=model)
    out_shapes = jax.eval_shape(fn, *lowered.arg_specs())
    declared = {o.name: o for o in model.graph.output}
    lowered.outputs = [
        TensorSpec(o.name, tuple(s.shape), _declared_dtype(declared[o.name]) or s.dtype.name)
        for o, s in zip(model.graph.output, out_shapes)
    ]
    return lowered


def spec_of(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, shape, _declared_dtype(value_info))


def _declared_dtype(value_info: onnx.ValueInfoProto) -> str | None:
    elem = value_info.type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name if elem else None
