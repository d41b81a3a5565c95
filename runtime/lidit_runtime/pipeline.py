"""The one place that decides the order of stages and applies the sampler, for every backend."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .backends.base import Backend
from .chain import ChainRecord, check_guidance_fields
from .errors import ConfigError, NonFiniteError, ShapeError
from .noise import initial_noise  # noqa: F401 (re-exported: the one definition of a seed's latents)
from .sampler import MAX_CFG, Sampler, SchedulerConfig, make_plan
from .tokenize import PromptTokenizer

log = logging.getLogger(__name__)

# Caps on one request, checked before anything is allocated.
MAX_STEPS = 1000
MAX_PROMPT_CHARS = 20_000  # far past any encoder's max_length (captions are truncated to it in tokens)
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class LatentGeometry:
    latent_channels: int
    vae_scale_factor: int  # pixels per latent cell (8 for the paper's VAE)
    patch_size: int  # DiT patch size in latent cells

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        step = self.vae_scale_factor * self.patch_size
        if height <= 0 or width <= 0 or height % step or width % step:
            raise ShapeError(f"resolution {height}x{width} is not supported: height and width must be positive "
                             f"multiples of {step} (VAE factor {self.vae_scale_factor} x patch {self.patch_size})")
        f = self.vae_scale_factor
        return (batch, self.latent_channels, height // f, width // f)


@dataclass
class GenerateRequest:
    """What to draw; the one request shape of the PyTorch reference and every runtime backend. None means
    the model's default (scheduler steps and cfg, default size); any other value is checked, 0 included."""

    prompts: Sequence[str]
    negative_prompt: str = ""  # the empty caption through the same template is the unconditional input
    steps: int | None = None
    cfg: float | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    cfg_truncation: float | None = None  # guidance off past this progress (chains that truncate; 1: never)
    cfg_normalization: float | None = None  # guided output renormalised to this multiple of the conditional's
    seeds: Sequence[int] | None = None  # one seed per prompt (each row's noise drawn alone); None: `seed` for all

    def with_defaults(self, scheduler: SchedulerConfig, height: int, width: int,
                      chain: ChainRecord | None = None) -> "GenerateRequest":
        rule = (chain or ChainRecord()).guidance
        return dataclasses.replace(
            self, steps=scheduler.default_steps if self.steps is None else self.steps,
            cfg=scheduler.default_cfg if self.cfg is None else self.cfg,
            height=height if self.height is None else self.height, width=width if self.width is None else self.width,
            negative_prompt="" if self.negative_prompt is None else self.negative_prompt,
            cfg_truncation=rule.default_truncation if self.cfg_truncation is None else self.cfg_truncation,
            cfg_normalization=rule.default_normalization if self.cfg_normalization is None else self.cfg_normalization)


