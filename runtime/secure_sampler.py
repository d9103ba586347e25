"""Secure diffusion sampling: a whole DDPM/DDIM run under three-party computation, x_t secret from start to end.

The protocol (who holds what):

* the model owner secret-shares the U-Net weights once;
* the user draws all randomness outside SPU from its seed (x_T and one noise array per step, in the order of
  :func:`runtime.sampler.draw_randomness`) and secret-shares it, with its class label (one-hot) or condition;
* everything else is public and computed by every party on its own from the public sampling settings (sampler,
  steps, schedule, eta, guidance scale), which the parties compare before they start: the timestep of each step,
  the step coefficients (a, b, c) and the guidance weights;
* one compiled **step program** runs per step: ``x_prev = a * x_t + b * eps(x_t, t, label) + c * noise``, with
  ``eps = w_cond * eps(label) + w_uncond * eps(null)`` under classifier-free guidance; its output ``x_prev`` stays
  in the three SPU runtimes and is renamed to ``x_t`` for the next step (local, no traffic), so no x_t is ever
  reconstructed; only the final image is revealed, and only to the user.

The step program is built at sampling time from what the ``.cdm`` stores (the rewritten ONNX graph, weights as
graph inputs, and the SPU settings the rewrites chose): the graph is lowered to JAX, wrapped in the sampler
update and compiled to SPU once per ``cipherdm sample`` (local mode compiles it once in the supervisor and hands
the file to the three parties, which compare its SHA-256 in the handshake). Keeping it out of the ``.cdm`` keeps
one artifact usable with any sampler, step count, eta and guidance; the price is one SPU compile per sample
command (about as long as ``cipherdm compile``'s).

``steps_per_run > 1`` builds a multi-step program instead (K steps in one SPU execution, as a ``fori_loop`` with
a public trip count, or unrolled); ``tools/bench_sampler.py --state-vs-multistep`` measures both side by side and
docs/sampler.md records which one the sampler uses and why.

Classifier-free guidance runs the U-Net on the condition and on the null condition: as one call on a stacked batch
of 2B when the program was compiled for batch 2B ("stacked": half the rounds), otherwise as two calls at batch B
("twice"). A class-label model's null label is all zeros, a public constant (how such models are trained). A model
conditioned on an embedding takes its null condition as a second secret input of the user (``--null-condition``:
diffusers pipelines use the empty prompt's embedding, which says nothing about the user's prompt but is still the
user's input); zeros when the user gives none.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from compiler.errors import CipherdmError
from compiler.spu_compile import MODEL_OWNER, PUBLIC, USER, ArgSpec

# Variable names inside the SPU runtimes (and the step program's inputs/outputs).
STATE, NEXT = "x_t", "x_prev"
NOISE, COND, NULL, TIME, COEF, GUIDE = "noise", "cond", "null_cond", "timestep", "coef", "guidance_w"
WEIGHT_PREFIX = "w/"
STEP_FORMAT = "cipherdm-sampler-step"
LOOPS = ("fori", "unroll")
MODES = ("local", "sim", "plaintext")


class SamplerError(CipherdmError):
    """The sampling request does not fit the program, or the program is not a diffusion U-Net."""


# ---------------------------------------------------------------------------------------------------------------
# What the compiled model looks like


@dataclass(frozen=True)
class UNetSignature:
    """The program's model as a diffusion U-Net: eps = unet(sample, timestep[, condition])."""
    sample: ArgSpec
    timestep: ArgSpec
    condition: ArgSpec | None
    output: str
    weights: tuple[ArgSpec, ...]

    @property
    def batch(self) -> int:
        return int(self.sample.shape[0])

    @property
    def num_classes(self) -> int | None:
        """Classes of a one-hot [B, K] condition (class labels); None for other conditions or none."""
        c = self.condition
        return int(c.shape[1]) if c is not None and len(c.shape) == 2 else None


def unet_signature(artifact) -> UNetSignature:
    """Find (sample, timestep[, condition]) among the program's inputs by shape; name every mismatch at once."""
    return signature_of(artifact.args, artifact.outputs)


def signature_of(args: list[ArgSpec], outputs) -> UNetSignature:
    """``args``: the model's inputs (and weights, role model_owner); ``outputs``: specs with name and shape."""
    data = [a for a in args if a.role != MODEL_OWNER]
    weights = tuple(a for a in args if a.role == MODEL_OWNER)
    names = ", ".join(f"{a.name} {list(a.shape)}" for a in data) or "none"
    expected = ("the program is not a diffusion U-Net, whose inputs are (sample [B, C, H, W], timestep [B] or [1][, "
                "condition [B, ...]]) "
                f"and one output shaped like the sample; this program has inputs {names}")
    problems = []
    samples = [a for a in data if len(a.shape) == 4]
    steps = [a for a in data if len(a.shape) <= 1]
    others = [a for a in data if a not in samples and a not in steps]
    if len(samples) != 1:
        problems.append(f"{len(samples)} inputs of rank 4 (need exactly one sample [B, C, H, W])")
    if len(steps) != 1:
        problems.append(f"{len(steps)} inputs of rank 0 or 1 (need exactly one timestep)")
    if len(others) > 1:
        problems.append(f"{len(others)} other inputs ({', '.join(a.name for a in others)}); at most one "
                        "condition is supported")
    if problems:
        raise SamplerError("the program is not a diffusion U-Net", problems + [expected])
    sample, step = samples[0], steps[0]
    cond = others[0] if others else None
    batch = sample.shape[0]
    if np.dtype(sample.program_dtype).kind != "f":
        problems.append(f"sample '{sample.name}' is {sample.dtype}, not a float type")
    if step.shape not in ((), (1,), (batch,)):
        problems.append(f"timestep '{step.name}' has shape {list(step.shape)}, not [], [1] or [{batch}]")
    if cond is not None:
        if cond.shape[0] != batch:
            problems.append(f"condition '{cond.name}' has batch {cond.shape[0]}, the sample {batch}")
        if np.dtype(cond.program_dtype).kind != "f":
            problems.append(f"condition '{cond.name}' is {cond.dtype}; a float condition (one-hot class labels or "
                            "an embedding) is needed")
    if len(outputs) != 1 or tuple(outputs[0].shape) != tuple(sample.shape):
        problems.append("outputs " + ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
                        + f": need exactly one, shaped like the sample {list(sample.shape)}")
    if problems:
        raise SamplerError("the program is not a diffusion U-Net", problems + [expected])
    return UNetSignature(sample, step, cond, outputs[0].name, weights)


