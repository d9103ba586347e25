"""Calibration: run the float model on representative inputs and record what each rewritten node sees.

For diffusion the calibration inputs are collected along a plaintext sampling trajectory (one case per step), so
the recorded ranges are the ones the secure sampler will meet. The float model runs in onnxruntime, which is
independent of cipherdm's own lowering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from compiler.errors import CipherdmError
from compiler.lowering import TensorSpec

MAX_KEPT_CASES = 4


@dataclass
class TensorStats:
    low: float
    high: float
    cases: list[np.ndarray]  # up to MAX_KEPT_CASES full tensors, for error measurement on real data
    # per summary (passes/choose.py: summaries_for), one small array per case, of every case: what the choice
    # bounds (a norm's group variances, a softmax's row statistics) must hold on the whole set, and along a
    # trajectory its extremes fall between the kept cases
    summaries: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high, "cases": len(self.cases)}


def split_cases(arrays: dict[str, np.ndarray], specs: list[TensorSpec],
                what: str = "calibration data") -> list[dict[str, np.ndarray]]:
    """calib.npz holds each input either at its exact shape (one case) or with a leading cases axis."""
    problems, counts = [], set()
    stacked = {}
    for spec in specs:
        if spec.name not in arrays:
            problems.append(f"input '{spec.name}' is missing")
            continue
        value = np.asarray(arrays[spec.name])
        if value.shape == spec.shape:
            stacked[spec.name] = value[None]
        elif value.shape[1:] == spec.shape:
            stacked[spec.name] = value
        else:
            problems.append(f"input '{spec.name}' has shape {list(value.shape)}, expected {list(spec.shape)} "
                            f"or [K, {', '.join(map(str, spec.shape))}]")
            continue
        counts.add(stacked[spec.name].shape[0])
    if len(counts) > 1:
        problems.append(f"inputs hold different numbers of cases: {sorted(counts)}")
    if problems:
        raise CipherdmError(f"{what} does not fit the model", problems)
    count = counts.pop() if counts else 0
    return [{name: stacked[name][i].astype(spec.dtype) for name, spec in zip(stacked, specs)} for i in range(count)]


def probe_session(model: onnx.ModelProto, names) -> tuple[ort.InferenceSession, list[str]]:
    """An onnxruntime session of ``model`` that also outputs the intermediate tensors ``names``, and the names of
    all its outputs in the order ``run`` returns them."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name and name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, [o.name for o in session.get_outputs()]


def calibrate(model: onnx.ModelProto, watched: list[str], cases: list[dict[str, np.ndarray]],
              summaries: dict[str, dict[str, Callable]] | None = None) -> dict[str, TensorStats]:
    """Range and sample values of every ``watched`` tensor over all ``cases``; ``summaries[name][key](value)``
    is kept for every case."""
    session, out_names = probe_session(model, watched)
    stats: dict[str, TensorStats] = {}
    # Keep cases spread over the whole set (a trajectory's early and late steps see different ranges).
    kept = set(np.linspace(0, len(cases) - 1, min(len(cases), MAX_KEPT_CASES)).round().astype(int).tolist())
    for index, case in enumerate(cases):
        values = dict(zip(out_names, session.run(None, case)))
        for name in watched:
            value = np.asarray(values[name], np.float64)
            entry = stats.get(name)
            if entry is None:
                stats[name] = TensorStats(float(value.min()), float(value.max()), [value])
            else:
                entry.low = min(entry.low, float(value.min()))
                entry.high = max(entry.high, float(value.max()))
                if index in kept:
                    entry.cases.append(value)
            for key, summary in (summaries or {}).get(name, {}).items():
                stats[name].summaries.setdefault(key, []).append(np.asarray(summary(value)))
    return stats