def as_request(request: "GenerateRequest | str | Sequence[str]", **fields) -> GenerateRequest:
    """The prompt-string convenience: generate("a red cat", steps=20) is generate(GenerateRequest(["a red cat"],
    steps=20)); a GenerateRequest passes through (fields then are refused, not merged)."""
    if isinstance(request, GenerateRequest):
        if fields:
            raise ConfigError(f"pass either a GenerateRequest or a prompt with fields, not both ({', '.join(fields)})")
        return request
    known = {f.name for f in dataclasses.fields(GenerateRequest)} - {"prompts"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown request fields {unknown}; known: {sorted(known)}")
    return GenerateRequest(prompts=[request] if isinstance(request, str) else request, **fields)


@dataclass(frozen=True)
class RequestLimits:
    """What a build was exported for: prompts per call and latent side range (cells) of its graphs."""

    max_batch: int | None  # None: unchecked (the PyTorch reference has no graphs to outgrow)
    min_latent: int
    max_latent: int

    @classmethod
    def from_dims(cls, dit_dims: dict, vae_dims: dict) -> "RequestLimits":
        """From the DiT's and VAE decoder's [min, opt, max] dims (the decoder takes one row per prompt)."""
        heights, widths = dit_dims["latent_height"], dit_dims["latent_width"]
        return cls(vae_dims["batch"][2], max(heights[0], widths[0]), min(heights[2], widths[2]))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_request(request: GenerateRequest, geometry: LatentGeometry, scheduler: SchedulerConfig,
                  limits: RequestLimits | None, warned: set | None = None,
                  chain: ChainRecord | None = None) -> tuple[int, int, int, int]:
    """Refuse what cannot be drawn right, before anything is allocated; returns the latent shape.

    Beyond the build's largest size is refused (the graphs were never exported for it: re-export with a
    larger --max-image); below its smallest is allowed with a warning (the graphs take any size and
    small images are cheap, but no profile or parity check covered them)."""
    prompts = request.prompts
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ConfigError(f"prompts must be a list of strings, got {type(prompts).__name__}", "prompts")
    if not prompts:
        raise ConfigError("no prompt given: pass at least one prompt", "prompts")
    for what, field_, text in [*(("prompt", "prompts", p) for p in prompts),
                               ("negative prompt", "negative_prompt", request.negative_prompt)]:
        if not isinstance(text, str):
            raise ConfigError(f"each {what} must be a string, got {type(text).__name__}", field_)
        if len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"{what} of {len(text)} characters is over the {MAX_PROMPT_CHARS} allowed; shorten it "
                              "(encoders read at most max_length tokens anyway)", field_)
    top = min(MAX_STEPS, scheduler.num_train_timesteps)
    if not _is_int(request.steps) or not 1 <= request.steps <= top:
        raise ConfigError(f"steps={request.steps!r} must be an integer between 1 and {top}", "steps")
    cfg = request.cfg
    if not isinstance(cfg, numbers.Real) or isinstance(cfg, bool) or not math.isfinite(cfg) or not 0 <= cfg <= MAX_CFG:
        off = 1.0 - (chain or ChainRecord()).guidance.scale_offset
        raise ConfigError(f"cfg={cfg!r} must be a finite number between 0 and {MAX_CFG:g} ({off:g} disables guidance)",
                          "cfg")
    check_guidance_fields(chain or ChainRecord(), request.cfg_truncation, request.cfg_normalization)
    if not _is_int(request.seed) or not 0 <= request.seed <= MAX_SEED:
        raise ConfigError(f"seed={request.seed!r} must be an integer between 0 and 2**64 - 1", "seed")
    if request.seeds is not None:
        if not isinstance(request.seeds, (list, tuple)) or len(request.seeds) != len(prompts):
            raise ConfigError(f"seeds must be a list of one seed per prompt ({len(prompts)})", "seeds")
        if not all(_is_int(s) and 0 <= s <= MAX_SEED for s in request.seeds):
            raise ConfigError("every seed must be an integer between 0 and 2**64 - 1", "seeds")
    for name in ("height", "width"):
        if not _is_int(getattr(request, name)):
            raise ConfigError(f"{name}={getattr(request, name)!r} must be an integer number of pixels", name)
    shape = geometry.latent_shape(len(prompts), int(request.height), int(request.width))
    if limits is not None:
        if limits.max_batch is not None and len(prompts) > limits.max_batch:
            raise ShapeError(f"{len(prompts)} prompts in one call; this build takes at most {limits.max_batch} "
                             "(split the request, or re-export with a larger --max-batch)")
        f = geometry.vae_scale_factor
        if max(shape[2:]) > limits.max_latent:
            raise ShapeError(f"resolution {request.height}x{request.width} is over the largest side this build was "
                             f"exported for ({limits.max_latent * f} px); re-export with --max-image "
                             f"{max(request.height, request.width)}")
        if min(shape[2:]) < limits.min_latent and warned is not None and shape[2:] not in warned:
            warned.add(shape[2:])
            log.warning("resolution %dx%d is below this build's smallest validated side of %d px: it runs, but no "
                        "profile or parity check covered it", request.height, request.width, limits.min_latent * f)
    return shape


def check_finite(backend: Backend, array, stage: str) -> None:
    """One reduction per stage boundary: NaN or infinity never reaches an image silently."""
    if not np.isfinite(array if isinstance(array, np.ndarray) else backend.to_numpy(array)).all():
        raise NonFiniteError(f"{stage} produced NaN or infinite values; the build's weights may be damaged (verify "
                             "or rebuild it) or the numbers left the precision's range (try --precision fp32)")