# ---------------------------------------------------------------------------------------------------------------
# The public sampling settings


@dataclass(frozen=True)
class SamplingSettings:
    """Everything public about a sampling run; every party derives the same plan from it."""
    sampler: str = "ddim"
    steps: int = 20
    batch: int = 8
    schedule: str = "linear"
    T: int = 1000
    eta: float | None = None
    guidance: float | None = None

    def problems(self) -> list[str]:
        from runtime.sampler import BETA_SCHEDULES, SAMPLERS

        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(f"unknown sampler '{self.sampler}' (choose {' or '.join(SAMPLERS)})")
        if self.schedule not in BETA_SCHEDULES:
            problems.append(f"unknown schedule '{self.schedule}' (choose {' or '.join(BETA_SCHEDULES)})")
        if self.T < 1:
            problems.append(f"T must be at least 1, got {self.T}")
        if not 1 <= self.steps <= max(self.T, 1):
            problems.append(f"--steps {self.steps} must be between 1 and T = {self.T} (the schedule's length)")
        if self.batch < 1:
            problems.append(f"--batch must be at least 1, got {self.batch}")
        if self.eta is not None and (self.eta < 0 or not math.isfinite(self.eta)):
            problems.append(f"--eta must be >= 0, got {self.eta}")
        if self.sampler == "ddpm" and self.eta not in (None, 1.0):
            problems.append("ddpm is the eta = 1 sampler; use --sampler ddim to choose another --eta")
        if self.guidance is not None and not math.isfinite(self.guidance):
            problems.append(f"--guidance must be a finite number, got {self.guidance}")
        return problems

    def plan(self):
        from runtime.sampler import make_plan, make_schedule
        return make_plan(make_schedule(self.schedule, self.T), self.sampler, self.steps, self.eta)

    def to_json(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "batch": self.batch, "schedule": self.schedule,
                "T": self.T, "eta": self.eta, "guidance": self.guidance}

    @classmethod
    def from_json(cls, d: dict) -> "SamplingSettings":
        return cls(d["sampler"], int(d["steps"]), int(d["batch"]), d["schedule"], int(d["T"]),
                   None if d.get("eta") is None else float(d["eta"]),
                   None if d.get("guidance") is None else float(d["guidance"]))


def guidance_layout(signature: UNetSignature, settings: SamplingSettings) -> str:
    """"none", "stacked" (one U-Net call on 2B) or "twice" (two calls on B); raises when the batch does not fit."""
    model_batch = signature.batch
    if settings.guidance is not None and signature.condition is None:
        raise SamplerError("--guidance needs a conditional model (inputs sample, timestep, condition); this "
                           "program has no condition input")
    if settings.guidance is None:
        if settings.batch != model_batch:
            raise SamplerError(f"--batch {settings.batch} differs from the program's batch {model_batch} (the "
                               f"batch is fixed when the model is exported; use --batch {model_batch} or re-export "
                               "the model at the batch you want)")
        return "none"
    if settings.batch == model_batch:
        return "twice"
    if 2 * settings.batch == model_batch:
        return "stacked"
    raise SamplerError(f"--batch {settings.batch} does not fit the program's batch {model_batch}: with --guidance "
                       f"use --batch {model_batch} (two U-Net calls per step) or export the model at batch "
                       f"{2 * settings.batch} (one call on the conditional and null batch together)")


def check_request(artifact, settings: SamplingSettings) -> tuple[UNetSignature, str]:
    """The U-Net signature and guidance layout, or one SamplerError naming every problem."""
    problems = list(settings.problems())
    signature = layout = None
    try:
        signature = unet_signature(artifact)
    except SamplerError as exc:
        problems += exc.problems
    if signature is not None and not problems:
        try:
            layout = guidance_layout(signature, settings)
        except SamplerError as exc:
            problems.append(exc.summary)
    if problems:
        raise SamplerError("cannot sample", problems)
    return signature, layout


# ---------------------------------------------------------------------------------------------------------------
# The user's secret data


@dataclass
class UserData:
    """What only the user knows: x_T and each step's noise (from the seed), the condition and, for guidance on an
    embedding, the null condition."""
    x_T: np.ndarray
    noise: list[np.ndarray]
    condition: np.ndarray | None
    labels: list[int] | None = None
    null_condition: np.ndarray | None = None


def takes_null_condition(signature: UNetSignature, layout: str) -> bool:
    """Whether the step program has the user's null condition as an input: guidance on an embedding."""
    return layout != "none" and signature.condition is not None and signature.num_classes is None


def parse_labels(text: str | None, batch: int, num_classes: int | None) -> list[int] | None:
    """``--label``: one class for every sample, a comma list of ``batch`` classes, or "none" (unconditional).
    Default for a class-conditional model: 0, 1, 2, ... (mod the number of classes)."""
    if num_classes is None:
        if text not in (None, "none"):
            raise SamplerError(f"--label {text}: the program has no class-label input (a one-hot [B, K] "
                               "condition), so it takes no label")
        return None
    if text == "none":
        return None
    if text is None:
        return [i % num_classes for i in range(batch)]
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SamplerError(f"--label {text!r} is not an integer, a comma-separated list of integers or 'none'")
    if len(values) == 1:
        values = values * batch
    problems = []
    if len(values) != batch:
        problems.append(f"{len(values)} labels for a batch of {batch}")
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        problems.append(f"labels {bad} outside 0..{num_classes - 1}")
    if problems:
        raise SamplerError(f"bad --label {text}", problems)
    return values


