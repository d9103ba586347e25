"""The protocol interface, the registry the rewrite passes choose from, and the cipherdm:: node schema.

A :class:`Protocol` is one variant of one op (for instance SiLU as a degree-5 polynomial in |x|/8 with exact
asymptotes beyond |x| = 8): its parameters and fitted coefficients, the SPU knobs it needs, and the same math
read four ways (numpy float64 emulation, JAX for SPU, ONNX function body, cost count; see
:mod:`runtime.protocols.backends`). Every op also has a ``direct`` variant (the plain expression with SPU's
defaults, what the compiler runs without rewrites) and ``knob`` variants (the plain expression under other SPU
settings), so costs before and after a rewrite come from one model.

Choosing (what the passes use)::

    from runtime.protocols import variants, get, direct
    for p in variants("silu"):                       # cheapest first (bytes per element)
        err = p.error(calibration_samples)["max"]    # numpy emulation vs the float64 reference
        if err <= budget and p.covers(low, high):    # the calibrated range lies where the output is sane
            break
    p.cost(shape)                                    # Cost(bytes, rounds, comparisons) on ABY3/FM64
    p.knobs                                          # SpuKnobs(runtime={...}, compiler={...}) it needs

The cipherdm:: node schema (see :func:`to_onnx_attributes`):

* op_type: ``SiLU``, ``Mish``, ``GELU``, ``Sigmoid``, ``Tanh``, ``Exp``, ``SoftMax``, ``Reciprocal``, ``Rsqrt``,
  ``GroupNorm``, ``LayerNorm``; domain ``cipherdm`` (opset version 1); ``overload`` = the protocol name, so a
  model can hold several variants of one op, each with its own FunctionProto (ONNX IR >= 10).
* inputs: X (GroupNorm/LayerNorm: X, scale, bias; GroupNorm's scale/bias have one value per channel, LayerNorm's
  the shape of the normalised trailing dims; the LayerNorm function body needs the bias input); one output Y.
* ``protocol`` (STRING): the variant name, e.g. ``silu.pw.b8.d6``.
* ``family`` (STRING): the implementation family (``direct``, ``abs_piecewise``, ``exp_square``, ...).
* ``params`` (STRING): canonical JSON of every parameter and coefficient; authoritative for the lowering, so a
  rewritten graph computes the same thing even after the registry is refitted.
* ``spu_knobs`` (STRING, only when the variant needs any): JSON {"runtime": {...}, "compiler": {...}}. SPU
  knobs hold for a whole program: the compile step must apply them, and the chooser must not mix conflicting
  ones (:meth:`SpuKnobs.conflicts`).
* readable copies of the main parameters (``interval`` FLOATS, ``bound`` FLOAT, ``degree`` INT, ``breaks``
  FLOATS, ``coefficients`` FLOATS (all polynomials flattened), ``lower`` FLOAT, ``squarings`` INT,
  ``newton_steps`` INT, ``clamp`` INT): for Netron and the report; the lowering checks they agree with
  ``params``.
* attributes of the op itself: SoftMax ``axis`` (INT); GroupNorm ``num_groups`` (INT), ``epsilon`` (FLOAT);
  LayerNorm ``axis`` (INT, first normalised axis), ``epsilon`` (FLOAT); GELU ``approximate`` ("none" | "tanh":
  which float reference the node stands for).
* a node without ``protocol`` is a canonical node: it computes the op's plain expression (the direct variant).
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.protocols.backends import AttrRef, Backend, CostBackend, JaxBackend, NumpyBackend, OnnxBackend, Sym
from runtime.protocols.cost_model import load_table

DOMAIN = "cipherdm"
DOMAIN_VERSION = 1
COEFF_DIR = Path(__file__).resolve().parent / "coefficients"
OPS = ("silu", "mish", "gelu", "sigmoid", "tanh", "exp", "softmax", "reciprocal", "rsqrt", "group_norm",
       "layer_norm")
OP_TYPES = {
    "silu": "SiLU", "mish": "Mish", "gelu": "GELU", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp",
    "softmax": "SoftMax", "reciprocal": "Reciprocal", "rsqrt": "Rsqrt", "group_norm": "GroupNorm",
    "layer_norm": "LayerNorm",
}
OP_OF_TYPE = {v: k for k, v in OP_TYPES.items()}
ELEMENTWISE = ("silu", "mish", "gelu", "sigmoid", "tanh", "exp", "reciprocal", "rsqrt")
INPUT_NAMES = {"group_norm": ("X", "scale", "bias"), "layer_norm": ("X", "scale", "bias")}
# Attributes of the op itself (not of the protocol): name -> (ONNX type, default).
OP_ATTRIBUTES = {
    "softmax": {"axis": ("int", -1)},
    "group_norm": {"num_groups": ("int", None), "epsilon": ("float", 1e-5)},
    "layer_norm": {"axis": ("int", -1), "epsilon": ("float", 1e-5)},
    "gelu": {"approximate": ("string", "none")},
}
SCHEMA_ATTRIBUTES = ("protocol", "family", "params", "spu_knobs")
# params keys mirrored as typed attributes (readable in Netron); "coefficients" is built from the polynomials.
MIRRORED = ("interval", "bound", "degree", "breaks", "lower", "squarings", "newton_steps", "clamp")


# ---------------------------------------------------------------------------------------------------------------
# small value types


@dataclass(frozen=True)
class SpuKnobs:
    """SPU settings a protocol needs: RuntimeConfig fields and CompilerOptions fields."""
    runtime: dict = field(default_factory=dict)
    compiler: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.runtime or self.compiler)

    def to_json(self) -> dict:
        return {"runtime": dict(self.runtime), "compiler": dict(self.compiler)}

    @classmethod
    def from_json(cls, data: dict | None) -> "SpuKnobs":
        data = data or {}
        return cls(dict(data.get("runtime", {})), dict(data.get("compiler", {})))

    def conflicts(self, other: "SpuKnobs") -> list[str]:
        """Settings both set to different values (SPU knobs hold for a whole program)."""
        out = []
        for section in ("runtime", "compiler"):
            mine, theirs = getattr(self, section), getattr(other, section)
            out += [f"{section}.{k}: {mine[k]!r} vs {theirs[k]!r}" for k in sorted(mine.keys() & theirs.keys())
                    if mine[k] != theirs[k]]
        return out

    def merged(self, other: "SpuKnobs") -> "SpuKnobs":
        problems = self.conflicts(other)
        if problems:
            raise ValueError("conflicting SPU knobs: " + "; ".join(problems))
        return SpuKnobs({**self.runtime, **other.runtime}, {**self.compiler, **other.compiler})


@dataclass(frozen=True)
class Cost:
    """Estimated 3-party bytes and communication rounds of one protocol call on ABY3/FM64."""
    bytes: float
    rounds: int
    comparisons: int = 0          # compared elements (secure comparisons)
    breakdown: dict = field(default_factory=dict)

    @property
    def mib(self) -> float:
        return self.bytes / 2 ** 20

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "rounds": self.rounds, "comparisons": self.comparisons,
                "breakdown": dict(self.breakdown)}


# ---------------------------------------------------------------------------------------------------------------
# families and per-op modules

_FAMILIES: dict[str, Callable] = {}


def family(name: str):
    """Register ``evaluate(bk, protocol, inputs, **kw)`` as the implementation of a family."""
    def decorate(fn):
        if name in _FAMILIES and _FAMILIES[name] is not fn:
            raise ValueError(f"family {name} registered twice")
        _FAMILIES[name] = fn
        return fn
    return decorate


def op_module(op: str):
    if op not in OPS:
        raise ValueError(f"unknown op '{op}' (one of {', '.join(OPS)})")
    return importlib.import_module(f"runtime.protocols.{op}")


def _family_fn(name: str) -> Callable:
    if name not in _FAMILIES:
        import runtime.protocols.families  # noqa: F401  (registers the shared families)
    if name not in _FAMILIES:
        raise ValueError(f"unknown protocol family '{name}' (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


# ---------------------------------------------------------------------------------------------------------------
# Protocol


@dataclass(frozen=True, eq=False)
class Protocol:
    name: str
    op: str
    family: str
    params: dict
    knobs: SpuKnobs = field(default_factory=SpuKnobs)
    interval: tuple | None = None        # where the approximation was fitted (softmax: of x - max(x))
    sane: tuple = (-math.inf, math.inf)  # inputs for which the output stays sane (bounded, right sign)
    description: str = ""
    fit: dict = field(default_factory=dict)  # fit statistics from the coefficient file

    # --- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, backend: Backend, *inputs, **kw):
        return _family_fn(self.family)(backend, self, list(inputs), **kw)

    def jax_fn(self, *inputs, **kw):
        """The JAX computation for SPU (jnp ops only; no chlo, no random numbers, no data-dependent loops)."""
        return self.evaluate(JaxBackend(), *inputs, **kw)

    def numpy_fn(self, *inputs, **kw):
        """Plaintext float64 emulation with the same math as :meth:`jax_fn`."""
        arrays = [None if a is None else np.asarray(a, np.float64) for a in inputs]
        return self.evaluate(NumpyBackend(self.knobs.to_json()), *arrays, **kw)

    def reference(self, *inputs, **kw):
        """The float64 reference of the op (what the protocol approximates)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if self.op == "gelu" and "approximate" not in kw and "approximate" in self.params:
            kw["approximate"] = self.params["approximate"]
        arrays = [None if a is None else np.asarray(a, np.float64) for a in inputs]
        return op_module(self.op).reference(*arrays, **kw)

    def error(self, *inputs, reference: Callable | None = None, **kw) -> dict:
        """Absolute error of the numpy emulation against the reference (or ``reference(*inputs)``).

        GELU takes ``approximate`` ("none" | "tanh") to pick the float reference."""
        ref_kw = dict(kw)
        kw = {k: v for k, v in kw.items() if k != "approximate"}
        got = self.numpy_fn(*inputs, **kw)
        want = reference(*inputs) if reference is not None else self.reference(*inputs, **ref_kw)
        diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
        return {"max": float(np.max(diff)) if diff.size else 0.0,
                "mean": float(np.mean(diff)) if diff.size else 0.0}

    def max_error(self, interval: tuple | None = None, n: int = 20001, **kw) -> float:
        """Largest error over ``interval`` (default: the fitted one) on the op's standard sample set."""
        mod = op_module(self.op)
        samples = mod.samples(interval or self.interval or mod.DEFAULT_INTERVAL, n)
        return self.error(*samples, **{**getattr(mod, "SAMPLE_KW", {}), **kw})["max"]

    @property
    def measured(self) -> dict | None:
        """This variant as measured under SPU by tools/measure_protocols.py (bytes, rounds, spu_max_error on
        ~2^16 inputs spread over its interval), or None. The numpy emulation does not model fixed-point
        rounding: where ``spu_max_error`` is much larger than the emulated error, trust the former."""
        from runtime.protocols.cost_model import load_table
        name = self.name.split("@")[0]   # a variant specialised to a node (softmax's U) is measured as its base
        for m in load_table().data.get("measurements", []):
            if m["protocol"] == name:
                return m
        return None

    def spu_deviation(self, fraction_bits: int | None = None) -> float:
        """Max |SPU's output - the float emulation| as measured, at the most fraction bits measured that do not
        exceed ``fraction_bits`` (fixed-point rounding shrinks with more bits); SPU's default 18 otherwise."""
        m = self.measured or {}
        by_bits = m.get("by_fraction_bits", {})
        usable = [int(b) for b in by_bits if fraction_bits is not None and int(b) <= fraction_bits]
        if usable:
            return float(by_bits[str(max(usable))]["spu_vs_emulation"])
        return float(m.get("spu_vs_emulation", 0.0))

    def covers(self, low: float, high: float) -> bool:
        """Whether inputs in [low, high] keep the output sane (no wrap-around or divergence)."""
        return self.sane[0] <= low and high <= self.sane[1]

    # --- cost ------------------------------------------------------------------------------------------
    def cost(self, shape: Sequence[int] | int, axis: int | None = None, program_knobs: SpuKnobs | None = None,
             **kw) -> Cost:
        """Estimated bytes and rounds for one call on a secret input of ``shape`` (ABY3/FM64).

        SoftMax: ``axis`` (default -1); GroupNorm: ``num_groups`` (pass it; default 1); LayerNorm: ``axis``
        (first normalised axis, default -1). ``program_knobs``: SPU knobs the whole program runs with (they also
        change the SPU functions a protocol calls, e.g. softmax's per-row reciprocal); the protocol's own knobs
        are added on top."""
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
        knobs = self.knobs if program_knobs is None else program_knobs.merged(self.knobs)
        backend = CostBackend(load_table(), knobs.to_json())
        inputs = [Sym(shape)]
        kw = {k: v for k, v in kw.items() if k != "approximate"}
        if self.op == "group_norm":
            inputs += [Sym((shape[1],)), Sym((shape[1],))]
            kw.setdefault("num_groups", 1)
            kw.setdefault("epsilon", 1e-5)
        elif self.op == "layer_norm":
            ax = (axis if axis is not None else kw.pop("axis", -1)) % len(shape)
            inputs += [Sym(shape[ax:]), Sym(shape[ax:])]
            kw["axis"] = ax
            kw.setdefault("epsilon", 1e-5)
        elif self.op == "softmax":
            kw["axis"] = -1 if axis is None else axis
        self.evaluate(backend, *inputs, **kw)
        t = backend.tally
        return Cost(t.bytes, t.rounds, t.comparisons, dict(t.breakdown))

    def comparisons_per_element(self, shape=(1 << 16,), **kw) -> float:
        c = self.cost(shape, **kw)
        return c.comparisons / int(np.prod(shape))

    # --- ONNX ------------------------------------------------------------------------------------------
    @property
    def op_type(self) -> str:
        return OP_TYPES[self.op]

    def to_onnx_attributes(self) -> dict:
        return to_onnx_attributes(self)

    def function_proto(self, opset: int = 18, overload: str | None = None):
        return function_proto(self, opset, overload)

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "family": self.family, "params": self.params,
                "spu_knobs": self.knobs.to_json(), "interval": list(self.interval) if self.interval else None,
                "sane": [_json_float(v) for v in self.sane], "description": self.description, "fit": self.fit}

    def __repr__(self) -> str:
        return f"Protocol({self.name})"


