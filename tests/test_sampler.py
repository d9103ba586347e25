"""The plaintext sampler against an independent float64 numpy reference of DDPM and DDIM on a toy eps-model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime import sampler as S

SHAPE = (3, 1, 5, 4)


def toy_eps(x, t):
    """A smooth stand-in for a U-Net: depends on x_t and on the (public) timestep."""
    return 0.1 * x + np.sin(np.asarray(t, np.float64))[:, None, None, None]


def toy_eps_cond(x, t, cond):
    return toy_eps(x, t) + 0.05 * (cond @ np.arange(1, cond.shape[1] + 1, dtype=np.float64))[:, None, None, None]


# ---- independent reference ---------------------------------------------------------------------------------

def ref_alpha_bar(kind: str, T: int) -> np.ndarray:
    if kind == "linear":
        betas = np.array([1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)], np.float64)
        return np.cumprod(1.0 - betas)
    # Nichol & Dhariwal's closed form (alpha_bar(t) for the t-th noised image, t = 1..T), with their beta clip.
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    return np.cumprod(1.0 - np.array(betas))


def ref_ddpm_full(eps_fn, kind, T, x_T, noises):
    """Ho et al. (2020), Algorithm 2, with sigma_t^2 = beta_tilde_t (the posterior variance)."""
    ab = ref_alpha_bar(kind, T)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    alphas = ab / ab_prev
    betas = 1 - alphas
    x = x_T.astype(np.float64)
    for i, t in enumerate(range(T - 1, -1, -1)):
        eps = eps_fn(x, np.full(x.shape[0], t, np.float64))
        mean = (x - betas[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(alphas[t])
        sigma = np.sqrt((1 - ab_prev[t]) / (1 - ab[t]) * betas[t])
        x = mean + sigma * noises[i]
    return x


def ref_ddim(eps_fn, kind, T, ts, eta, x_T, noises, cond=None, guidance=None):
    """Song et al. (2021), eq. 12, over the timesteps ``ts`` (descending), predicting x0 explicitly."""
    ab = ref_alpha_bar(kind, T)
    x = x_T.astype(np.float64)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else None
        a_t, a_prev = ab[t], (ab[prev] if prev is not None else 1.0)
        tt = np.full(x.shape[0], t, np.float64)
        if cond is None:
            eps = eps_fn(x, tt)
        else:
            e_c = eps_fn(x, tt, cond)
            eps = e_c if guidance is None else eps_fn(x, tt, 0 * cond) + guidance * (e_c - eps_fn(x, tt, 0 * cond))
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * noises[i]
    return x


# ---- schedules and timesteps -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_match_the_papers(kind):
    np.testing.assert_allclose(S.make_schedule(kind, 1000).alphas_cumprod, ref_alpha_bar(kind, 1000),
                               rtol=1e-12, atol=1e-300)


def test_cosine_alpha_bar_is_the_closed_form_away_from_the_clip():
    ab = S.make_schedule("cosine", 1000).alphas_cumprod
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert ab[t] == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 50, 999, 1000])
def test_timesteps_are_strided_descending_and_start_fully_noised(steps):
    ts = S.timesteps(1000, steps)
    assert len(ts) == steps == len(set(ts))
    assert ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:]))
    if steps > 1:
        assert ts[-1] == 0
    if steps == 1000:
        assert ts == list(range(999, -1, -1))


@pytest.mark.parametrize("bad", [0, -1, 1001])
def test_timesteps_reject_impossible_counts(bad):
    with pytest.raises(ValueError, match="steps must be between 1 and T=1000"):
        S.timesteps(1000, bad)


def test_bad_sampler_schedule_and_eta_are_rejected():
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        S.make_plan(S.make_schedule(), "plms", 10)
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'"):
        S.make_schedule("quadratic")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        S.step_coefficients(S.make_schedule(), 10, 5, -0.5)
    with pytest.raises(ValueError, match="t_prev"):
        S.step_coefficients(S.make_schedule(), 10, 10, 0.0)


# ---- the linear update -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_coefficients_reproduce_one_reference_step(kind, eta, rng):
    schedule = S.make_schedule(kind, 1000)
    x, eps, z = (rng.standard_normal(SHAPE) for _ in range(3))
    ab = np.concatenate([ref_alpha_bar(kind, 1000), [1.0]])  # ab[-1] = 1: the clean image
    for t, t_prev in [(999, 949), (500, 499), (40, 0), (0, -1), (37, -1)]:
        a, b, c = S.step_coefficients(schedule, t, t_prev, eta)
        a_t, a_p = ab[t], ab[t_prev]
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        sigma = eta * np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        want = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma ** 2) * eps + sigma * z
        np.testing.assert_allclose(a * x + b * eps + c * z, want, rtol=1e-12, atol=1e-12)
        # The step to the clean image never adds noise.
        assert (c == 0.0) == (eta == 0.0 or t_prev == -1)


def test_ddpm_plan_is_ho_et_al_coefficients():
    schedule = S.make_schedule("linear", 1000)
    plan = S.make_plan(schedule, "ddpm", 1000)
    ab = ref_alpha_bar("linear", 1000)
    for t in (999, 500, 1):
        a, b, c = plan.coefficients[999 - t]
        alpha = ab[t] / ab[t - 1]
        assert a == pytest.approx(1 / np.sqrt(alpha), rel=1e-12)
        assert b == pytest.approx(-(1 - alpha) / np.sqrt(1 - ab[t]) / np.sqrt(alpha), rel=1e-9)
        assert c ** 2 == pytest.approx((1 - ab[t - 1]) / (1 - ab[t]) * (1 - alpha), rel=1e-9)
    assert plan.coefficients[-1][2] == 0.0  # the last DDPM step adds no noise (beta_tilde_0 = 0)


# ---- whole runs against the reference ----------------------------------------------------------------------

def _noise(plan, seed):
    r = S.draw_randomness(plan, SHAPE, seed, np.float64)
    return r, r.x_T, r.noise


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_full_ddpm_equals_ho_et_al(kind):
    schedule = S.make_schedule(kind, 1000)
    plan = S.make_plan(schedule, "ddpm", 1000)
    rand, x_T, noises = _noise(plan, 3)
    got = S.sample(toy_eps, SHAPE, "ddpm", 1000, schedule=schedule, randomness=rand, dtype=np.float64)
    np.testing.assert_allclose(got.image, ref_ddpm_full(toy_eps, kind, 1000, x_T, noises), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,eta,steps", [("ddim", 0.0, 20), ("ddim", 0.0, 50), ("ddim", 0.3, 20),
                                               ("ddim", 1.0, 10), ("ddpm", None, 25)])
def test_strided_runs_equal_the_reference(kind, sampler, eta, steps):
    schedule = S.make_schedule(kind, 1000)
    plan = S.make_plan(schedule, sampler, steps, eta)
    rand, x_T, noises = _noise(plan, 5)
    got = S.sample(toy_eps, SHAPE, sampler, steps, schedule=schedule, eta=eta, randomness=rand, dtype=np.float64)
    want = ref_ddim(toy_eps, kind, 1000, S.timesteps(1000, steps), 1.0 if sampler == "ddpm" else eta,
                    x_T, noises)
    np.testing.assert_allclose(got.image, want, rtol=1e-10, atol=1e-10)
    assert [t for t, _ in got.trajectory] == S.timesteps(1000, steps) + [-1]
    np.testing.assert_array_equal(got.trajectory[0][1], x_T)


def test_float32_sampling_stays_close_to_float64():
    schedule = S.make_schedule("linear", 1000)
    got32 = S.sample(toy_eps, SHAPE, "ddim", 20, seed=11, schedule=schedule, eta=0.5)
    got64 = S.sample(toy_eps, SHAPE, "ddim", 20, seed=11, schedule=schedule, eta=0.5, dtype=np.float64)
    assert got32.image.dtype == np.float32
    np.testing.assert_allclose(got32.image, got64.image, rtol=1e-4, atol=1e-4)


def test_classifier_free_guidance_equals_the_reference():
    schedule = S.make_schedule("linear", 1000)
    labels = S.one_hot([3, 0, 9])
    plan = S.make_plan(schedule, "ddim", 20)
    rand, x_T, noises = _noise(plan, 8)
    got = S.sample(toy_eps_cond, SHAPE, "ddim", 20, schedule=schedule, labels=labels, guidance=2.5,
                   randomness=rand, dtype=np.float64)
    want = ref_ddim(toy_eps_cond, "linear", 1000, S.timesteps(1000, 20), 0.0, x_T, noises,
                    cond=labels.astype(np.float64), guidance=2.5)
    np.testing.assert_allclose(got.image, want, rtol=1e-10, atol=1e-10)
    w_c, w_u = S.guidance_weights(2.5)
    e_c, e_u = np.ones(3), np.full(3, 4.0)
    np.testing.assert_allclose(w_c * e_c + w_u * e_u, S.guided_eps(e_c, e_u, 2.5))


def test_guidance_without_labels_is_an_error():
    with pytest.raises(ValueError, match="needs labels"):
        S.sample(toy_eps, SHAPE, "ddim", 5, guidance=3.0)


def test_the_same_seed_gives_the_same_user_noise_for_ddim_and_ddpm():
    schedule = S.make_schedule()
    a = S.draw_randomness(S.make_plan(schedule, "ddim", 20), SHAPE, 42)
    b = S.draw_randomness(S.make_plan(schedule, "ddpm", 20), SHAPE, 42)
    np.testing.assert_array_equal(a.x_T, b.x_T)
    assert all(np.array_equal(u, v) for u, v in zip(a.noise, b.noise))
    c = S.draw_randomness(S.make_plan(schedule, "ddim", 20), SHAPE, 43)
    assert not np.array_equal(a.x_T, c.x_T)


def test_deterministic_ddim_ignores_the_step_noise():
    schedule = S.make_schedule()
    plan = S.make_plan(schedule, "ddim", 10)
    r = S.draw_randomness(plan, SHAPE, 1, np.float64)
    other = S.Randomness(r.x_T, [n + 5.0 for n in r.noise])
    a = S.sample(toy_eps, SHAPE, "ddim", 10, randomness=r, dtype=np.float64)
    b = S.sample(toy_eps, SHAPE, "ddim", 10, randomness=other, dtype=np.float64)
    np.testing.assert_array_equal(a.image, b.image)
    assert plan.needs_noise == [False] * 10


def test_plan_is_json_ready():
    import json

    plan = S.make_plan(S.make_schedule("cosine"), "ddim", 4, eta=0.2)
    d = json.loads(json.dumps(plan.to_json()))
    assert d["schedule"] == {"kind": "cosine", "T": 1000} and len(d["steps"]) == 4
    assert d["steps"][-1]["t_prev"] == -1
