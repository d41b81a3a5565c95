"""The shared sampler tables against diffusers' schedulers, and flow Euler against known ODEs."""
import numpy as np
import pytest
import torch

from lidit_runtime.errors import ConfigError
from lidit_runtime.sampler import Sampler, SchedulerConfig, discrete_timesteps, make_plan


def _model_outputs(steps, shape=(2, 4, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)], rng.standard_normal(shape)


def assert_matches_float32_reference(ours, ref):
    # diffusers keeps alphas_cumprod in float32; we compute in float64: agree to float32 rounding.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def _run_ours(config, steps, outputs, x):
    plan = make_plan(config, steps)
    sampler = Sampler(plan)
    for i in range(steps):
        x = sampler.step(i, x, outputs[i])
    return plan, x


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 25])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_dpmpp_2m_matches_diffusers(steps, spacing):
    from diffusers import DPMSolverMultistepScheduler

    config = SchedulerConfig(sampler="dpmpp_2m", timestep_spacing=spacing)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                      beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
                                      timestep_spacing=spacing)
    ref.set_timesteps(steps)
    outputs, x0 = _model_outputs(steps)
    plan, ours = _run_ours(config, steps, outputs, x0)
    np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())
    x = torch.from_numpy(x0)
    for i, t in enumerate(ref.timesteps):
        x = ref.step(torch.from_numpy(outputs[i]), t, x).prev_sample
    assert_matches_float32_reference(ours, x.numpy())


@pytest.mark.parametrize("steps", [1, 10, 20, 50])
def test_ddim_matches_diffusers(steps):
    from diffusers import DDIMScheduler

    # diffusers' DDIM steps to t - T/steps, which equals our next timestep for trailing spacing when
    # steps divides T; for other spacings diffusers skips inconsistently and we follow our own schedule.
    config = SchedulerConfig(sampler="ddim", timestep_spacing="trailing")
    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                        clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    outputs, x0 = _model_outputs(steps, seed=1)
    plan, ours = _run_ours(config, steps, outputs, x0)
    np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())
    x = torch.from_numpy(x0)
    for i, t in enumerate(ref.timesteps):
        x = ref.step(torch.from_numpy(outputs[i]), t, x, eta=0.0).prev_sample
    assert_matches_float32_reference(ours, x.numpy())


def test_ddpm_samplers_recover_x0_when_the_model_is_exact():
    # A model that predicts the true noise of a single data point makes every DDPM sampler land on it.
    target = np.array([0.5, -1.25, 2.0])
    for sampler in ("dpmpp_2m", "ddim"):
        config = SchedulerConfig(sampler=sampler)
        plan = make_plan(config, 10)
        ac = np.cumprod(1 - np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps))
        s = Sampler(plan)
        x = np.array([1.0, 0.3, -0.7])
        for i, t in enumerate(plan.timesteps.astype(int)):
            eps = (x - np.sqrt(ac[t]) * target) / np.sqrt(1 - ac[t])
            x = s.step(i, x, eps)
        np.testing.assert_allclose(x, target, atol=1e-9)


def test_flow_euler_is_exact_on_straight_paths():
    # Data = a point c: the true velocity field v(x, s) = (x - c) / s has straight trajectories,
    # which Euler integrates exactly whatever the step count and shift.
    c = np.array([0.25, -2.0, 1.0])
    for steps, shift in ((1, 1.0), (4, 1.0), (13, 3.0)):
        config = SchedulerConfig(sampler="flow_euler", prediction="velocity", flow_shift=shift)
        plan = make_plan(config, steps)
        sigmas = plan.timesteps / config.num_train_timesteps
        s = Sampler(plan)
        x = np.array([1.0, 1.0, -3.0])
        for i in range(steps):
            x = s.step(i, x, (x - c) / sigmas[i])
        np.testing.assert_allclose(x, c, atol=1e-12)


def test_flow_euler_converges_at_first_order_on_a_gaussian():
    # Data ~ N(mu, s0^2) in 1-D: x_s = (1-s) x0 + s n has std a(s) = sqrt((1-s)^2 s0^2 + s^2) and the exact
    # flow maps the noise n to mu + s0 * n. Euler's error must shrink ~2x when the steps double.
    mu, s0, n = 1.5, 0.3, 0.8

    def velocity(x, s):
        a2 = (1 - s) ** 2 * s0**2 + s**2
        da2 = -2 * (1 - s) * s0**2 + 2 * s
        return -mu + (x - (1 - s) * mu) * da2 / (2 * a2)

    errors = []
    for steps in (10, 20, 40, 80):
        config = SchedulerConfig(sampler="flow_euler", prediction="velocity")
        plan = make_plan(config, steps)
        s = Sampler(plan)
        x = n
        for i in range(steps):
            x = s.step(i, x, velocity(x, plan.timesteps[i] / 1000))
        errors.append(abs(x - (mu + s0 * n)))
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert errors[-1] < 6e-3
    assert all(1.7 < r < 2.3 for r in ratios), ratios


def test_trailing_spacing_starts_at_the_last_training_step():
    assert discrete_timesteps(SchedulerConfig(), 20)[0] == 999
    assert list(discrete_timesteps(SchedulerConfig(), 4)) == [999, 749, 499, 249]


@pytest.mark.parametrize("bad, message", [
    (dict(sampler="euler_a"), "sampler"),
    (dict(sampler="flow_euler"), "velocity"),
    (dict(timestep_spacing="karras"), "timestep_spacing"),
    (dict(beta_start=0.1, beta_end=0.01), "betas"),
])
def test_invalid_scheduler_configs_are_refused_with_the_field_named(bad, message):
    with pytest.raises(ConfigError, match=message):
        SchedulerConfig(**bad).validate()


def test_steps_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="steps=0"):
        make_plan(SchedulerConfig(), 0)
