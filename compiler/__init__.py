"""cipherdm compiler: ONNX import, checks and lowering to JAX (then StableHLO and SPU)."""

import runtime  # noqa: F401  (sets SPU's OpenMP thread limit before anything here loads SPU: runtime/threads.py)

from compiler.errors import CipherdmError, DynamicShapeError, LoweringError, ModelLoadError, UnsupportedOpsError
from compiler.loader import find_unsupported, load_model, parse_input_shapes
from compiler.lowering import LoweredModel, TensorSpec, lower

__all__ = [
    "CipherdmError", "DynamicShapeError", "LoweringError", "ModelLoadError", "UnsupportedOpsError",
    "find_unsupported", "load_model", "parse_input_shapes", "LoweredModel", "TensorSpec", "lower",
]
