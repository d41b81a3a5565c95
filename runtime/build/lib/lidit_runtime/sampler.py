"""Sampler math shared by every backend (PyTorch reference, ONNX Runtime, TensorRT).

Every supported sampler is written as one linear update per step, with scalar coefficients computed
once in float64:

    denoised = p_x * x + p_m * model_out              # x0 (DDPM samplers) or velocity (flow)
    x_next   = q_x * x + q_d * denoised + q_prev * denoised_prev

so a backend needs only multiply-adds on its own arrays (numpy, torch, a CUDA kernel or a small graph
fed with the coefficient row of the step). The tables reproduce diffusers' DPMSolverMultistepScheduler
(dpmsolver++, order 2, midpoint), DDIMScheduler (eta 0) and a flow-matching Euler integrator; tests
check them against diffusers on the same model-output sequences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .schema import from_dict

SAMPLERS = ("dpmpp_2m", "ddim", "flow_euler")
SPACINGS = ("trailing", "linspace", "leading")
SEQ_LENS = ("patches", "channels")
MAX_CFG = 100.0  # guidance scales past this only amplify noise; also bounds what a request may ask


@dataclass
class SchedulerConfig:
    """How the model was trained (DDPM eps or flow velocity) and how it is sampled by default."""

    sampler: str = "dpmpp_2m"  # [choice] DPM-Solver++(2M); "ddim" and "flow_euler" also supported
    prediction: str = "epsilon"  # [paper] DDPM epsilon; "velocity" for flow-matching models
    num_train_timesteps: int = 1000  # [choice]
    beta_start: float = 0.0001  # [choice] linear betas of Ho et al. 2020
    beta_end: float = 0.02
    timestep_spacing: str = "trailing"  # starts at t = T-1 (Lin et al. 2024); "linspace" = diffusers DPM
    flow_shift: float = 1.0  # SD3-style sigma shift for flow models
    # Resolution-dependent shift (diffusers' use_dynamic_shifting): sigma' = e^mu / (e^mu + 1/sigma - 1), mu
    # linear in a sequence length between (base_seq_len, base_shift) and (max_seq_len, max_shift).
    dynamic_shift: bool = False
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    shift_seq_len: str = "patches"  # "patches": DiT tokens of the image; "channels": the latent's channel count
    # (what Lumina-2's pipeline passes: latents.shape[1]; reproduced as the pipeline does it)
    sigma_precision: str = "float64"  # "float32": sigmas rounded as diffusers' FlowMatchEulerDiscreteScheduler does
    default_steps: int = 20
    default_cfg: float = 5.0

    def validate(self) -> "SchedulerConfig":
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"scheduler.sampler={self.sampler!r} is unknown; use one of {SAMPLERS}")
        if self.timestep_spacing not in SPACINGS:
            raise ConfigError(
                f"scheduler.timestep_spacing={self.timestep_spacing!r} is unknown; use one of {SPACINGS}")
        flow = self.sampler == "flow_euler"
        if flow != (self.prediction == "velocity"):
            raise ConfigError(
                f"scheduler.prediction={self.prediction!r} does not fit sampler {self.sampler!r}: "
                "flow_euler needs 'velocity', dpmpp_2m and ddim need 'epsilon'")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"scheduler betas ({self.beta_start}, {self.beta_end}) must satisfy 0 < start < end < 1")
        if self.num_train_timesteps < 2 or self.flow_shift <= 0:
            raise ConfigError("scheduler.num_train_timesteps must be >= 2 and flow_shift > 0")
        if self.shift_seq_len not in SEQ_LENS or self.sigma_precision not in ("float32", "float64"):
            raise ConfigError(f"scheduler.shift_seq_len={self.shift_seq_len!r} must be one of {SEQ_LENS} and "
                              f"sigma_precision={self.sigma_precision!r} float32 or float64")
        if self.dynamic_shift and not (0 < self.base_seq_len < self.max_seq_len and
                                       all(map(math.isfinite, (self.base_shift, self.max_shift)))):
            raise ConfigError("scheduler dynamic shift needs 0 < base_seq_len < max_seq_len and finite shifts")
        if not 1 <= self.default_steps <= self.num_train_timesteps or not 0 <= self.default_cfg <= MAX_CFG:
            raise ConfigError(f"scheduler.default_steps={self.default_steps} must lie in [1, num_train_timesteps] and "
                              f"default_cfg={self.default_cfg} in [0, {MAX_CFG}]")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "SchedulerConfig":
        return from_dict(cls, data, "scheduler", ConfigError).validate()


@dataclass(frozen=True)
class SamplingPlan:
    """Per-step model timesteps and update coefficients; rows are steps."""

    timesteps: np.ndarray  # (S,) float64, the value fed to the model's timestep embedder
    coefficients: np.ndarray  # (S, 5) float64: p_x, p_m, q_x, q_d, q_prev

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    betas = np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def discrete_timesteps(config: SchedulerConfig, steps: int) -> np.ndarray:
    """Integer training timesteps visited, high to low (diffusers' DPMSolverMultistep rules)."""
    T = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        t = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif config.timestep_spacing == "leading":
        ratio = T // (steps + 1)
        t = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1]
    else:  # trailing
        t = np.arange(T, 0, -T / steps).round() - 1
    return t.astype(np.int64)