@dataclass
class GenerateResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    latents: np.ndarray  # (B, C, h, w) float32, final latents before the VAE
    timings: dict = field(default_factory=dict)  # seconds per stage
    trajectory: list = field(default_factory=list)  # latents after every step, when asked for
    request: GenerateRequest | None = None  # what was drawn, defaults resolved


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounding to nearest."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


class UncondCache:
    """What the negative prompt gives a build, kept across requests (it never changes): its encoder outputs and,
    per timestep schedule, its refined tokens. Least recently used entries go beyond `max_entries` (requests
    choose their negative prompt, so an unbounded cache would grow with them); safe to share between threads.
    Values are host (numpy) arrays."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def encode_conditions(backend: Backend, tokenizers: Sequence[PromptTokenizer], prompts: list[str],
                      negative: str | None, uncond_cache: UncondCache | None):
    """Encoder outputs for [prompts; negative x B] (or prompts alone when negative is None).

    Returns per LLM: hidden (R, L, H), mask (R, L), pooled (R, H) or None (encoders without a pooled
    output) as backend arrays, R = 2B or B; and, when the negative prompt came from `uncond_cache`, its own
    (hidden (1, Lu, H), mask (1, Lu), pooled) per LLM at its own length (host arrays), else None. Cached
    unconditional rows are padded with zero states and mask 0; padded tokens are masked in every attention
    and excluded from the pooled mean, so this equals encoding the rows together.
    """
    batch = len(prompts)
    cached_negative = negative is not None and uncond_cache is not None
    hidden, masks, pooled, natural = [], [], [], [] if cached_negative else None
    for index, tokenizer in enumerate(tokenizers):
        if not cached_negative:
            rows = tokenizer.rows(prompts) + (tokenizer.rows([negative], negative=True) * batch if negative is not None else [])
            tokens = tokenizer.pack(rows)
            mask = backend.asarray(tokens.attention_mask)
            h, p = backend.encode_prompt(index, backend.asarray(tokens.input_ids), mask)
            hidden.append(h)
            masks.append(mask)
            pooled.append(p)
            continue
        key = ("encoded", index, negative)
        cached = uncond_cache.get(key)
        if cached is None:
            t = tokenizer([negative], negative=True)
            h, p = backend.encode_prompt(index, backend.asarray(t.input_ids), backend.asarray(t.attention_mask))
            cached = uncond_cache.put(key, (backend.to_numpy(h).copy(), None if p is None else backend.to_numpy(p).copy(),
                                            t.attention_mask))
        u_hidden, u_pooled, u_mask = cached
        natural.append((u_hidden, u_mask, u_pooled))
        cond = tokenizer(prompts)
        length = max(cond.input_ids.shape[1], u_mask.shape[1])
        if cond.input_ids.shape[1] < length:
            cond = tokenizer(prompts, pad_to=length)
        pad = length - u_mask.shape[1]
        u_hidden = np.pad(u_hidden, ((0, 0), (0, pad), (0, 0)))
        u_mask = np.pad(u_mask, ((0, 0), (0, pad)))
        h, p = backend.encode_prompt(index, backend.asarray(cond.input_ids), backend.asarray(cond.attention_mask))
        hidden.append(backend.concat([h, backend.asarray(np.repeat(u_hidden, batch, 0))], axis=0))
        masks.append(backend.asarray(np.concatenate([cond.attention_mask, np.repeat(u_mask, batch, 0)])))
        pooled.append(None if p is None else backend.concat([p, backend.asarray(np.repeat(u_pooled, batch, 0))], axis=0))
    return hidden, masks, pooled, natural


def renormalize(backend: Backend, guided, cond, rule, multiple: float):
    """The guided output rescaled against the conditional one over the rule's axes (on the host):
    "match" to multiple x its norm, "clamp" only where it is above that."""
    g, c = backend.to_numpy(guided), backend.to_numpy(cond)
    axes = rule.axes(g.ndim)
    g_norm = np.sqrt((g * g).sum(axis=axes, keepdims=True, dtype=np.float32))
    c_norm = np.sqrt((c * c).sum(axis=axes, keepdims=True, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float32(multiple) * c_norm / g_norm
    if rule.renorm == "clamp":
        ratio = np.where(g_norm > np.float32(multiple) * c_norm, ratio, np.float32(1.0))
    return backend.asarray((g * ratio).astype(np.float32))


REFINER_ROWS = 64  # rows per batched refiner call when the backend sets no limit (bounds the tiled LLM states)


def refine_all_steps(backend: Backend, hidden, masks, pooled, timesteps, rows: int) -> list:
    """Every step's refiner output, computed before the loop: the conditions tiled over steps and run in calls of
    at most `backend.max_refiner_rows` rows (an engine's profile; REFINER_ROWS when it has none)."""
    steps = timesteps.shape[0]
    limit = getattr(backend, "max_refiner_rows", None) or REFINER_ROWS
    per_call = max(1, limit // rows)
    out = []
    for start in range(0, steps, per_call):
        k = min(per_call, steps - start)
        tile = (lambda arrays: [backend.concat([a] * k, axis=0) for a in arrays]) if k > 1 else (lambda arrays: arrays)
        context, mask = backend.refine_tokens(tile(hidden), tile(masks),
                                              [None if p is None else backend.concat([p] * k, axis=0) for p in pooled],
                                              timesteps[start:start + k].reshape(-1))
        # concat of one array is a copy on every backend: the outputs may sit in buffers the next call reuses
        context, mask = backend.concat([context], axis=0), backend.concat([mask], axis=0)
        out += [(context[j * rows:(j + 1) * rows], mask[j * rows:(j + 1) * rows]) for j in range(k)]
    return out


def refine_with_cached_uncond(backend: Backend, hidden, masks, pooled, timesteps, batch: int, natural,
                              prefixes: Sequence[int], uncond_cache: UncondCache, negative: str):
    """refine_all_steps for [B cond rows; B negative rows] when the negative prompt's encoder outputs came from the
    cache: its refined tokens for this schedule are computed once (one row per step, at its own length) and kept
    in `uncond_cache`; each request refines its B cond rows alone. The cached tokens are laid out like the cond
    rows' context (one segment of L_k - prefix_k tokens per LLM): each segment zero-padded with mask 0, which
    the DiT's masked cross-attention ignores, as it ignores padding everywhere. None when the shapes do not
    follow that layout (the caller then refines all rows together)."""
    lengths = [m.shape[1] for m in masks]
    own = [u_mask.shape[1] for _, u_mask, _ in natural]
    if any(p < 0 or p > u for p, u in zip(prefixes, own)):
        return None
    key = ("refined", negative, tuple(own), np.asarray(backend.to_numpy(timesteps[:, 0])).tobytes())
    cached = uncond_cache.get(key)
    if cached is None:
        def on_backend(arrays):
            return [None if a is None else backend.asarray(a) for a in arrays]

        steps = refine_all_steps(backend, on_backend([h for h, _, _ in natural]),
                                 on_backend([m for _, m, _ in natural]), on_backend([p for _, _, p in natural]),
                                 timesteps[:, :1], 1)
        cached = [(backend.to_numpy(c).copy(), backend.to_numpy(m).copy()) for c, m in steps]
        if any(c.shape[1] != sum(u - p for u, p in zip(own, prefixes)) for c, _ in cached):
            return None
        uncond_cache.put(key, cached)
    cond = refine_all_steps(backend, [h[:batch] for h in hidden], [m[:batch] for m in masks],
                            [None if p is None else p[:batch] for p in pooled], timesteps[:, :batch], batch)
    if any(c.shape[1] != sum(n - p for n, p in zip(lengths, prefixes)) for c, _ in cond):
        return None
    out = []
    for (context, mask), (u_context, u_mask) in zip(cond, cached):
        parts, mask_parts, start = [], [], 0
        for u, n, p in zip(own, lengths, prefixes):
            width = u - p
            pad = (n - p) - width
            parts += [u_context[:, start:start + width], np.zeros((1, pad, u_context.shape[2]), u_context.dtype)]
            mask_parts += [u_mask[:, start:start + width], np.zeros((1, pad), u_mask.dtype)]
            start += width
        u_context = np.repeat(np.concatenate(parts, axis=1), batch, 0)
        u_mask = np.repeat(np.concatenate(mask_parts, axis=1), batch, 0).astype(backend.to_numpy(mask).dtype)
        out.append((backend.concat([context, backend.asarray(u_context)], axis=0),
                    backend.concat([mask, backend.asarray(u_mask)], axis=0)))
    return out


def run_chain(backend: Backend, tokenizers: Sequence[PromptTokenizer], geometry: LatentGeometry,
              scheduler: SchedulerConfig, request: GenerateRequest, *, keep_trajectory: bool = False,
              on_step: Callable[[int, int], None] | None = None, uncond_cache: UncondCache | None = None,
              limits: RequestLimits | None = None, warned: set | None = None,
              chain: ChainRecord | None = None, batch_refiner: bool = True) -> GenerateResult:
    """Tokenize -> encoders -> refiner (per step, or once when it does not read the timestep) -> per step
    (DiT + guidance + sampler update) -> VAE decoder, following `chain` (the manifest's rules; default LI-DiT's).

    The request is checked first (check_request; limits: the build's sizes); encoder outputs, final
    latents and the image are checked for NaN / infinity, each failure naming its stage.
    uncond_cache: an UncondCache kept by the caller across requests; the unconditional (negative prompt)
    encoder outputs, and with batch_refiner its refined tokens per schedule, are then computed once and reused
    (they never change). Without it, cond and uncond rows are encoded and refined together as 2B rows.
    batch_refiner: a timestep-dependent refiner runs for every step before the loop, in as few batched calls
    as `refine_all_steps` allows (its inputs are all known up front); False: once per step, inside the loop.
    """
    chain = chain or ChainRecord()
    rule = chain.guidance
    if request.cfg_truncation is None or request.cfg_normalization is None:  # the chain's defaults
        request = dataclasses.replace(
            request, cfg_truncation=rule.default_truncation if request.cfg_truncation is None else request.cfg_truncation,
            cfg_normalization=rule.default_normalization if request.cfg_normalization is None
            else request.cfg_normalization)
    timings: dict[str, float] = {}
    clock = time.perf_counter
    t_start = clock()
    shape = check_request(request, geometry, scheduler, limits, warned, chain)
    batch = len(request.prompts)
    plan = make_plan(scheduler, request.steps, shape, geometry.patch_size)
    scale = rule.scale(request.cfg)
    sigmas = plan.timesteps / scheduler.num_train_timesteps
    guided = [rule.guided(request.cfg) and not rule.truncated(request.cfg_truncation, i, plan.num_steps, sigmas[i])
              for i in range(plan.num_steps)]
    renorm = rule.renorm != "none" and request.cfg_normalization > 0

    negative = request.negative_prompt if any(guided) else None
    hidden, masks, pooled, natural = encode_conditions(backend, tokenizers, list(request.prompts), negative,
                                                       uncond_cache)
    for index, (h, p) in enumerate(zip(hidden, pooled)):  # a NaN anywhere in an encoder's states reaches its mean
        check_finite(backend, h if p is None else p, f"encoder {index}")
    pooled_all = None if any(p is None for p in pooled) else backend.concat(pooled, axis=-1)
    backend.synchronize()
    timings["encode"] = clock() - t_start

    x = backend.asarray(initial_noise(shape, request.seed, request.seeds))
    rows = 2 * batch if any(guided) else batch
    model_t = chain.timestep_offset + chain.timestep_scale * plan.timesteps
    timesteps = backend.asarray(np.repeat(model_t.astype(np.float32)[:, None], rows, axis=1))  # one upload
    refined = None  # one (context, mask) for every step, or a list of one per step
    replay = getattr(backend, "run_steps", None)  # backends that capture the whole loop (TensorRT: a CUDA graph)
    uniform = len(set(guided)) == 1 and not renorm and chain.refiner_timestep  # one graph of device work per step
    replaying = replay is not None and not keep_trajectory and uniform
    t0 = clock()
    if not chain.refiner_timestep:  # the refiner does not read the timestep: once per request
        refined = backend.refine_tokens(hidden, masks, pooled, None)
    elif batch_refiner and not replaying:  # it reads nothing the loop changes: every step's refiner up front
        if natural is not None:  # the negative prompt's refined tokens are cached too
            refined = refine_with_cached_uncond(backend, hidden, masks, pooled, timesteps, batch, natural,
                                                [len(t.prefix_ids) for t in tokenizers], uncond_cache, negative)
        if refined is None:
            refined = refine_all_steps(backend, hidden, masks, pooled, timesteps, rows)
    backend.synchronize()
    timings["refine_ahead"] = clock() - t0
    conditions = (hidden, masks, pooled, pooled_all, timesteps)

    def step(sampler: Sampler, i: int, x, conditions, after_refiner=None):
        """Refiner + DiT + guidance + sampler update for step i: the chain a CUDA graph captures."""
        hidden, masks, pooled, pooled_all, timesteps = conditions
        if refined is None:
            context, context_mask = backend.refine_tokens(hidden, masks, pooled, timesteps[i])
        else:
            context, context_mask = refined[i] if isinstance(refined, list) else refined
        if after_refiner is not None:
            after_refiner()
        t = timesteps[i]
        if guided[i]:
            out = backend.denoise(backend.concat([x, x], axis=0), t, context, context_mask, pooled_all)
            cond, uncond = out[:batch], out[batch:]
            out = uncond + (cond - uncond) * scale
            if renorm:
                out = renormalize(backend, out, cond, rule, request.cfg_normalization)
        else:  # no guidance at this step: the conditional rows alone
            if rows != batch:
                context, context_mask, t = context[:batch], context_mask[:batch], t[:batch]
            out = backend.denoise(x, t, context, context_mask, None if pooled_all is None else pooled_all[:batch])
        if chain.output_scale != 1.0:
            out = out * chain.output_scale
        return sampler.step(i, x, out)

    def all_steps(x, conditions):
        sampler = Sampler(plan)
        for i in range(plan.num_steps):
            x = step(sampler, i, x, conditions)
        return x

    trajectory = []
    if replaying:
        t0 = clock()
        key = (shape, tuple(tuple(a.shape) for a in (*hidden, *masks)), request.cfg, plan.timesteps.tobytes(),
               plan.coefficients.tobytes())
        x = replay(key, all_steps, x, conditions)
        backend.synchronize()
        timings["refine"] = timings.pop("refine_ahead")  # the per-step refiner is inside the replayed graph
        timings["denoise"] = clock() - t0
        if on_step is not None:  # the graph reports no progress of its own
            for i in range(plan.num_steps):
                on_step(i + 1, plan.num_steps)
    else:
        sampler = Sampler(plan)
        marks = []

        def after_refiner():
            backend.synchronize()
            marks.append(clock())

        t_refine = t_dit = 0.0
        for i in range(plan.num_steps):
            t0 = clock()
            x = step(sampler, i, x, conditions, after_refiner)
            backend.synchronize()
            t_refine += marks[-1] - t0
            t_dit += clock() - marks[-1]
            if keep_trajectory:
                trajectory.append(backend.to_numpy(x).copy())
            if on_step is not None:
                on_step(i + 1, plan.num_steps)
        timings["refine"] = t_refine + timings.pop("refine_ahead")
        timings["denoise"] = t_dit

    check_finite(backend, x, "the denoising loop (refiner + DiT)")
    t0 = clock()
    z = x if (chain.latent_scale, chain.latent_shift) == (1.0, 0.0) else x * (1.0 / chain.latent_scale) + chain.latent_shift
    image = backend.to_numpy(backend.decode_latents(z))
    check_finite(backend, image, "the VAE decoder")
    timings["decode"] = clock() - t0
    timings["total"] = clock() - t_start
    return GenerateResult(to_uint8(image), backend.to_numpy(x), timings, trajectory, request)


class Pipeline:
    """A loaded build folder: `Pipeline.load(BUILD).generate("a red cat")`.

    Thread safety: `generate` may be called from many threads at once on one pipeline. Backends that
    declare `thread_safe` (ONNX Runtime: its sessions are, and output buffers are kept per thread) run
    the calls concurrently; the others (TensorRT: one stream, shared buffers, captured CUDA graphs) are
    serialized by a lock inside the pipeline. Either way each call returns exactly what it would alone.
    """

    def __init__(self, manifest, backend: Backend, tokenizers: Sequence[PromptTokenizer]):
        self.manifest = manifest
        self.backend = backend
        self.tokenizers = list(tokenizers)
        self.geometry = LatentGeometry(manifest.latent_channels, manifest.vae_scale_factor, manifest.patch_size)
        self.scheduler = manifest.scheduler_config
        self.chain = manifest.chain
        self.limits = RequestLimits.from_dims(manifest.components["dit"].dims, manifest.components["vae_decoder"].dims)
        self.uncond_cache = UncondCache()  # the negative prompt's encoder outputs and refined tokens, kept
        self._warned: set = set()  # sizes already warned about
        self._lock = contextlib.nullcontext() if getattr(backend, "thread_safe", False) else threading.Lock()
        self.batch_refiner = True  # every step's refiner up front in batched calls (False: once per step)

    @classmethod
    def load(cls, build_dir, backend: str = "onnxruntime", providers: Sequence[str] | None = None,
             verify: bool = True, **backend_options) -> "Pipeline":
        """Validate the manifest and (verify) hash every file it names before any backend is imported."""
        from pathlib import Path

        from .manifest import build_file, load_manifest

        if backend not in ("onnxruntime", "tensorrt"):
            raise ConfigError(f"backend={backend!r} is unknown; use 'onnxruntime' or 'tensorrt'")
        build_dir = Path(build_dir)
        manifest = load_manifest(build_dir, verify=verify)
        tokenizers = [PromptTokenizer(build_file(build_dir, e.tokenizer_file, f"tokenizer of encoder {i}"), e.prefix_text,
                                      e.suffix_text, e.max_length, e.pad_token_id, e.caption_separator,
                                      prefix_length=e.prefix_length if e.prefix_cached else None,
                                      whole_text=e.whole_text, negative_prefix_text=e.negative_prefix_text)
                      for i, e in enumerate(manifest.encoders)]
        if backend == "tensorrt":
            from .backends.tensorrt import TensorRTBackend

            runner = TensorRTBackend(build_dir, manifest, **backend_options)
        else:
            from .backends.onnxruntime import OnnxRuntimeBackend

            runner = OnnxRuntimeBackend(build_dir, manifest, providers, **backend_options)
        return cls(manifest, runner, tokenizers)

    def prepare(self, request: GenerateRequest | str | Sequence[str], **fields) -> GenerateRequest:
        """The request with the model's defaults filled in, checked against this build (LiditError if not
        drawable): what a server validates before it batches requests."""
        request = as_request(request, **fields).with_defaults(self.scheduler, self.manifest.default_height,
                                                                self.manifest.default_width, self.chain)
        check_request(request, self.geometry, self.scheduler, self.limits, None, self.chain)
        return request

    def generate(self, request: GenerateRequest | str | Sequence[str], *, keep_trajectory: bool = False,
                 on_step=None, **fields) -> GenerateResult:
        """Draw a GenerateRequest, or a prompt (or list of them) with request fields: generate("a cat", seed=1)."""
        request = as_request(request, **fields).with_defaults(self.scheduler, self.manifest.default_height,
                                                                self.manifest.default_width, self.chain)
        with self._lock:
            return run_chain(self.backend, self.tokenizers, self.geometry, self.scheduler, request,
                             keep_trajectory=keep_trajectory, on_step=on_step, uncond_cache=self.uncond_cache,
                             limits=self.limits, warned=self._warned, chain=self.chain,
                             batch_refiner=self.batch_refiner)
