"""Plaintext reference: the artifact's own StableHLO, run by XLA on the CPU.

Why the stored StableHLO rather than re-lowering the stored ONNX: it is exactly the program SPU compiled (same
argument order, same dtypes, same lowering of every op), so a difference between plaintext and a secure mode is
the secure execution's (fixed-point arithmetic, MPC approximations of exp/reciprocal/rsqrt...), never a change
in cipherdm's lowerings since the artifact was built. It needs no weights-in-graph reconstruction either.
XLA's client API is jax-internal, which is acceptable because jax is pinned (0.4.34, by SPU 0.9.5).
"""

from __future__ import annotations

import numpy as np

from compiler.artifact import Artifact


def run_stablehlo(text: str, args: list[np.ndarray]) -> list[np.ndarray]:
    """Compile StableHLO text with XLA's CPU client and run it on ``args`` (positional, program dtypes)."""
    from jax._src import xla_bridge

    backend = xla_bridge.get_backend("cpu")
    executable = backend.compile(text)
    device = backend.local_devices()[0]
    buffers = [backend.buffer_from_pyval(np.ascontiguousarray(a), device) for a in args]
    return [np.asarray(r) for r in executable.execute(buffers)]


def run_plaintext(artifact: Artifact, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Outputs by name; ``weights`` and ``inputs`` already checked (``compiler.artifact.read_*``)."""
    values = {**inputs, **weights}
    args = [np.asarray(values[a.name], dtype=a.program_dtype) for a in artifact.args]
    results = run_stablehlo(artifact.stablehlo, args)
    return {o.name: r for o, r in zip(artifact.outputs, results)}
