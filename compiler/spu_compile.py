"""ONNX -> (MPC rewrites) -> JAX -> StableHLO -> SPU executable.

:func:`compile_model` does the whole chain and returns a :class:`CompiledProgram`, everything the artifact
(``compiler.artifact``) stores plus the model owner's weights, which are kept apart.

The program's arguments are the model inputs (in graph order) followed by the weights (float initializers, in
initializer order); SPU maps executable input names to arguments by position, so the names are the ONNX names.
Each argument has a role:

* ``user``: a secret input of the user (the default for model inputs); the user also receives every output.
* ``public``: an input every party knows (``--public NAME``; for diffusion the timestep). Not secret-shared.
* ``model_owner``: a weight, secret-shared by the model owner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax
import numpy as np
import onnx

from compiler.deallocation import OPTION, drop_small_frees, keep_all_values
from compiler.errors import CipherdmError
from compiler.lowering import LoweredModel, TensorSpec, is_weight, lower
from passes.prescale_activation import restore_divided_weights
from passes.public import public_initializers
from runtime import fxp_scale
from runtime.spu_config import SecureConfig, compiler_options

USER, PUBLIC, MODEL_OWNER = "user", "public", "model_owner"
ROLES = (USER, PUBLIC, MODEL_OWNER)
REWRITE_MODES = ("direct", "cipherdm")


class CompileError(CipherdmError):
    """The model could not be compiled to an SPU program."""


@dataclass(frozen=True)
class ArgSpec:
    """One argument of the program: a model input or a weight."""
    name: str
    shape: tuple[int, ...]
    dtype: str          # as the ONNX graph declares it
    program_dtype: str  # what the traced program receives (jax without x64: int64 -> int32, float64 -> float32)
    role: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "program_dtype": self.program_dtype, "role": self.role}

    @classmethod
    def from_json(cls, d: dict) -> "ArgSpec":
        return cls(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"], d["program_dtype"], d["role"])


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    receiver: str = USER

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "receiver": self.receiver}

    @classmethod
    def from_json(cls, d: dict) -> "OutputSpec":
        return cls(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"], d.get("receiver", USER))


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    report: dict
    config: SecureConfig


def rewrite_for_mpc(model: onnx.ModelProto, config: SecureConfig, mode: str = "cipherdm",
                    public: tuple[str, ...] = (), calibration: list[dict] | None = None,
                    budget: float | None = None, calibration_source: str | None = None,
                    model_error: float | None = None, auto_fraction_bits: bool = False,
                    network=None, validation: list[dict] | None = None,
                    validation_source: str | None = None) -> RewriteResult:
    """Run the MPC rewrite passes (``passes.pipeline``) and fold the SPU knobs they need into the config.

    ``mode == "direct"`` compiles the graph as it is, the baseline every rewrite is measured against; its report
    lists what the passes would have rewritten. ``public`` names the inputs every party knows; ``calibration``
    (input dicts, one per case) and ``budget`` (max abs error per node) drive the per-node protocol choice;
    ``model_error`` (max abs output error / output std on the calibration cases, 0 = no check) bounds the whole
    model's float error by tightening the budgets where needed (passes/model_check.py). ``auto_fraction_bits``:
    the fixed-point fraction bits are chosen from the calibrated value range (passes/fixed_point.py), recorded in
    the report; without calibration the config's bits stay. ``network`` (a passes.network.Network): rank the
    protocols by their estimated time on it instead of by bytes. ``validation`` (input dicts): held-out cases the
    final rewritten graph's float error is measured on, for the report only.
    """
    from passes.pipeline import DEFAULT_BUDGET, DEFAULT_MODEL_ERROR, direct_report, rewrite

    if mode not in REWRITE_MODES:
        raise CompileError(f"unknown rewrite mode '{mode}'", [f"choose one of {', '.join(REWRITE_MODES)}"])
    if mode == "direct":
        return RewriteResult(model, direct_report(model, set(public)), config)
    fixed_point_note = {}
    if auto_fraction_bits:
        # First: the protocol choice depends on how precise SPU's run of each protocol is at these bits.
        config = _with_fraction_bits(config, model, calibration, fixed_point_note, set(public))
    with fxp_scale.fraction_bits(config.fxp_bits):   # the cost model counts the means' truncations at these bits
        result = rewrite(model, public_inputs=set(public), calibration=calibration,
                         budget=DEFAULT_BUDGET if budget is None else budget, calibration_source=calibration_source,
                         model_error=DEFAULT_MODEL_ERROR if model_error is None else model_error,
                         fraction_bits=int(config.fxp_bits), network=network, validation=validation,
                         validation_source=validation_source)
    result.report.update(fixed_point_note)
    if result.knobs.runtime:
        config = config.with_runtime(**result.knobs.runtime)
    if result.knobs.compiler:
        config = config.with_compiler(**result.knobs.compiler)
    return RewriteResult(result.model, result.report, config)


def _with_fraction_bits(config: SecureConfig, model: onnx.ModelProto, calibration, report: dict,
                        public: set[str]) -> SecureConfig:
    from dataclasses import replace

    from passes import fixed_point
    from passes.model_check import pick_cases

    if not calibration or config.field not in ("FM64", "FM128"):
        why = "no calibration data" if not calibration else f"{config.field} keeps the given bits"
        report["fixed_point"] = {"fraction_bits": int(config.fxp_bits), "chosen": False,
                                 "note": f"{config.fxp_bits} fraction bits ({why})"}
        return config
    from passes.public import public_tensors

    bound, public_bound = fixed_point.value_bound(model, pick_cases(calibration), public_tensors(model, public))
    bits = fixed_point.fraction_bits(bound, config.field, public_bound)
    report["fixed_point"] = {
        "fraction_bits": bits, "chosen": True, "value_bound": bound, "public_value_bound": public_bound,
        "margin": fixed_point.MARGIN,
        "note": f"{bits} fraction bits: the largest secret value on the calibration cases is {bound:.4g} (public: "
                f"{public_bound:.4g}); with a margin of {fixed_point.MARGIN:g}x the secret bound and its square stay "
                f"clear of the {config.field} ring while a product is untruncated (at most {fixed_point.MAX_BITS})"}
    return replace(config, fxp_bits=bits)


@dataclass
class CompiledProgram:
    name: str
    config: SecureConfig
    rewrites: str
    args: list[ArgSpec]
    outputs: list[OutputSpec]
    executable: bytes       # serialized libspu.Executable
    stablehlo: str
    onnx_graph: bytes       # the lowered ONNX model, weights removed (they are graph inputs instead)
    report: dict
    weights: dict[str, np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)
    # The float model before the MPC rewrites (weights removed the same way), when rewrites changed the graph:
    # the plaintext twin of a secure sample is computed on it (runtime.secure_sampler).
    reference_graph: bytes | None = None


def arg_roles(lowered: LoweredModel, public: list[str] | tuple[str, ...] = ()) -> list[ArgSpec]:
    """Arguments with their roles; every bad ``--public`` name is reported at once."""
    input_names = [s.name for s in lowered.inputs]
    weight_names = {s.name for s in lowered.weight_specs}
    problems = []
    for name in public:
        if name in weight_names:
            problems.append(f"--public {name}: '{name}' is a weight, and weights are the model owner's secret")
        elif name not in input_names:
            problems.append(f"--public {name}: no input of that name (inputs: {', '.join(input_names)})")
    if problems:
        raise CompileError("bad --public", problems)
    specs = [_arg(s, PUBLIC if s.name in public else USER) for s in lowered.inputs]
    return specs + [_arg(s, MODEL_OWNER) for s in lowered.weight_specs]


def _arg(spec: TensorSpec, role: str) -> ArgSpec:
    return ArgSpec(spec.name, tuple(spec.shape), spec.dtype, np.dtype(spec.jax_spec().dtype).name, role)


def visibilities(args: list[ArgSpec]):
    from spu import libspu
    return [libspu.Visibility.VIS_PUBLIC if a.role == PUBLIC else libspu.Visibility.VIS_SECRET for a in args]


def stablehlo_text(lowered: LoweredModel) -> str:
    # keep_unused: SPU maps arguments by position, so an unused input must stay an argument.
    return jax.jit(lowered.fn, keep_unused=True).lower(*lowered.arg_specs()).as_text()


def compile_stablehlo(text: str, args: list[ArgSpec], config: SecureConfig) -> bytes:
    """StableHLO text -> SPU pphlo code (the bytes an Executable carries)."""
    from spu import api, libspu

    src = libspu.CompilationSource(libspu.SourceIRType.STABLEHLO, text, visibilities(args))
    try:
        code = api.compile(src, compiler_options(config))
    except Exception as exc:
        raise CompileError("SPU could not compile the program", [_short(exc)]) from exc
    # SPU parses the text on every run: the frees of small values cost more there than they save
    return code if config.compiler.get(OPTION) else drop_small_frees(code)


def build_executable(name: str, input_names: list[str], output_names: list[str], code: bytes):
    from spu import libspu
    return libspu.Executable(name, list(input_names), list(output_names), code)


def strip_weights(model: onnx.ModelProto, keep: frozenset[str] | set[str] = frozenset()) -> onnx.ModelProto:
    """A copy without weight values: each float initializer becomes a graph input of the same type and shape.

    ``keep`` names float initializers that are public architecture constants (not in the weights file), which
    stay initializers so the stored graph still computes the model.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept, weight_inputs = [], []
    for init in stripped.graph.initializer:
        if is_weight(init) and init.name not in keep:
            weight_inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            kept.append(init)
    stripped.graph.ClearField("initializer")
    stripped.graph.initializer.extend(kept)
    existing = {i.name for i in stripped.graph.input}
    stripped.graph.input.extend(v for v in weight_inputs if v.name not in existing)
    return stripped


