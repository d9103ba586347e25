"""Errors a user can act on.

Every error raised for bad input carries the complete list of problems found, so a user fixes them all in one go
instead of meeting them one by one. The CLI prints the message without a traceback.
"""

from __future__ import annotations


class CipherdmError(Exception):
    """Base class for errors caused by the user's input or environment (not by a bug in cipherdm)."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        super().__init__(self.render())

    def render(self) -> str:
        if not self.problems:
            return self.summary
        if len(self.problems) == 1:
            return f"{self.summary}: {self.problems[0]}"
        return f"{self.summary} ({len(self.problems)} problems): " + "; ".join(self.problems)


class ModelLoadError(CipherdmError):
    """The file is missing, is not ONNX, is corrupt or fails the ONNX checker."""


class DynamicShapeError(CipherdmError):
    """An input has a symbolic or unknown dimension and no --input-shape fixes it."""


class UnsupportedOpsError(CipherdmError):
    """The graph uses operators cipherdm cannot lower."""


class LoweringError(CipherdmError):
    """A node could not be lowered (for instance a value that must be static is computed at run time)."""
