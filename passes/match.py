"""What a rule returns: a Match (nodes to fold into one canonical op) or a Decline (and why)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

# The canonical ops the passes know, as named in report.json's `pattern` field.
PATTERNS = ("silu", "mish", "gelu", "softmax", "group_norm", "layer_norm", "attention", "sigmoid", "tanh", "exp",
            "reciprocal", "rsqrt")


@dataclass
class Match:
    pattern: str
    root: onnx.NodeProto               # its first output becomes the canonical node's output
    nodes: list[onnx.NodeProto]        # every original node the canonical node replaces (root included)
    inputs: list[str]                  # canonical inputs: x, then scale/bias for the norms
    attrs: dict = field(default_factory=dict)  # semantics: approximate, axis, epsilon, num_groups, ...

    @property
    def output(self) -> str:
        return self.root.output[0]


@dataclass
class Decline:
    pattern: str
    nodes: list[str]
    reason: str

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "nodes": self.nodes, "reason": self.reason}