def _json_float(v):
    return float(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _from_json_float(v):
    return float(v) if not isinstance(v, str) else (math.inf if v == "inf" else -math.inf)


def protocol_from_json(data: dict) -> Protocol:
    return Protocol(
        name=data["name"], op=data["op"], family=data["family"], params=data["params"],
        knobs=SpuKnobs.from_json(data.get("spu_knobs")),
        interval=tuple(data["interval"]) if data.get("interval") else None,
        sane=tuple(_from_json_float(v) for v in data.get("sane", ["-inf", "inf"])),
        description=data.get("description", ""), fit=data.get("fit", {}))


def load_fitted(op: str) -> list[Protocol]:
    """The fitted variants stored in coefficients/<op>.json (written by ``python -m runtime.protocols.fit``)."""
    path = COEFF_DIR / f"{op}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [protocol_from_json(v) for v in data.get("variants", [])]


# ---------------------------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, list[Protocol]] | None = None
_BY_NAME: dict[str, Protocol] = {}


def _load_all() -> dict[str, list[Protocol]]:
    global _REGISTRY
    if _REGISTRY is None:
        registry: dict[str, list[Protocol]] = {}
        by_name: dict[str, Protocol] = {}
        for op in OPS:
            registry[op] = list(op_module(op).variants())
            for p in registry[op]:
                if p.name in by_name:
                    raise ValueError(f"two protocols named {p.name}")
                by_name[p.name] = p
        _BY_NAME.clear()
        _BY_NAME.update(by_name)
        _REGISTRY = registry
    return _REGISTRY


def reload_registry() -> None:
    """Forget loaded variants and costs (after refitting coefficients or remeasuring)."""
    global _REGISTRY
    _REGISTRY = None
    from runtime.protocols.cost_model import reload_table
    reload_table()


_REFERENCE_SHAPE = {"softmax": (256, 256), "group_norm": (1, 64, 32, 32), "layer_norm": (256, 256)}


def reference_shape(op: str) -> tuple:
    """The shape variants are ranked at (2^16 elements)."""
    return _REFERENCE_SHAPE.get(op, (1 << 16,))


def reference_kwargs(op: str) -> dict:
    return {"num_groups": 32} if op == "group_norm" else {}


def variants(op: str) -> list[Protocol]:
    """Every protocol for ``op``, cheapest first (estimated bytes on 2^16 elements)."""
    protos = _load_all()[op]
    return sorted(protos, key=lambda p: (p.cost(reference_shape(op), **reference_kwargs(op)).bytes, p.name))


def get(name: str) -> Protocol:
    _load_all()
    if name not in _BY_NAME:
        raise KeyError(f"no protocol named '{name}'")
    return _BY_NAME[name]


def all_protocols() -> list[Protocol]:
    return [p for op in OPS for p in _load_all()[op]]


def direct(op: str, **kw) -> Protocol:
    """The plain expression with SPU's defaults (GELU: ``approximate`` "none" or "tanh")."""
    return op_module(op).direct_variant(**kw)


def cheapest(op: str, budget: float, samples: Sequence | None = None, *, low: float | None = None,
             high: float | None = None, shape=None, exclude_knobs: bool = False, **kw):
    """The cheapest variant whose max error on ``samples`` (a tuple of inputs; default: a dense grid of
    [low, high]) is within ``budget`` and whose sane range covers [low, high]: (protocol, error) or None.

    A convenience for the chooser; ``kw`` are the op's attributes (axis, num_groups, epsilon, approximate)."""
    shape = shape or reference_shape(op)
    cost_kw = {k: v for k, v in kw.items() if k in ("num_groups", "axis")}
    ranked = sorted(_load_all()[op], key=lambda p: (p.cost(shape, **cost_kw).bytes, p.name))
    for p in ranked:
        if exclude_knobs and p.knobs:
            continue
        if low is not None and high is not None and not p.covers(low, high):
            continue
        if samples is None:
            err = p.error(*op_module(op).samples((low, high), 20001), **kw)
        else:
            err = p.error(*samples, **kw)
        if err["max"] <= budget:
            return p, err
    return None


# ---------------------------------------------------------------------------------------------------------------
# ONNX attribute schema


def _flat_coefficients(params: dict) -> list[float] | None:
    """Every coefficient list (keys "coeffs", "pos", "neg") in params, depth first, keys sorted."""
    out: list[float] = []

    def walk(value):
        if isinstance(value, dict):
            for key in sorted(value):
                if key in ("coeffs", "pos", "neg") and isinstance(value[key], list):
                    out.extend(float(c) for c in value[key])
                else:
                    walk(value[key])
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, (dict, list)):
                    walk(item)
    walk(params)
    return out or None