def read_condition(path, batch: int, signature: UNetSignature, flag: str = "--condition") -> np.ndarray:
    """``--condition``: the user's own condition for a model conditioned on an embedding (a prompt's text
    embedding, say): a ``.npy`` array, or a ``.npz`` with one array or one named after the condition input; shaped
    [batch, ...] like the input, or without the batch axis (the same for every image). Names every problem."""
    from pathlib import Path

    from compiler.artifact import load_npz

    cond = signature.condition
    if cond is None:
        raise SamplerError(f"{flag} {path}: the program has no condition input")
    if signature.num_classes is not None:
        raise SamplerError(f"{flag} {path}: the program's condition '{cond.name}' is one-hot class labels "
                           f"[B, {signature.num_classes}]: give them with --label")
    path = Path(path)
    if path.suffix == ".npz":
        data = load_npz(path, flag)
        if cond.name in data:
            value = data[cond.name]
        elif len(data) == 1:
            value = next(iter(data.values()))
        else:
            raise SamplerError(f"{flag} {path}: holds {', '.join(data) or 'nothing'}; give one array or one "
                               f"named '{cond.name}'")
    else:
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SamplerError(f"{flag} {path}: cannot read it as .npy or .npz ({exc})") from None
    want = (batch,) + tuple(cond.shape[1:])
    value = np.asarray(value)
    problems = []
    if value.shape == want[1:]:
        value = np.broadcast_to(value, want)
    elif value.shape != want:
        problems.append(f"shape {list(value.shape)}, expected {list(want)} (or {list(want[1:])} for every image)")
    if value.dtype.kind not in "fiu":
        problems.append(f"dtype {value.dtype}, expected a float array")
    elif not np.all(np.isfinite(value)):
        problems.append("values that are not finite (NaN or inf)")
    if problems:
        raise SamplerError(f"bad {flag} {path} for '{cond.name}'", problems)
    return np.ascontiguousarray(value, dtype=np.float32)


def read_null_condition(path, settings: SamplingSettings, signature: UNetSignature) -> np.ndarray:
    """``--null-condition``: classifier-free guidance's unconditional input for a model conditioned on an embedding
    (diffusers pipelines use the empty prompt's embedding), read like ``--condition``."""
    problems = []
    if settings.guidance is None:
        problems.append("it is only used with --guidance")
    if signature.condition is not None and signature.num_classes is not None:
        problems.append(f"the program's condition '{signature.condition.name}' is one-hot class labels, whose "
                        "null label is all zeros")
    if problems:
        raise SamplerError(f"--null-condition {path} does not apply", problems)
    return read_condition(path, settings.batch, signature, "--null-condition")


def user_data(signature: UNetSignature, settings: SamplingSettings, plan, seed: int,
              labels: list[int] | None, condition: np.ndarray | None = None,
              null_condition: np.ndarray | None = None) -> UserData:
    from runtime.sampler import draw_randomness, null_labels, one_hot

    shape = (settings.batch,) + tuple(signature.sample.shape[1:])
    rand = draw_randomness(plan, shape, seed, np.float32)
    cond = None
    if signature.condition is not None:
        if signature.num_classes is not None:
            cond = one_hot(labels, signature.num_classes) if labels is not None else \
                null_labels(settings.batch, signature.num_classes)
        elif condition is not None:   # the user's embedding (read_condition)
            cond = condition
        else:  # an embedding not given: the null condition (zeros)
            cond = np.zeros((settings.batch,) + tuple(signature.condition.shape[1:]), np.float32)
    null = None
    if signature.condition is not None and signature.num_classes is None and settings.guidance is not None:
        null = null_condition if null_condition is not None else np.zeros_like(cond)
    return UserData(rand.x_T, rand.noise, cond, labels, null)


# ---------------------------------------------------------------------------------------------------------------
# The step program


@dataclass
class StepProgram:
    """A compiled sampler step (or K steps): the SPU executable and what each input is."""
    name: str
    code: bytes                     # SPU pphlo code
    inputs: list[dict]              # name, shape, program dtype, role (user / public / model_owner)
    outputs: list[str]
    steps_per_run: int
    loop: str
    layout: str                     # guidance layout: none / stacked / twice
    noise: bool
    stablehlo: str
    timings: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.code).hexdigest()

    def executable(self):
        from compiler.spu_compile import build_executable
        return build_executable(self.name, [i["name"] for i in self.inputs], self.outputs, self.code)

    def meta(self) -> dict:
        return {"format": STEP_FORMAT, "name": self.name, "inputs": self.inputs, "outputs": self.outputs,
                "steps_per_run": self.steps_per_run, "loop": self.loop, "layout": self.layout,
                "noise": self.noise, "timings": self.timings, "sha256": self.sha256}

    def save(self, path) -> None:
        from compiler.artifact import atomic_output
        with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("step.json", json.dumps(self.meta(), indent=2))
            z.writestr("step.pphlo", self.code)
            z.writestr("step.stablehlo.mlir", self.stablehlo)

    @classmethod
    def load(cls, path) -> "StepProgram":
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("step.json"))
                code = z.read("step.pphlo")
                text = z.read("step.stablehlo.mlir").decode("utf-8")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise SamplerError(f"step program {path} is unreadable: {exc}") from exc
        if meta.get("format") != STEP_FORMAT or hashlib.sha256(code).hexdigest() != meta.get("sha256"):
            raise SamplerError(f"step program {path} is not a cipherdm sampler step or is corrupt")
        return cls(meta["name"], code, meta["inputs"], meta["outputs"], int(meta["steps_per_run"]), meta["loop"],
                   meta["layout"], bool(meta["noise"]), text, dict(meta.get("timings", {})))