def compile_model(model: onnx.ModelProto | str, *, input_shapes=None, public=(), rewrites: str = "cipherdm",
                  config: SecureConfig | None = None, name: str | None = None,
                  calibration: dict[str, np.ndarray] | None = None, budget: float | None = None,
                  calibration_source: str | None = None, model_error: float | None = None,
                  auto_fraction_bits: bool = False, network=None,
                  validation: dict[str, np.ndarray] | None = None, validation_source: str | None = None
                  ) -> CompiledProgram:
    """Load (a path or a ModelProto, with compiler.load_model), rewrite, lower and compile.

    ``public`` names the inputs every party knows; ``rewrites`` is "direct" (no MPC rewrites) or "cipherdm".
    ``calibration`` maps input names to arrays of the input's shape or with a leading axis of cases; so does
    ``validation`` (held-out inputs: the report gives the rewritten graph's float error on them).
    """
    from compiler.loader import load_model

    timings = {}
    start = time.perf_counter()
    prepared = load_model(model, input_shapes)
    if name is None:
        name = (model.graph.name or "model") if isinstance(model, onnx.ModelProto) else _stem(str(model))
    timings["load"] = time.perf_counter() - start

    config = config or SecureConfig()
    from compiler.loader import graph_inputs
    from compiler.lowering import spec_of
    from passes.calibrate import split_cases
    specs = [spec_of(vi) for vi in graph_inputs(prepared)]
    cases = None if calibration is None else split_cases(calibration, specs)
    held_out = None if validation is None or rewrites == "direct" else split_cases(validation, specs, "validation data")
    rewritten = rewrite_for_mpc(prepared, config, rewrites, tuple(public), cases, budget, calibration_source,
                                model_error, auto_fraction_bits, network, held_out, validation_source)
    config = rewritten.config
    timings["rewrite"] = time.perf_counter() - start - timings["load"]

    t = time.perf_counter()
    # Architecture constants of the public computation (the timestep frequency table) stay public.
    constants = public_initializers(rewritten.model, set(public))
    with fxp_scale.fraction_bits(config.fxp_bits):
        lowered = lower(rewritten.model, public_initializers=constants)
        args = arg_roles(lowered, list(public))
        text = stablehlo_text(lowered)
    timings["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    if rewrites == "cipherdm" and OPTION not in config.compiler and keep_all_values(text):
        # small program: SPU parses its text on every run, and the frees are half its ops (compiler/deallocation.py)
        config = config.with_compiler(**{OPTION: True})
    code = compile_stablehlo(text, args, config)
    outputs = [OutputSpec(o.name, tuple(o.shape), o.dtype) for o in lowered.outputs]
    exe = build_executable(name, [a.name for a in args], [o.name for o in outputs], code)
    timings["spu_compile"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    return CompiledProgram(
        name=name, config=config, rewrites=rewrites, args=args, outputs=outputs,
        executable=exe.SerializeToString(), stablehlo=text,
        onnx_graph=strip_weights(rewritten.model, constants).SerializeToString(), report=rewritten.report,
        weights={k: np.asarray(v) for k, v in lowered.weights.items()}, timings=timings,
        reference_graph=None if rewritten.model is prepared else restore_divided_weights(
            strip_weights(prepared, public_initializers(prepared, set(public))),
            rewritten.report.get("weights_divided") or [], set(lowered.weights)).SerializeToString())


def _stem(path: str) -> str:
    import os
    base = os.path.basename(path)
    return base[:-5] if base.endswith(".onnx") else base


def _short(exc: Exception, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