def to_onnx_attributes(protocol: Protocol) -> dict:
    """The protocol's attributes for a cipherdm:: node (the op's own attributes are added by the pass)."""
    attrs: dict[str, Any] = {
        "protocol": protocol.name,
        "family": protocol.family,
        "params": json.dumps(protocol.params, sort_keys=True, separators=(",", ":")),
    }
    if protocol.knobs:
        attrs["spu_knobs"] = json.dumps(protocol.knobs.to_json(), sort_keys=True, separators=(",", ":"))
    for key in MIRRORED:
        if key in protocol.params:
            value = protocol.params[key]
            if isinstance(value, bool):
                attrs[key] = int(value)
            elif isinstance(value, str):
                attrs[key] = value
            elif isinstance(value, (list, tuple)):
                if value:  # ONNX cannot type an empty list attribute; params keeps the empty list
                    attrs[key] = [float(v) for v in value]
            elif isinstance(value, int):
                attrs[key] = int(value)
            else:
                attrs[key] = float(value)
    coeffs = _flat_coefficients(protocol.params)
    if coeffs:
        attrs["coefficients"] = coeffs
    return attrs


def from_onnx_attributes(attrs: dict, op: str | None = None, op_type: str | None = None) -> Protocol:
    """The protocol a cipherdm:: node stands for; ``attrs`` as decoded by compiler.interpreter.attribute_dict.

    No ``protocol`` attribute: the canonical node's plain expression (direct variant). Raises ValueError naming
    every inconsistency between ``params`` and the readable copies."""
    op = op or OP_OF_TYPE.get(op_type or "")
    if op is None:
        raise ValueError(f"unknown cipherdm op type '{op_type}'")
    name = attrs.get("protocol")
    if not name:
        return direct(op, **({"approximate": attrs.get("approximate", "none")} if op == "gelu" else {}))
    family_name = attrs.get("family")
    raw = attrs.get("params")
    if family_name is None or raw is None:
        try:
            known = get(name)
        except KeyError:
            raise ValueError(f"node names protocol '{name}' but carries no family/params and the registry has "
                             "no such protocol") from None
        if known.op != op:
            raise ValueError(f"protocol '{name}' is a {known.op} protocol, not {op}")
        return known
    problems = []
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"protocol '{name}': params is not valid JSON ({exc})") from None
    try:
        _family_fn(family_name)
    except ValueError as exc:
        problems.append(str(exc))
    knobs = SpuKnobs()
    if attrs.get("spu_knobs"):
        try:
            knobs = SpuKnobs.from_json(json.loads(attrs["spu_knobs"]))
        except json.JSONDecodeError as exc:
            problems.append(f"spu_knobs is not valid JSON ({exc})")
    probe = Protocol(name, op, family_name, params, knobs)
    for key, want in to_onnx_attributes(probe).items():
        if key in SCHEMA_ATTRIBUTES or key not in attrs:
            continue
        if not _close(attrs[key], want):
            problems.append(f"attribute '{key}' = {attrs[key]!r} disagrees with params ({want!r})")
    if problems:
        raise ValueError(f"cipherdm node with protocol '{name}': " + "; ".join(problems))
    try:
        known = get(name)
        interval, sane, description, fit = known.interval, known.sane, known.description, known.fit
    except KeyError:
        interval, sane, description, fit = params.get("interval"), (-math.inf, math.inf), "", {}
    return Protocol(name, op, family_name, params, knobs, tuple(interval) if interval else None, sane,
                    description, fit)