def _lowered_unet(artifact, signature: UNetSignature):
    """The stored (rewritten) graph lowered to JAX; weights are graph inputs there."""
    import onnx

    from compiler.lowering import lower
    from passes.public import public_initializers

    graph = onnx.load_from_string(artifact.onnx_graph)
    lowered = lower(graph, public_initializers=public_initializers(graph, {signature.timestep.name}))
    if lowered.weight_specs:
        raise SamplerError(f"{artifact.path}: the stored graph still holds weights "
                           f"({', '.join(s.name for s in lowered.weight_specs[:3])}...); recompile the model")
    known = {signature.sample.name, signature.timestep.name} | {w.name for w in signature.weights}
    if signature.condition is not None:
        known.add(signature.condition.name)
    unknown = [s.name for s in lowered.inputs if s.name not in known]
    if unknown:
        raise SamplerError(f"{artifact.path}: the stored graph has inputs the program does not: "
                           f"{', '.join(unknown[:5])} (an artifact from an older cipherdm; recompile the model)")
    out_index = [o.name for o in lowered.outputs].index(signature.output)
    return lowered, out_index


def step_function(artifact, signature: UNetSignature, layout: str, noise: bool, steps_per_run: int = 1,
                  loop: str = "fori"):
    """``(fn, arg_specs)``: the JAX step function over (state, [noise], [cond], [null_cond], t, coef, [gw],
    *weights)."""
    import jax
    import jax.numpy as jnp

    lowered, out_index = _lowered_unet(artifact, signature)
    order = [s.name for s in lowered.inputs]
    weight_names = [w.name for w in signature.weights]
    model_batch = signature.batch
    batch = model_batch // 2 if layout == "stacked" else model_batch
    sample_dtype = np.dtype(signature.sample.program_dtype)
    guided = layout != "none"
    cond_spec = signature.condition
    has_null = takes_null_condition(signature, layout)

    def unet(x, t, cond, weights):
        values = dict(zip(weight_names, weights))
        values[signature.sample.name] = x
        values[signature.timestep.name] = t
        if cond_spec is not None:
            values[cond_spec.name] = cond
        return lowered.fn(*[values[name] for name in order])[out_index]

    def one_step(x, nz, cond, null, t, coef, gw, weights):
        if guided and null is None:
            null = jnp.zeros_like(cond)    # a class-label model's "no label": public zeros
        if layout == "stacked":
            both = unet(jnp.concatenate([x, x]), t, jnp.concatenate([cond, null]), weights)
            eps = gw[0] * both[:batch] + gw[1] * both[batch:]
        elif layout == "twice":
            eps = gw[0] * unet(x, t, cond, weights) + gw[1] * unet(x, t, null, weights)
        else:
            eps = unet(x, t, cond, weights)
        out = coef[0] * x + coef[1] * eps
        if noise:
            out = out + coef[2] * nz
        return out.astype(x.dtype)

    has_cond = cond_spec is not None
    k = steps_per_run

    def fn(*args):
        it = iter(args)
        x = next(it)
        nz = next(it) if noise else None
        cond = next(it) if has_cond else None
        null = next(it) if has_null else None
        t, coef = next(it), next(it)
        gw = next(it) if guided else None
        weights = list(it)
        if k == 1:
            return (one_step(x, nz, cond, null, t, coef, gw, weights),)
        if loop == "unroll":
            for i in range(k):
                x = one_step(x, nz[i] if noise else None, cond, null, t[i], coef[i], gw, weights)
            return (x,)
        body = lambda i, x: one_step(x, nz[i] if noise else None, cond, null, t[i], coef[i], gw,  # noqa: E731
                                     weights)
        return (jax.lax.fori_loop(0, k, body, x),)

    lead = (k,) if k > 1 else ()
    image = (batch,) + tuple(signature.sample.shape[1:])
    specs = [(STATE, image, sample_dtype, USER)]
    if noise:
        specs.append((NOISE, lead + image, sample_dtype, USER))
    if has_cond:
        specs.append((COND, (batch,) + tuple(cond_spec.shape[1:]), np.dtype(cond_spec.program_dtype), USER))
    if has_null:
        specs.append((NULL, (batch,) + tuple(cond_spec.shape[1:]), np.dtype(cond_spec.program_dtype), USER))
    specs.append((TIME, lead + tuple(signature.timestep.shape), np.dtype(signature.timestep.program_dtype), PUBLIC))
    specs.append((COEF, lead + (3,), np.dtype(np.float32), PUBLIC))
    if guided:
        specs.append((GUIDE, (2,), np.dtype(np.float32), PUBLIC))
    specs += [(WEIGHT_PREFIX + w.name, tuple(w.shape), np.dtype(w.program_dtype), MODEL_OWNER)
              for w in signature.weights]
    return fn, specs


def build_step_program(artifact, signature: UNetSignature, layout: str, noise: bool, steps_per_run: int = 1,
                       loop: str = "fori", spu: bool = True) -> StepProgram:
    """Lower the stored graph, wrap it in the sampler update, compile it for SPU with the artifact's settings
    (``spu=False``: StableHLO only, for plaintext runs)."""
    import jax

    from compiler.spu_compile import compile_stablehlo
    from runtime import fxp_scale

    if loop not in LOOPS:
        raise SamplerError(f"unknown loop '{loop}' (choose {' or '.join(LOOPS)})")
    start = time.perf_counter()
    with fxp_scale.fraction_bits(artifact.config.fxp_bits):
        fn, specs = step_function(artifact, signature, layout, noise, steps_per_run, loop)
        shape_specs = [jax.ShapeDtypeStruct(shape, dtype) for _, shape, dtype, _ in specs]
        text = jax.jit(fn, keep_unused=True).lower(*shape_specs).as_text()
    lower_time = time.perf_counter() - start
    args = [ArgSpec(name, tuple(shape), np.dtype(dtype).name, np.dtype(dtype).name, role)
            for name, shape, dtype, role in specs]
    t = time.perf_counter()
    code = compile_stablehlo(text, args, artifact.config) if spu else b""
    inputs = [{"name": n, "shape": list(s), "dtype": np.dtype(d).name, "role": r} for n, s, d, r in specs]
    name = f"{artifact.name}.step{steps_per_run if steps_per_run > 1 else ''}"
    return StepProgram(name, code, inputs, [NEXT], steps_per_run, loop, layout, noise, text,
                       {"lower": lower_time, "spu_compile": time.perf_counter() - t})


