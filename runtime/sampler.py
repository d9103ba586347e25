"""Diffusion samplers whose every step is linear in (x_t, eps, noise) with public coefficients.

Under MPC the state x_t, the model output eps and the user's noise are secret-shared; the timestep, the noise
schedule, the sampler and the guidance scale are public. Writing each step as

    x_prev = a * x_t + b * eps + c * noise

with public scalars ``(a, b, c)`` from :func:`step_coefficients` lets the parties apply the update locally on
shares (multiplication by a public scalar and addition need no communication). All randomness (x_T and each
step's noise) is drawn by the user outside the secure program from a seeded ``numpy.random.Generator`` and
enters as arrays: SPU's in-program random numbers are not what a sampler needs, and the user must be able to
reproduce the plaintext twin of a secure sample from the same seed.

Everything here is numpy only; the eps function is any callable (onnxruntime, the lowered JAX function, or a
secure runner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

SAMPLERS = ("ddpm", "ddim")
BETA_SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule: ``betas[t]`` for t = 0..T-1 and the derived cumulative products (float64)."""

    betas: np.ndarray
    kind: str = "custom"
    alphas_cumprod: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", np.cumprod(1.0 - betas))

    @property
    def T(self) -> int:
        return int(self.betas.size)

    def alpha_bar(self, t: int) -> float:
        """Cumulative alpha at timestep t; t = -1 means the clean image (alpha_bar = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def to_json(self) -> dict:
        return {"kind": self.kind, "T": self.T}


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule (Ho et al. 2020), scaled as in the paper for T = 1000."""
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    steps = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 1e-12, max_beta)


def make_schedule(kind: str = "linear", T: int = 1000) -> Schedule:
    if kind == "linear":
        return Schedule(linear_betas(T), kind)
    if kind == "cosine":
        return Schedule(cosine_betas(T), kind)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of {', '.join(BETA_SCHEDULES)}")


def timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced over [T-1, 0], descending, both ends included.

    Starting at T-1 matters: x_T ~ N(0, I) only matches the fully noised end. ``steps == T`` gives every
    timestep, i.e. the full DDPM chain.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    # Spacing (T-1)/(steps-1) >= 1, so rounding keeps the timesteps distinct.
    grid = np.round(np.linspace(0.0, T - 1, steps)).astype(np.int64)
    return [int(t) for t in grid[::-1]]


def step_coefficients(schedule: Schedule, t: int, t_prev: int, eta: float) -> tuple[float, float, float]:
    """Public scalars (a, b, c) with x_{t_prev} = a * x_t + b * eps + c * noise.

    The generalised DDIM update (Song et al. 2021, eq. 12) with
    sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev):

        x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
        x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma noise

    eta = 0 is deterministic DDIM; eta = 1 with consecutive timesteps (t_prev = t - 1) is exactly ancestral
    DDPM with the posterior variance beta_tilde. ``t_prev = -1`` is the final step to the clean image.
    """
    if not 0 <= t < schedule.T:
        raise ValueError(f"timestep {t} outside 0..{schedule.T - 1}")
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ab_t = schedule.alpha_bar(t)
    ab_prev = schedule.alpha_bar(t_prev)
    sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t)) * math.sqrt(1.0 - ab_t / ab_prev)
    direction = math.sqrt(max(1.0 - ab_prev - sigma * sigma, 0.0))
    a = math.sqrt(ab_prev / ab_t)
    b = direction - math.sqrt(ab_prev) * math.sqrt(1.0 - ab_t) / math.sqrt(ab_t)
    return a, b, sigma


def sampler_eta(sampler: str, eta: float | None = None) -> float:
    """DDPM is the eta = 1 member of the family; DDIM defaults to eta = 0."""
    if sampler == "ddpm":
        if eta not in (None, 1.0):
            raise ValueError("ddpm is the eta = 1 sampler; use sampler='ddim' to choose another eta")
        return 1.0
    if sampler == "ddim":
        return 0.0 if eta is None else float(eta)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class Plan:
    """The public part of a sampling run: visited timesteps and each step's (a, b, c)."""

    schedule: Schedule
    sampler: str
    eta: float
    steps: list[int]  # t for each model call, descending
    prev: list[int]  # the timestep each step moves to (-1 = clean image)
    coefficients: list[tuple[float, float, float]]

    @property
    def needs_noise(self) -> list[bool]:
        return [c != 0.0 for _, _, c in self.coefficients]

    def to_json(self) -> dict:
        return {"schedule": self.schedule.to_json(), "sampler": self.sampler, "eta": self.eta,
                "steps": [{"t": t, "t_prev": p, "a": a, "b": b, "c": c}
                          for t, p, (a, b, c) in zip(self.steps, self.prev, self.coefficients)]}