def _close(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple)):
        a, b = list(np.ravel(a)), list(np.ravel(b))
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    # float attributes are float32
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def runtime_kwargs(op: str, attrs: dict) -> dict:
    """The op's own attributes of a node, as keyword arguments of jax_fn / numpy_fn."""
    out = {}
    for key, (_, default) in OP_ATTRIBUTES.get(op, {}).items():
        if op == "gelu":
            continue
        value = attrs.get(key, default)
        if value is None:
            raise ValueError(f"cipherdm::{OP_TYPES[op]} needs the '{key}' attribute")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# ONNX function bodies


def function_proto(protocol: Protocol, opset: int = 18, overload: str | None = None):
    """An ONNX FunctionProto (domain cipherdm, name = op type, overload = protocol name) with the protocol's
    plaintext semantics, built from the same code as numpy_fn (computing in float32 in onnxruntime). ``opset``
    must be the model's default-domain opset (the checker requires functions to import the same version)."""
    from onnx import helper

    bk = OnnxBackend(int(opset))
    input_names = list(INPUT_NAMES.get(protocol.op, ("X",)))
    kw = {key: AttrRef(key, typ) for key, (typ, _) in OP_ATTRIBUTES.get(protocol.op, {}).items()
          if typ in ("int", "float")}
    out = protocol.evaluate(bk, *input_names, **kw)
    bk.nodes.append(helper.make_node("Identity", [out], ["Y"]))
    attribute_names = list(SCHEMA_ATTRIBUTES) + list(MIRRORED) + ["coefficients"]
    defaults = []
    for key, (typ, default) in OP_ATTRIBUTES.get(protocol.op, {}).items():
        if default is None:
            attribute_names.append(key)
        else:
            defaults.append(helper.make_attribute(key, default))
    fn = helper.make_function(DOMAIN, protocol.op_type, input_names, ["Y"], bk.nodes,
                              [helper.make_opsetid("", int(opset))], attributes=attribute_names)
    fn.attribute_proto.extend(defaults)
    fn.overload = protocol.name if overload is None else overload
    fn.doc_string = f"cipherdm protocol {protocol.name}: {protocol.description}"
    return fn


def make_node(protocol: Protocol, inputs: Sequence[str], output: str, name: str = "", **op_attrs):
    """A cipherdm:: node running ``protocol`` (its function body comes from :func:`function_proto`)."""
    from onnx import helper
    attrs = {**to_onnx_attributes(protocol), **op_attrs}
    node = helper.make_node(protocol.op_type, list(inputs), [output], name=name or None, domain=DOMAIN, **attrs)
    node.overload = protocol.name
    return node


def add_functions(model, protocols: Sequence[Protocol], opset: int | None = None) -> None:
    """Attach the function bodies of ``protocols`` to ``model`` (once each), import the cipherdm domain and
    raise the IR version to 10 (function overloads)."""
    from onnx import helper
    if opset is None:
        opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] + [13])
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    for p in protocols:
        key = (DOMAIN, p.op_type, p.name)
        if key not in have:
            model.functions.append(function_proto(p, opset))
            have.add(key)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, 10)