# ---------------------------------------------------------------------------------------------------------------
# Where the secret values live: in-process simulation or one real party


@dataclass
class RunCost:
    """One execution of the step program, as this process sees it."""
    run_time: float
    total_bytes: int | None       # 3-party SPU link bytes (known in sim; in party mode, combined afterwards)
    rounds: int | None
    link: dict | None = None      # this party's link stats (party mode)


class SimBackend:
    """All three parties in this process (SPU's memory links): for tests and measurements."""
    is_user = True
    is_owner = True

    def __init__(self, config, *, profile: bool = True):
        from runtime.simulate import SimSession
        self.session = SimSession(config, profile=profile)
        self.revealed: list[str] = []

    def secret(self, name: str, value, owner_role: str) -> None:
        self.session.set_secret(name, value)

    def public(self, name: str, value) -> None:
        self.session.set_public(name, value)

    def run(self, exe) -> RunCost:
        start = time.perf_counter()
        prof = self.session.run(exe)
        return RunCost(time.perf_counter() - start, prof.total_bytes if prof else None,
                       prof.rounds if prof else None)

    def rename(self, old: str, new: str) -> None:
        self.session.rename(old, new)

    def reveal_to_user(self, names: list[str]) -> dict:
        self.revealed += names
        return self.session.reveal(names)

    def sharing_bytes(self) -> int:
        return 0


class PartyBackend:
    """One real party (runtime.party.PartySession): shares go over the links, reveals only to the user."""

    def __init__(self, session, roles: dict[str, int]):
        self.session = session
        self.roles = roles
        self.is_user = session.rank == roles[USER]
        self.is_owner = session.rank == roles[MODEL_OWNER]
        self.revealed: list[str] = []

    def secret(self, name: str, value, owner_role: str) -> None:
        self.session.share_secret(name, value, owner=self.roles[owner_role])

    def public(self, name: str, value) -> None:
        # Every party computes the public values itself from the agreed settings: nothing to send.
        from spu import libspu
        share = self.session.io.make_shares(np.asarray(value), libspu.Visibility.VIS_PUBLIC)[self.session.rank]
        self.session.runtime.set_var(name, share)

    def run(self, exe) -> RunCost:
        start = time.perf_counter()
        prof = self.session.run(exe)
        link = prof.link.to_json() if prof is not None and prof.link is not None else None
        return RunCost(time.perf_counter() - start, None, None, link)

    def rename(self, old: str, new: str) -> None:
        self.session.rename(old, new)

    def reveal_to_user(self, names: list[str]) -> dict | None:
        self.revealed += names
        return self.session.reveal(names, to=self.roles[USER])

    def sharing_bytes(self) -> int:
        return self.session.traffic.send_bytes


# ---------------------------------------------------------------------------------------------------------------
# The sampling loop (the same on every party and in simulation)


@dataclass
class StepRecord:
    index: int                  # first step of this execution (0-based)
    steps: int                  # steps in this execution
    t: list[int]
    run_time: float
    share_time: float
    total_bytes: int | None = None
    rounds: int | None = None
    link: dict | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SecureRun:
    image: np.ndarray | None    # the final x_0, on the user only
    records: list[StepRecord]
    setup_time: float           # sharing the weights, x_T and the condition
    reveal_time: float
    revealed: list[str]


def public_step_values(signature: UNetSignature, plan, start: int, k: int, layout: str) -> dict:
    """The public inputs of steps ``start .. start+k-1``: timestep array and (a, b, c)."""
    tdtype = np.dtype(signature.timestep.program_dtype)
    ts = [np.full(signature.timestep.shape, plan.steps[i], tdtype) for i in range(start, start + k)]
    coefs = [np.asarray(plan.coefficients[i], np.float32) for i in range(start, start + k)]
    if k == 1:
        return {TIME: ts[0], COEF: coefs[0]}
    return {TIME: np.stack(ts), COEF: np.stack(coefs)}


def run_secure_sampling(backend, program: StepProgram, signature: UNetSignature, settings: SamplingSettings, *,
                        user: UserData | None = None, weights: dict | None = None,
                        progress: Callable[[int, int, StepRecord], None] | None = None) -> SecureRun:
    """Share, run the step program once per step with x_t kept in the runtimes, reveal x_0 to the user.

    ``user`` only on the user's party, ``weights`` only on the model owner's (both in simulation).
    """
    from runtime.sampler import guidance_weights

    plan = settings.plan()
    k = program.steps_per_run
    n = len(plan.steps)
    if n % k:
        raise SamplerError(f"{n} steps do not divide into runs of {k} steps")
    exe = program.executable()
    start = time.perf_counter()
    for w in signature.weights:
        backend.secret(WEIGHT_PREFIX + w.name, weights[w.name] if backend.is_owner else None, MODEL_OWNER)
    backend.secret(STATE, user.x_T if backend.is_user else None, USER)
    if signature.condition is not None:
        backend.secret(COND, user.condition if backend.is_user else None, USER)
    if any(i["name"] == NULL for i in program.inputs):
        backend.secret(NULL, user.null_condition if backend.is_user else None, USER)
    if program.layout != "none":
        backend.public(GUIDE, np.asarray(guidance_weights(settings.guidance), np.float32))
    setup_time = time.perf_counter() - start

    records = []
    for first in range(0, n, k):
        t0 = time.perf_counter()
        for name, value in public_step_values(signature, plan, first, k, program.layout).items():
            backend.public(name, value)
        if program.noise:
            noise = None
            if backend.is_user:
                noise = user.noise[first] if k == 1 else np.stack(user.noise[first:first + k])
            backend.secret(NOISE, noise, USER)
        share_time = time.perf_counter() - t0
        cost = backend.run(exe)
        backend.rename(NEXT, STATE)
        record = StepRecord(first, k, plan.steps[first:first + k], cost.run_time, share_time, cost.total_bytes,
                            cost.rounds, cost.link)
        records.append(record)
        if progress is not None:
            progress(first + k, n, record)
    t0 = time.perf_counter()
    out = backend.reveal_to_user([STATE])
    reveal_time = time.perf_counter() - t0
    image = out[STATE].astype(np.float32) if out is not None else None
    return SecureRun(image, records, setup_time, reveal_time, list(backend.revealed))


