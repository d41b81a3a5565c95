"""How a model family chains its graphs, as data in the manifest: the runtime has no family branches.

A family differs from another in a few host-side rules around the same four graphs (encoder -> refiner ->
DiT per step -> VAE decoder). Each rule is a field here, with LI-DiT's value as its default:

* whether the refiner depends on the timestep (run every step) or not (run once per request);
* the DiT's timestep: `timestep_offset + timestep_scale * t`, t the sampler's (sigma * 1000 for flow models);
* the sign of its output (`output_scale`);
* the guidance formula: `uncond + s * (cond - uncond)` with s = cfg + `scale_offset`, applied when s != 1
  (`applies="not_one"`) or only when s > 1 (`"above_one"`); truncation (no guidance once a progress measure
  passes the request's threshold); renormalisation of the guided output against the conditional one;
* the VAE's latent scale and shift, applied on the host before the decoder graph.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .errors import ConfigError

APPLIES = ("not_one", "above_one")
TRUNCATION = ("none", "sigma", "step")
RENORM = ("none", "clamp", "match")
RENORM_AXES = ("sample", "last")
MAX_NORMALIZATION = 100.0


@dataclass
class GuidanceRule:
    """Classifier-free guidance as one family writes it."""

    scale_offset: float = 0.0  # s = cfg + scale_offset (Z-Image's `pos + g (pos - neg)` is offset 1)
    applies: str = "not_one"  # "not_one": guided unless s == 1; "above_one": guided only when s > 1
    truncation: str = "none"  # "sigma": no guidance once 1 - sigma_i > cfg_truncation; "step": once (i+1)/n > it
    default_truncation: float = 1.0  # the request's cfg_truncation when it gives none
    renorm: str = "none"  # "clamp": scale down to c * ||cond|| when above; "match": scale to c * ||cond||
    renorm_axes: str = "sample"  # "sample": the norm of each sample's whole latent; "last": over the last axis
    default_normalization: float = 0.0  # c when the request gives none; 0 turns renormalisation off

    def validate(self, where: str = "chain.guidance") -> "GuidanceRule":
        for name, allowed in (("applies", APPLIES), ("truncation", TRUNCATION), ("renorm", RENORM),
                              ("renorm_axes", RENORM_AXES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("scale_offset", "default_truncation", "default_normalization"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{where}.{name}={value!r} must be a finite number")
        return self

    def scale(self, cfg: float) -> float:
        return cfg + self.scale_offset

    def guided(self, cfg: float) -> bool:
        s = self.scale(cfg)
        return s != 1.0 if self.applies == "not_one" else s > 1.0

    def truncated(self, threshold: float, step: int, steps: int, sigma: float) -> bool:
        """Whether guidance is off at `step` (of `steps`, at noise level `sigma`) for this threshold."""
        if self.truncation == "sigma":
            return threshold <= 1.0 and 1.0 - sigma > threshold
        if self.truncation == "step":
            return (step + 1) / steps > threshold
        return False

    def axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(1, ndim)) if self.renorm_axes == "sample" else (ndim - 1,)


@dataclass
class ChainRecord:
    """The host-side rules of one family's chain (defaults: LI-DiT's)."""

    family: str = "lidit"
    refiner_timestep: bool = True  # False: the refiner runs once per request, not per step
    timestep_offset: float = 0.0  # the DiT's timestep input = offset + scale * t
    timestep_scale: float = 1.0
    output_scale: float = 1.0  # the DiT output is multiplied by this after guidance (-1: the families' negation)
    latent_scale: float = 1.0  # the VAE decoder graph gets latents / latent_scale + latent_shift
    latent_shift: float = 0.0
    guidance: GuidanceRule = field(default_factory=GuidanceRule)

    def validate(self) -> "ChainRecord":
        for name in ("timestep_offset", "timestep_scale", "output_scale", "latent_scale", "latent_shift"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"chain.{name}={value!r} must be a finite number")
        if self.latent_scale == 0 or self.timestep_scale == 0 or self.output_scale == 0:
            raise ConfigError("chain.latent_scale, timestep_scale and output_scale must be non-zero")
        self.guidance.validate()
        return self


def check_guidance_fields(chain: ChainRecord, truncation, normalization) -> None:
    """The request's cfg_truncation / cfg_normalization (already defaulted): numbers this chain can apply."""
    rule = chain.guidance
    for name, value, used in (("cfg_truncation", truncation, rule.truncation != "none"),
                              ("cfg_normalization", normalization, rule.renorm != "none")):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} must be a finite number", name)
        if not used and value != (rule.default_truncation if name == "cfg_truncation" else rule.default_normalization):
            raise ConfigError(f"{name}={value!r}: the {chain.family} chain has no "
                              f"{'guidance truncation' if name == 'cfg_truncation' else 'guidance renormalisation'}; "
                              "leave it unset", name)
    if not 0.0 <= truncation <= 1.0:
        raise ConfigError(f"cfg_truncation={truncation!r} must lie between 0 and 1 (1: never truncated)", "cfg_truncation")
    if not 0.0 <= normalization <= MAX_NORMALIZATION:
        raise ConfigError(f"cfg_normalization={normalization!r} must lie between 0 (off) and {MAX_NORMALIZATION:g}",
                          "cfg_normalization")