def make_plan(schedule: Schedule, sampler: str = "ddim", steps: int = 20, eta: float | None = None) -> Plan:
    """Timesteps and public coefficients for ``steps`` model calls.

    DDPM with ``steps < T`` runs the strided ancestral sampler (eta = 1 over the strided subset, as in DDIM's
    paper); with ``steps == T`` it is exactly Ho et al.'s sampler.
    """
    eta = sampler_eta(sampler, eta)
    ts = timesteps(schedule.T, steps)
    prev = ts[1:] + [-1]
    coefficients = [step_coefficients(schedule, t, p, eta) for t, p in zip(ts, prev)]
    return Plan(schedule, sampler, eta, ts, prev, coefficients)


def guided_eps(eps_cond: np.ndarray, eps_uncond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance: eps_uncond + scale * (eps_cond - eps_uncond), linear with public ``scale``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guidance_weights(scale: float) -> tuple[float, float]:
    """(w_cond, w_uncond) with guided eps = w_cond * eps_cond + w_uncond * eps_uncond (public scalars)."""
    return float(scale), 1.0 - float(scale)


def null_labels(batch: int, num_classes: int = 10) -> np.ndarray:
    """The "no label" conditioning input of a one-hot model: all zeros."""
    return np.zeros((batch, num_classes), np.float32)


def one_hot(labels: Sequence[int] | np.ndarray, num_classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or np.any(labels < 0) or np.any(labels >= num_classes):
        raise ValueError(f"labels must be a 1-D array of integers in 0..{num_classes - 1}")
    out = np.zeros((labels.size, num_classes), np.float32)
    out[np.arange(labels.size), labels] = 1.0
    return out


@dataclass
class Randomness:
    """The user's noise for one run: x_T and one noise array per step (zeros where the step needs none)."""

    x_T: np.ndarray
    noise: list[np.ndarray]


def draw_randomness(plan: Plan, shape: Sequence[int], seed: int, dtype=np.float32) -> Randomness:
    """x_T, then each step's noise, from one seeded Generator in a fixed order.

    Noise is drawn for every step (even where c = 0) so the stream does not depend on eta: the same seed gives
    the same x_T for DDIM and DDPM.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    x_T = rng.standard_normal(shape).astype(dtype)
    noise = [rng.standard_normal(shape).astype(dtype) for _ in plan.steps]
    return Randomness(x_T, noise)


EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class SampleResult:
    image: np.ndarray  # x_0 in model space ([-1, 1] for the MNIST model)
    trajectory: list[tuple[int, np.ndarray]]  # (t, x_t) before each model call, then (-1, x_0)
    plan: Plan


def sample(eps_fn: EpsFn, shape: Sequence[int], sampler: str = "ddim", steps: int = 20, seed: int = 0, *,
           schedule: Schedule | None = None, eta: float | None = None, labels: np.ndarray | None = None,
           guidance: float | None = None, randomness: Randomness | None = None,
           clip: float | None = None, dtype=np.float32, null: np.ndarray | None = None) -> SampleResult:
    """Plaintext sampling driver.

    ``eps_fn(x_t, t)`` for unconditional models, ``eps_fn(x_t, t, cond)`` when ``labels`` (the conditioning
    input, e.g. a one-hot [B, 10] from :func:`one_hot`) is given; ``t`` is a float32 [B] array of the public
    timestep. With ``guidance`` (classifier-free, needs ``labels``) each step calls the model on the labels and
    on ``null`` (default zeros shaped like ``labels``: :func:`null_labels` for one-hot labels) and combines them
    with :func:`guided_eps`.

    ``clip`` (off by default, because it is not linear) clips each x_prev to [-clip, clip]; only the final
    image is clipped to [-1, 1] by :func:`to_unit` for display.
    """
    schedule = schedule or make_schedule("linear", 1000)
    plan = make_plan(schedule, sampler, steps, eta)
    rand = randomness or draw_randomness(plan, shape, seed, dtype)
    if guidance is not None and labels is None:
        raise ValueError("classifier-free guidance needs labels")
    batch = int(shape[0])
    unconditional = None if labels is None else \
        np.asarray(null, np.float32) if null is not None else np.zeros_like(np.asarray(labels, np.float32))
    x = np.asarray(rand.x_T, dtype=dtype)
    trajectory: list[tuple[int, np.ndarray]] = []
    for i, (t, (a, b, c)) in enumerate(zip(plan.steps, plan.coefficients)):
        trajectory.append((t, x))
        t_in = np.full((batch,), t, np.float32)
        if labels is None:
            eps = eps_fn(x, t_in)
        elif guidance is None:
            eps = eps_fn(x, t_in, labels)
        else:
            eps = guided_eps(eps_fn(x, t_in, labels), eps_fn(x, t_in, unconditional), guidance)
        eps = np.asarray(eps, dtype=dtype)
        x = (a * x + b * eps + c * rand.noise[i]).astype(dtype)
        if clip is not None:
            x = np.clip(x, -clip, clip)
    trajectory.append((-1, x))
    return SampleResult(x, trajectory, plan)


def to_unit(x: np.ndarray) -> np.ndarray:
    """Model space [-1, 1] -> image space [0, 1] (clipped), for metrics and PNGs."""
    return np.clip((np.asarray(x, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)