# ---------------------------------------------------------------------------------------------------------------
# Plaintext: the float model on the same randomness, and the step program without MPC


def float_eps_fn(artifact, weights: dict[str, np.ndarray], signature: UNetSignature, graph: bytes | None = None):
    """eps(x, t[, cond]) from onnxruntime on the model's float graph (before rewrites) with the owner's weights;
    calls at batch B on a model of batch 2B are padded (stacked guidance programs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph if graph is not None else artifact.float_graph,
                                   providers=["CPUExecutionProvider"])
    feeds_w = {i.name: np.asarray(weights[i.name]) for i in session.get_inputs() if i.name in weights}
    model_batch = signature.batch
    tdtype = np.dtype(signature.timestep.dtype)

    def run(x, t, cond=None):
        b = x.shape[0]
        pad = model_batch - b
        feeds = dict(feeds_w)
        feeds[signature.sample.name] = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        feeds[signature.timestep.name] = np.full(signature.timestep.shape, np.asarray(t).ravel()[0], tdtype)
        if signature.condition is not None:
            c = cond if cond is not None else np.zeros((b,) + tuple(signature.condition.shape[1:]), np.float32)
            feeds[signature.condition.name] = np.concatenate(
                [c, np.zeros((pad,) + c.shape[1:], c.dtype)]) if pad else c
        return session.run([signature.output], feeds)[0][:b]

    return run


def plaintext_sample(eps_fn, signature: UNetSignature, settings: SamplingSettings, user: UserData) -> np.ndarray:
    """The plaintext twin: runtime.sampler.sample on the same x_T, noise and condition."""
    from runtime.sampler import Randomness, make_schedule, sample

    shape = (settings.batch,) + tuple(signature.sample.shape[1:])
    cond_given = signature.condition is not None
    result = sample(eps_fn if cond_given else (lambda x, t: eps_fn(x, t)), shape, settings.sampler,
                    settings.steps, schedule=make_schedule(settings.schedule, settings.T), eta=settings.eta,
                    labels=user.condition if cond_given else None,
                    guidance=settings.guidance if cond_given else None, null=user.null_condition,
                    randomness=Randomness(user.x_T, user.noise))
    return result.image


def run_step_plaintext(artifact, signature: UNetSignature, settings: SamplingSettings, user: UserData,
                       weights: dict, layout: str, steps_per_run: int = 1, loop: str = "fori") -> np.ndarray:
    """The step program's JAX function (the one its StableHLO comes from) jit-compiled once and run by XLA on
    the CPU: the rewritten graph and the sampler update without MPC, i.e. the rewrites' float error alone."""
    import jax

    from runtime.sampler import guidance_weights

    plan = settings.plan()
    noise = any(plan.needs_noise)
    fn, specs = step_function(artifact, signature, layout, noise, steps_per_run, loop)
    jitted = jax.jit(fn)
    k = steps_per_run
    x = user.x_T
    for first in range(0, len(plan.steps), k):
        values = {STATE: x, COND: user.condition, NULL: user.null_condition,
                  **public_step_values(signature, plan, first, k, layout)}
        if noise:
            values[NOISE] = user.noise[first] if k == 1 else np.stack(user.noise[first:first + k])
        if layout != "none":
            values[GUIDE] = np.asarray(guidance_weights(settings.guidance), np.float32)
        for w in signature.weights:
            values[WEIGHT_PREFIX + w.name] = weights[w.name]
        x = np.asarray(jitted(*[np.asarray(values[name], dtype=dtype) for name, _, dtype, _ in specs])[0])
    return np.asarray(x, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# One real party of a secure sampling run (``cipherdm sample --mode party``; local mode starts three)


def run_sampler_party(rank: int, parties, artifact_path, settings: SamplingSettings, *, step_path=None,
                      weights_path=None, seed: int | None = None, labels_text: str | None = None,
                      condition_path=None, null_condition_path=None, output_path=None, progress_path=None, log_path=None,
                      on_peer_failure=None) -> dict:
    """Load what this party may see, agree on program + step program + settings, sample, reveal x_0 to the user.

    Returns this party's metrics (per-execution run time and SPU link stats, sharing traffic, what was revealed).
    The user party writes the revealed samples to ``output_path`` (``.npz``: ``x0`` and ``labels``; anything
    else: a PNG grid of the samples).
    """
    from compiler.artifact import read_artifact, read_weights, save_npz
    from runtime.party import PartySession, fault_point, hello, peak_rss_bytes

    wall_start = time.perf_counter()
    roles = parties.role_of(rank)
    is_user, is_owner = USER in roles, MODEL_OWNER in roles
    problems = []
    if is_owner and not weights_path:
        problems.append(f"party {rank} is the model owner and needs --weights")
    if not is_owner and weights_path:
        problems.append(f"party {rank} is not the model owner (party {parties.roles[MODEL_OWNER]} is): it must "
                        "not be given the weights")
    if is_user and (seed is None or not output_path):
        problems.append(f"party {rank} is the user and needs --seed and -o/--output")
    if not is_user and (seed is not None or labels_text is not None or condition_path or null_condition_path
                        or output_path):
        problems.append(f"party {rank} is not the user (party {parties.roles[USER]} is): it must not be given "
                        "the seed, the label, the conditions or an output path")
    if problems:
        raise SamplerError(f"party {rank} is not set up for its roles", problems)
    artifact = read_artifact(artifact_path)
    signature, layout = check_request(artifact, settings)
    plan = settings.plan()
    weights = read_weights(weights_path, artifact) if is_owner else None
    user = None
    if is_user:
        condition = read_condition(condition_path, settings.batch, signature) if condition_path else None
        null = read_null_condition(null_condition_path, settings, signature) if null_condition_path else None
        user = user_data(signature, settings, plan, seed, parse_labels(labels_text, settings.batch,
                                                                        signature.num_classes), condition, null)
    t = time.perf_counter()
    if step_path:
        program = StepProgram.load(step_path)
        if program.layout != layout or program.noise != any(plan.needs_noise):
            raise SamplerError(f"step program {step_path} was built for guidance layout {program.layout} and "
                               f"noise {program.noise}, this run needs {layout} and {any(plan.needs_noise)}")
    else:  # a real deployment: every party compiles the same step program (compared in the handshake)
        program = build_step_program(artifact, signature, layout, any(plan.needs_noise))
    load_time = time.perf_counter() - t

    session = PartySession(rank, parties, artifact.config, log_path=log_path, on_peer_failure=on_peer_failure)
    progress_file = open(progress_path, "a", encoding="utf-8") if progress_path else None
    # Every share this party receives from a peer, with how many step runs had finished: the evidence that no
    # party but the user ever gets another party's share of x_t, and the user only after the last step.
    received: list[dict] = []
    runs_done = [0]
    recv_share = session._recv_share

    def recording_recv_share(peer: int, name: str):
        received.append({"name": name, "from": peer, "after_runs": runs_done[0]})
        return recv_share(peer, name)

    session._recv_share = recording_recv_share

    def progress(done: int, total: int, record: StepRecord) -> None:
        runs_done[0] += 1
        if progress_file:
            progress_file.write(json.dumps({"done": done, "total": total, "t": record.t[-1],
                                            "run_time": record.run_time}) + "\n")
            progress_file.flush()

    try:
        session.connect()
        greeting = hello(artifact, _StoredExecutable(artifact.executable), parties)
        greeting.update({"sampling": settings.to_json(), "step_program_sha256": program.sha256,
                         "steps_per_run": program.steps_per_run})
        session.handshake(greeting)
        fault_point("share", rank)
        backend = PartyBackend(session, parties.roles)
        fault_point("run", rank)
        result = run_secure_sampling(backend, program, signature, settings, user=user, weights=weights,
                                     progress=progress)
        fault_point("reveal", rank)
        if is_user:
            if str(output_path).endswith(".npz"):
                save_npz(output_path, {"x0": result.image, "labels": np.asarray(user.labels or [], np.int64)})
            else:
                from runtime.quality import write_grid
                from runtime.sampler import to_unit
                write_grid(output_path, [("MPC", to_unit(result.image))],
                           [str(v) for v in user.labels] if user.labels else None)
        session.finish()
    finally:
        session.close()
        if progress_file:
            progress_file.close()
    return {
        "rank": rank, "roles": roles, "address": parties.addresses[rank],
        "load_time": load_time, "connect_time": session.timings.get("connect", 0.0),
        "handshake_time": session.timings.get("handshake", 0.0),
        "setup_time": result.setup_time, "reveal_time": result.reveal_time,
        "run_time": sum(r.run_time for r in result.records),
        "wall_time": time.perf_counter() - wall_start, "peak_rss_bytes": peak_rss_bytes(),
        "records": [r.to_json() for r in result.records],
        "cipherdm_traffic": {"send_bytes": session.traffic.send_bytes,
                             "send_actions": session.traffic.send_actions},
        "revealed": result.revealed, "wrote_output": is_user, "runs": runs_done[0],
        "received_shares": [r for r in received if not r["name"].startswith(WEIGHT_PREFIX)],
        "received_weight_shares": sum(r["name"].startswith(WEIGHT_PREFIX) for r in received),
        "step_program_sha256": program.sha256,
    }


class _StoredExecutable:
    """The artifact's executable bytes where only their digest is needed (no parsing, no recompiling)."""

    def __init__(self, data: bytes):
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - libspu.Executable's name
        return self.data


def combine_party_records(party_metrics: list[dict]) -> list[StepRecord]:
    """Per execution: the slowest party's time, 3-party SPU link bytes, rounds (largest per-party sends)."""
    per_party = [m["records"] for m in party_metrics]
    combined = []
    for recs in zip(*per_party):
        links = [r["link"] or {} for r in recs]
        combined.append(StepRecord(recs[0]["index"], recs[0]["steps"], recs[0]["t"],
                                   max(r["run_time"] for r in recs), max(r["share_time"] for r in recs),
                                   sum(link.get("send_bytes", 0) for link in links),
                                   max(link.get("send_actions", 0) for link in links)))
    return combined


def quality(secure: np.ndarray, plain: np.ndarray) -> dict:
    """PSNR, SSIM and classifier agreement of secure samples vs their plaintext twins (images in [0, 1]).

    runtime.quality.compare, except that SSIM needs images of at least its 7x7 window and the digit classifier
    28x28 single-channel images: metrics that do not apply are None, with the reason.
    """
    from runtime import quality as Q

    a, b = np.asarray(secure, np.float64), np.asarray(plain, np.float64)
    channels = a.shape[1] if a.ndim == 4 else 1
    h, w = a.shape[-2:]
    if channels == 1 and (h, w) == (28, 28):
        return Q.compare(a, b)
    n = a.shape[0] if a.ndim >= 3 else 1
    # PSNR over every pixel of every channel; SSIM per channel, averaged (as for colour images usually)
    p = Q.psnr(a.reshape(n, channels * h, w), b.reshape(n, channels * h, w))
    out = {"psnr_db": [Q._finite_or_str(v) for v in p], "mean_psnr_db": Q._finite_or_str(float(np.mean(p))),
           "min_psnr_db": Q._finite_or_str(float(np.min(p))), "agreement": None,
           "agreement_note": f"the digit classifier takes 28x28 single-channel images, these are "
                             f"{channels}x{h}x{w}"}
    if min(h, w) >= 7:
        s = Q.ssim(a.reshape(n * channels, h, w), b.reshape(n * channels, h, w)).reshape(n, channels).mean(axis=1)
        out.update(ssim=[float(v) for v in s], mean_ssim=float(np.mean(s)))
    else:
        out.update(ssim=None, mean_ssim=None, ssim_note=f"{h}x{w} images are smaller than SSIM's 7x7 window")
    return out


@dataclass
class LocalSampling:
    image: np.ndarray
    records: list[StepRecord]   # per execution, 3-party
    parties: list[dict]         # each party's metrics (run_sampler_party)
    wall_time: float


def sample_local(artifact_path, weights_path, settings: SamplingSettings, program: StepProgram, *, seed: int,
                 labels_text: str | None = None, condition_path=None, null_condition_path=None, work_dir=None,
                 progress: "Progress | None" = None,
                 recv_timeout_s: float = 900.0) -> LocalSampling:
    """Three party processes on 127.0.0.1 (runtime.local supervises them: a failing party stops the others
    with an error naming it); the step program is built here once and handed to them as a file; the user
    party's progress file drives ``progress``."""
    import shutil
    import sys as _sys
    import tempfile
    from pathlib import Path

    from compiler.artifact import load_npz
    from runtime.local import run_local

    keep = work_dir is not None
    work = Path(work_dir or tempfile.mkdtemp(prefix="cipherdm-sample-"))
    work.mkdir(parents=True, exist_ok=True)
    step_path = work / "step_program.zip"
    program.save(step_path)
    out_path = work / "samples.npz"
    for stale in [out_path] + [work / f"party{r}.{kind}" for r in range(3)
                               for kind in ("progress.jsonl", "status.json")]:
        if stale.exists():
            stale.unlink()
    user_rank: list[int] = []
    seen = [0]

    def command(rank, parties, parties_path, work_dir):
        cmd = [_sys.executable, "-m", "tools.cli", "sample", str(artifact_path), "--mode", "party",
               "--rank", str(rank), "--parties", str(parties_path), "--step-program", str(step_path),
               "--sampler", settings.sampler, "--steps", str(settings.steps), "--batch", str(settings.batch),
               "--schedule", settings.schedule, "--train-timesteps", str(settings.T),
               "--spu-log", str(work_dir / f"party{rank}.spu.log"),
               "--status-out", str(work_dir / f"party{rank}.status.json"),
               "--progress-out", str(work_dir / f"party{rank}.progress.jsonl")]
        if settings.eta is not None:
            cmd += ["--eta", repr(settings.eta)]
        if settings.guidance is not None:
            cmd += ["--guidance", repr(settings.guidance)]
        if rank == parties.roles[MODEL_OWNER]:
            cmd += ["--weights", str(weights_path)]
        if rank == parties.roles[USER]:
            user_rank.append(rank)
            cmd += ["--seed", str(seed), "-o", str(out_path)]
            if labels_text is not None:
                cmd += ["--label", labels_text]
            if condition_path:
                cmd += ["--condition", str(Path(condition_path).resolve())]
            if null_condition_path:
                cmd += ["--null-condition", str(Path(null_condition_path).resolve())]
        return cmd

    def poll():
        if not user_rank or progress is None:
            return
        try:
            lines = (work / f"party{user_rank[0]}.progress.jsonl").read_text().splitlines()
        except OSError:
            return
        for line in lines[seen[0]:]:
            try:
                p = json.loads(line)
            except ValueError:
                return  # a line being written: read it next time
            seen[0] += 1
            progress.update(p["done"], p["t"], p["run_time"] / max(1, program.steps_per_run))

    try:
        local = run_local(artifact_path, None, None, out_path, work_dir=str(work), command=command, on_poll=poll,
                          recv_timeout_s=recv_timeout_s)
        poll()
        data = load_npz(out_path, "revealed samples")
        return LocalSampling(data["x0"], combine_party_records(local.metrics), local.metrics, local.wall_time)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Progress on stderr


class Progress:
    """``[#####.....] step 3/20  t=850  12.3 s/step  ETA 3m20s`` on one line (a line per step off a terminal)."""

    def __init__(self, total: int, label: str = "sampling", stream=None, width: int = 24):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.done = 0
        self.step_times: list[float] = []

    def update(self, done: int, t: int | None = None, step_time: float | None = None) -> None:
        """``step_time``: the step's own time; the ETA is their mean times the steps left (start-up excluded),
        or the elapsed time per step done when steps report no time."""
        now = time.perf_counter()
        if step_time is not None:
            self.step_times += [step_time] * max(1, done - self.done)
        self.done = done
        elapsed = now - self.start
        rate = (sum(self.step_times) / len(self.step_times)) if self.step_times else \
            (elapsed / done if done else None)
        eta = rate * (self.total - done) if rate is not None else None
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        parts = [f"{self.label} [{bar}] step {done}/{self.total}"]
        if t is not None:
            parts.append(f"t={t}")
        if step_time is not None:
            parts.append(f"{step_time:.1f} s/step")
        parts.append(f"elapsed {_fmt_time(elapsed)}")
        if eta is not None and done < self.total:
            parts.append(f"ETA {_fmt_time(eta)}")
        line = "  ".join(parts)
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\r" if self.tty else "") + text + "\n")
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["SamplerError", "UNetSignature", "unet_signature", "SamplingSettings", "guidance_layout",
           "check_request", "UserData", "parse_labels", "user_data", "StepProgram", "build_step_program",
           "step_function", "SimBackend", "PartyBackend", "run_secure_sampling", "StepRecord", "SecureRun",
           "float_eps_fn", "plaintext_sample", "run_step_plaintext", "Progress"]