def make_plan(config: SchedulerConfig, steps: int, latent_shape: tuple | None = None,
              patch_size: int = 1) -> SamplingPlan:
    """The plan for `steps` steps; latent_shape (B, C, h, w) and patch_size size a dynamic shift."""
    if not 1 <= steps <= config.num_train_timesteps:
        raise ConfigError(f"steps={steps} must be between 1 and {config.num_train_timesteps}")
    if config.sampler == "flow_euler":
        return _flow_euler_plan(config, steps, _shift_mu(config, latent_shape, patch_size))
    build = {"dpmpp_2m": _dpmpp_2m_plan, "ddim": _ddim_plan}[config.sampler]
    return build(config, steps)


def _shift_mu(config: SchedulerConfig, latent_shape, patch_size: int) -> float | None:
    if not config.dynamic_shift:
        return None
    if latent_shape is None:
        raise ConfigError("this scheduler shifts by resolution: make_plan needs the latent shape")
    if config.shift_seq_len == "channels":
        seq_len = latent_shape[1]
    else:
        seq_len = (latent_shape[2] // patch_size) * (latent_shape[3] // patch_size)
    m = (config.max_shift - config.base_shift) / (config.max_seq_len - config.base_seq_len)
    return seq_len * m + config.base_shift - m * config.base_seq_len


def _dpmpp_2m_plan(config: SchedulerConfig, steps: int) -> SamplingPlan:
    t = discrete_timesteps(config, steps)
    ac = alphas_cumprod(config)
    table = np.sqrt((1 - ac) / ac)
    sig = np.append(np.interp(t, np.arange(len(table)), table), 0.0)  # final sigma "zero", like diffusers
    alpha = 1.0 / np.sqrt(sig**2 + 1.0)
    sigma = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    rows = []
    for i in range(steps):
        p_x, p_m = 1.0 / alpha[i], -sigma[i] / alpha[i]  # x0 = (x - sigma eps) / alpha
        if sigma[i + 1] == 0.0:  # last step to sigma 0 lands on the x0 prediction (first order)
            rows.append((p_x, p_m, 0.0, 1.0, 0.0))
            continue
        h = lam[i + 1] - lam[i]
        phi = alpha[i + 1] * math.expm1(-h)  # alpha_t (e^{-h} - 1)
        q_x = sigma[i + 1] / sigma[i]
        if i == 0:  # no history yet: first-order DPM-Solver++
            rows.append((p_x, p_m, q_x, -phi, 0.0))
        else:  # 2M midpoint: D0 = m0, D1 = (m0 - m1) / r0
            r0 = (lam[i] - lam[i - 1]) / h
            rows.append((p_x, p_m, q_x, -phi * (1.0 + 0.5 / r0), phi * 0.5 / r0))
    return SamplingPlan(t.astype(np.float64), np.array(rows, dtype=np.float64))


def _ddim_plan(config: SchedulerConfig, steps: int) -> SamplingPlan:
    t = discrete_timesteps(config, steps)
    ac = alphas_cumprod(config)
    rows = []
    for i in range(steps):
        a = ac[t[i]]
        a_prev = ac[t[i + 1]] if i + 1 < steps else 1.0  # set_alpha_to_one at the end
        # x0 = (x - sqrt(1-a) eps)/sqrt(a);  x_prev = sqrt(a_prev) x0 + sqrt(1-a_prev) eps, eps from x and x0
        k = math.sqrt(1 - a_prev) / math.sqrt(1 - a)
        rows.append((1 / math.sqrt(a), -math.sqrt(1 - a) / math.sqrt(a), k, math.sqrt(a_prev) - k * math.sqrt(a), 0.0))
    return SamplingPlan(t.astype(np.float64), np.array(rows, dtype=np.float64))


def _flow_euler_plan(config: SchedulerConfig, steps: int, mu: float | None = None) -> SamplingPlan:
    # x_s = (1 - s) x0 + s noise, velocity v = noise - x0; integrate ds from 1 to 0 with Euler steps.
    if config.sigma_precision == "float32":  # diffusers: sigmas as float32 from the first cast on, timesteps s * T
        s = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
        if mu is not None:
            s = (math.exp(mu) / (math.exp(mu) + (1 / s - 1))).astype(np.float32)
        else:
            s = (np.float32(config.flow_shift) * s / (1 + (np.float32(config.flow_shift) - 1) * s)).astype(np.float32)
        timesteps = (s * np.float32(config.num_train_timesteps)).astype(np.float64)
        s = np.append(s.astype(np.float64), 0.0)
    else:
        s = np.linspace(1.0, 0.0, steps + 1)
        if mu is not None:
            s[:-1] = math.exp(mu) / (math.exp(mu) + (1 / s[:-1] - 1))
        else:
            s = config.flow_shift * s / (1 + (config.flow_shift - 1) * s)
        timesteps = s[:-1] * config.num_train_timesteps
    rows = [(0.0, 1.0, 1.0, s[i + 1] - s[i], 0.0) for i in range(steps)]
    return SamplingPlan(timesteps, np.array(rows, dtype=np.float64))


class Sampler:
    """Applies a plan step by step to arrays of any kind that support * and + with Python floats."""

    def __init__(self, plan: SamplingPlan):
        self.plan = plan
        self._prev = None

    def step(self, index: int, x, model_out):
        p_x, p_m, q_x, q_d, q_prev = (float(c) for c in self.plan.coefficients[index])
        denoised = model_out * p_m if p_x == 0.0 else x * p_x + model_out * p_m
        x_next = x * q_x + denoised * q_d
        if q_prev != 0.0:
            x_next = x_next + self._prev * q_prev
        self._prev = denoised
        return x_next
