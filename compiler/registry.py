"""Registry of op lowerings: one small function per ONNX op, keyed by (domain, op_type) and the opset it starts at.

A lowering has the signature ``fn(ctx: NodeContext) -> value | tuple[value, ...]`` and is registered with::

    @register("Conv")
    def conv(ctx): ...

    @register("Split", since=18)      # semantics changed at opset 18
    def split_18(ctx): ...

The lookup picks, for a model's opset, the registration with the largest ``since`` not above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DEFAULT_DOMAINS = ("", "ai.onnx")
CIPHERDM_DOMAIN = "cipherdm"


@dataclass(frozen=True)
class Lowering:
    domain: str
    op_type: str
    since: int
    fn: Callable
    # Inputs the lowering needs at compile time even when a float initializer holds them (Resize's scales): the
    # loader turns such initializers into constants instead of weight arguments.
    static_inputs: tuple[int, ...] = ()


_REGISTRY: dict[tuple[str, str], list[Lowering]] = {}


def _canonical_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def register(op_type: str, *, domain: str = "", since: int = 1, static_inputs: tuple[int, ...] = ()):
    """Decorator: register ``fn`` as the lowering of ``domain::op_type`` from opset ``since`` on.

    ``static_inputs`` lists the inputs that must be compile-time values even when they are float initializers.
    """

    def decorate(fn):
        key = (_canonical_domain(domain), op_type)
        entries = _REGISTRY.setdefault(key, [])
        if any(e.since == since for e in entries):
            raise ValueError(f"duplicate lowering for {domain or 'ai.onnx'}::{op_type} since opset {since}")
        entries.append(Lowering(key[0], op_type, since, fn, tuple(static_inputs)))
        entries.sort(key=lambda e: e.since)
        return fn

    return decorate


def lookup(domain: str, op_type: str, opset: int) -> Lowering | None:
    """The lowering for ``op_type`` at ``opset``, or None when cipherdm has none."""
    _ensure_ops_loaded()
    entries = _REGISTRY.get((_canonical_domain(domain), op_type), [])
    chosen = None
    for entry in entries:
        if entry.since <= opset:
            chosen = entry
    return chosen


def supported_ops() -> dict[tuple[str, str], list[int]]:
    """Every registered (domain, op_type) with the opsets its lowerings start at."""
    _ensure_ops_loaded()
    return {key: [e.since for e in entries] for key, entries in sorted(_REGISTRY.items())}


_loaded = False


def _ensure_ops_loaded():
    # Importing the op modules fills the registry; done lazily so `registry` itself has no import cycle.
    global _loaded
    if not _loaded:
        _loaded = True
        import compiler.ops  # noqa: F401
