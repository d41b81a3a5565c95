"""Training the miniature LI-DiT on the procedural world.

Stages, each written atomically under a work folder and skipped when already there (a killed run
resumes at the stage it was in):

    data/scenes.jsonl, data/heldout.jsonl   training scenes (captions never held out) and 200 held-out ones
    vae/                                    a small AutoencoderKL (64x64 -> 16x16x8), trained first
    data/latents.safetensors                the training images in diffusion space (VAE mean, scaled)
    data/features-<instruct|plain>.safetensors
                                            the frozen LLM's hidden_states[-3] for every distinct caption,
                                            with and without the paper's instruction (prefix stored once)
    runs/<variant>/checkpoint.pt            while a variant trains: weights, EMA, optimizer, generators (every
                                            few minutes; a rerun goes on from it, bit-identical to no stop)
    runs/<variant>/model/                   refiner + DiT trained with flow matching; a complete model folder

The LLM stays frozen, so its features are computed once per caption; the refiner and the DiT are trained
together, exactly as the exported pipeline chains them. Variants are the paper's ablations. `init`
starts from another model folder's refiner + DiT (e.g. to grow a trained model's positional embedding).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lidit_runtime.pipeline import GenerateRequest
from lidit_runtime.sampler import SchedulerConfig
from lidit_runtime.tokenize import PromptTokenizer

from ..artifacts import atomic_directory, atomic_path, atomic_write_json
from ..components import WEIGHTS
from ..config import DiTConfig, PipelineConfig, RefinerConfig, VAEConfig
from ..errors import ConfigError
from ..model.dit import LiDiT
from ..model.llm_encoder import LLMEncoder, PrefixCachedEncoder, encoder_config_for
from ..model.pipeline import LiDiTPipeline, save_components
from ..model.refiner import PromptRefiner
from ..model.vae import build_autoencoder
from .scenes import Scene, read_scenes, render, sample_scenes, to_uint8, write_scenes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    instruction: bool  # the paper's instruction before the caption
    refiner_depth: int  # 0: no refiner blocks (input projection only)
    causal: bool  # refiner attention with a causal mask


VARIANTS = {
    "full": Variant(True, 2, False),
    "no-instruction": Variant(False, 2, False),
    "no-refiner": Variant(True, 0, False),
    "causal-refiner": Variant(True, 2, True),
}


@dataclass
class TrainSettings:
    scenes: int = 40000
    heldout: int = 200
    vae_steps: int = 2000
    vae_batch: int = 64
    steps: int = 5000  # the defaults are the 2-core CPU recipe: ~1.1 s a step at batch 64 (pe_depth 3), ~90 min
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 200
    ema: float = 0.999
    cfg_dropout: float = 0.1
    width: int = 192
    depth: int = 6
    heads: int = 4  # head_dim 48: FP8 attention applies (head_dim % 16 == 0)
    pe_depth: int = 3  # ResBlocks of positional embedding: 8 x 8 patches need >= 2 to know where they are
    latent_channels: int = 8
    seed: int = 0
    max_minutes: float | None = None  # stop training early (the steps done are recorded)
    log_every: int = 25
    schedule: str = "cosine"  # learning rate after warm-up: constant | cosine (to 10% at `steps`)
    init: str | None = None  # a model folder whose refiner + DiT weights training starts from
    checkpoint_minutes: float = 5.0  # write a resumable checkpoint this often (0: never)

    def validate(self) -> "TrainSettings":
        for name in ("scenes", "heldout", "vae_steps", "vae_batch", "steps", "batch", "warmup", "width", "depth",
                     "heads", "pe_depth", "latent_channels", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1", name)
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0", "seed")
        finite = all(math.isfinite(v) for v in (self.lr, self.ema, self.cfg_dropout, self.checkpoint_minutes,
                                                 self.max_minutes or 1.0))
        if not finite or self.lr <= 0 or not 0 <= self.ema < 1 or not 0 <= self.cfg_dropout <= 1 \
                or self.checkpoint_minutes < 0 or (self.max_minutes is not None and self.max_minutes <= 0):
            raise ConfigError("lr must be > 0, max_minutes > 0 and checkpoint_minutes >= 0 (finite numbers); "
                              "ema in [0, 1), cfg_dropout in [0, 1]")
        if self.scenes < self.batch:
            raise ConfigError(f"scenes ({self.scenes}) must be >= batch ({self.batch})", "scenes")
        if self.width % self.heads or self.width % 32:
            raise ConfigError(f"width={self.width} must be a multiple of 32 and of heads ({self.heads})", "width")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule={self.schedule!r} is not known; use constant or cosine", "schedule")
        if self.init is not None and not (Path(self.init) / "model_index.json").exists():
            raise ConfigError(f"init={self.init}: no model_index.json there; give a model folder "
                              "(e.g. one written by `lidit-export init --preset mini`)", "init")
        return self

    def learning_rate(self, step: int) -> float:
        warm = min(1.0, step / self.warmup)
        if self.schedule == "constant":
            return self.lr * warm
        return self.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps)))


MINI_VAE = dict(block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=32)
SCHEDULER = SchedulerConfig(sampler="flow_euler", prediction="velocity", default_steps=20, default_cfg=4.0)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------------------------------------------
# data, VAE, latents, features

def prepare_scenes(work: Path, s: TrainSettings) -> tuple[list[Scene], list[Scene]]:
    data = work / "data"
    train_file, heldout_file = data / "scenes.jsonl", data / "heldout.jsonl"
    if not train_file.exists():
        data.mkdir(parents=True, exist_ok=True)
        write_scenes(heldout_file, sample_scenes(s.heldout, s.seed, "heldout"))
        scenes = sample_scenes(s.scenes, s.seed, "train")
        with atomic_path(train_file) as tmp:
            write_scenes(tmp, scenes)
    return read_scenes(train_file), read_scenes(heldout_file)


def _render_all(scenes: list[Scene], device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 3, 64, 64) on `device`."""
    return torch.cat([(render(scenes[i:i + chunk], device=device) * 255 + 0.5).to(torch.uint8)
                      for i in range(0, len(scenes), chunk)])


def train_vae(work: Path, images: torch.Tensor, s: TrainSettings, device: torch.device) -> Path:
    out = work / "vae"
    if (out / "config.json").exists():
        return out
    torch.manual_seed(s.seed)
    config = VAEConfig(latent_channels=s.latent_channels, **MINI_VAE)
    ae = build_autoencoder(config).to(device).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator(device).manual_seed(s.seed)
    history = []
    t0 = time.time()
    for step in range(s.vae_steps):
        idx = torch.randint(0, len(images), (s.vae_batch,), generator=g, device=device)
        x = images[idx].float() / 127.5 - 1.0
        with _autocast(device):
            posterior = ae.encode(x).latent_dist
            rec = ae.decode(posterior.sample()).sample.float()
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for group in opt.param_groups:  # cosine to 10%
            group["lr"] = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / s.vae_steps)))
        if step % s.log_every == 0 or step == s.vae_steps - 1:
            history.append((step, loss.item()))
            log.info("vae step %d loss %.4f", step, history[-1][1])
    ae.eval()
    with torch.no_grad(), _autocast(device):
        x = images[: min(2048, len(images))].float() / 127.5 - 1.0
        mean = ae.encode(x).latent_dist.mean.float()
        rec = ae.decode(mean).sample.float()
    stats = {"shift_factor": float(mean.mean()), "scaling_factor": float(1.0 / mean.std()),
             "reconstruction_psnr_db": float(10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), x))),
             "loss": history, "seconds": time.time() - t0}
    ae.register_to_config(shift_factor=stats["shift_factor"], scaling_factor=stats["scaling_factor"])
    with atomic_directory(out, overwrite=True) as tmp:
        ae.to("cpu").save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / "training.json", stats)
    log.info("vae: reconstruction PSNR %.1f dB", stats["reconstruction_psnr_db"])
    return out


def load_vae(work: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(work / "vae")


def encode_latents(work: Path, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    file = work / "data" / "latents.safetensors"
    if not file.exists():
        ae = load_vae(work).to(device).eval()
        shift, scale = ae.config.shift_factor, ae.config.scaling_factor
        parts = []
        with torch.no_grad():
            for i in range(0, len(images), 1024):
                x = images[i:i + 1024].float() / 127.5 - 1.0
                parts.append(((ae.encode(x).latent_dist.mean.float() - shift) * scale).half().cpu())
        with atomic_path(file) as tmp:
            save_file({"latents": torch.cat(parts).contiguous()}, str(tmp))
    return load_file(str(file))["latents"]


def feature_file(work: Path, instruction: bool) -> Path:
    return work / "data" / f"features-{'instruct' if instruction else 'plain'}.safetensors"


def encode_features(work: Path, llm: Path, scenes: list[Scene], instruction: bool, device: torch.device,
                    batch: int = 256) -> dict:
    """The frozen LLM's features of every distinct caption (+ the empty one, for CFG), prefix stored once."""
    file = feature_file(work, instruction)
    captions = sorted({sc.caption for sc in scenes}) + [""]
    if not file.exists():
        cfg = encoder_config_for(llm.parent, llm.name, instruction=None if instruction else "")
        tok = PromptTokenizer(llm / "tokenizer.json", cfg.prefix_text, cfg.suffix_text, cfg.max_length,
                              cfg.pad_token_id, cfg.caption_separator)
        encoder = PrefixCachedEncoder(LLMEncoder.from_pretrained(llm, cfg), tok.prefix_ids).to(device)
        P = len(tok.prefix_ids)
        length = tok(captions).input_ids.shape[1] - P
        hidden = torch.zeros(len(captions), length, cfg.hidden_size, dtype=torch.float16)
        pooled = torch.zeros(len(captions), cfg.hidden_size)
        lengths = torch.zeros(len(captions), dtype=torch.int64)
        with torch.no_grad():
            for i in range(0, len(captions), batch):
                t = tok(captions[i:i + batch], pad_to=P + length)
                ids = torch.from_numpy(t.input_ids[:, P:]).to(device)
                mask = torch.from_numpy(t.attention_mask[:, P:]).to(device)
                h, p = encoder(ids, mask)
                hidden[i:i + batch] = h[:, P:].half().cpu()
                pooled[i:i + batch] = p.float().cpu()
                lengths[i:i + batch] = mask.sum(1).cpu()
        with atomic_path(file) as tmp:
            save_file({"hidden": hidden, "pooled": pooled, "lengths": lengths,
                       "prefix": encoder.prefix_hidden[0].float().cpu()}, str(tmp),
                      metadata={"captions": json.dumps(captions), "instruction": cfg.instruction})
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        stored = json.loads(f.metadata()["captions"])
    if stored != captions:
        raise ConfigError(f"{file} was made for other scenes; delete {work / 'data'} to start the work folder afresh")
    out = load_file(str(file))
    out["index"] = {c: i for i, c in enumerate(captions)}
    return out


def prepare(work: Path, llm: Path, s: TrainSettings, device: torch.device,
            instructions=(True, False)) -> tuple[list[Scene], dict[bool, dict]]:
    """Every shared stage: scenes, VAE, latents, LLM features (each skipped when already on disk).
    Returns the training scenes and the loaded features per instruction flag."""
    scenes, _ = prepare_scenes(work, s)
    need_images = not (work / "vae" / "config.json").exists() or not (work / "data" / "latents.safetensors").exists()
    if need_images:
        t0 = time.time()
        images = _render_all(scenes, device)
        log.info("rendered %d scenes in %.1fs", len(scenes), time.time() - t0)
        train_vae(work, images, s, device)
        encode_latents(work, images, device)
        del images
    features = {}
    for flag in instructions:
        t0 = time.time()
        features[flag] = encode_features(work, llm, scenes, flag, device)
        log.info("features (instruction=%s) in %.1fs", flag, time.time() - t0)
    return scenes, features


# ---------------------------------------------------------------------------------------------------
# refiner + DiT

def mini_config(llm_rel: str, llm_folder: Path, variant: Variant, s: TrainSettings, vae_config: dict) -> PipelineConfig:
    enc = encoder_config_for(llm_folder.parent, llm_folder.name, instruction=None if variant.instruction else "")
    enc = replace(enc, path=llm_rel, max_length=128)
    tok = PromptTokenizer(llm_folder / "tokenizer.json", enc.prefix_text, enc.suffix_text, enc.max_length,
                          enc.pad_token_id, enc.caption_separator)
    refiner = RefinerConfig([enc.hidden_size], [len(tok.prefix_ids)], s.width, s.heads, depth=variant.refiner_depth,
                            causal=variant.causal)
    dit = DiTConfig(in_channels=s.latent_channels, width=s.width, depth=s.depth, num_heads=s.heads,
                    context_dim=s.width, pooled_dim=enc.hidden_size, pe_groups=32, pe_depth=s.pe_depth)
    vae = VAEConfig(latent_channels=s.latent_channels, scaling_factor=vae_config["scaling_factor"],
                    shift_factor=vae_config["shift_factor"], **MINI_VAE)
    return PipelineConfig([enc], refiner, dit, vae, SCHEDULER, name="lidit-mini", default_height=64,
                          default_width=64).validate()


class _Batches:
    """Random training batches of (latents, LLM hidden incl. prefix, mask, pooled), on the device."""

    def __init__(self, scenes, latents, features, s: TrainSettings, device, generator):
        index = features["index"]
        self.caption = torch.tensor([index[sc.caption] for sc in scenes], device=device)
        self.uncond = index[""]
        self.latents = latents.to(device)
        self.hidden = features["hidden"].to(device)
        self.pooled = features["pooled"].to(device)
        self.lengths = features["lengths"].to(device)
        self.prefix = features["prefix"].to(device)
        self.s, self.device, self.g = s, device, generator

    def __call__(self):
        """No host synchronisation: static text length (the longest caption), random numbers on the device."""
        B, dev = self.s.batch, self.device
        idx = torch.randint(0, len(self.caption), (B,), generator=self.g, device=dev)
        cap = self.caption[idx]
        drop = torch.rand(B, generator=self.g, device=dev) < self.s.cfg_dropout
        cap = torch.where(drop, torch.full_like(cap, self.uncond), cap)
        L = self.hidden.shape[1]
        mask_rest = (torch.arange(L, device=dev)[None] < self.lengths[cap][:, None]).long()
        P = self.prefix.shape[0]
        hidden = torch.cat([self.prefix[None].expand(B, P, -1), self.hidden[cap].float()], dim=1)
        mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=dev), mask_rest], dim=1)
        return self.latents[idx].float(), hidden, mask, self.pooled[cap]


def run_folder(work: Path, name: str) -> Path:
    """runs/<variant>: its checkpoint while training, then training.json and the model/ folder."""
    return work / "runs" / name


def is_trained(work: Path, name: str) -> bool:
    return (run_folder(work, name) / "model" / "model_index.json").exists()


def train_variant(work: Path, llm: Path, name: str, s: TrainSettings, device: torch.device) -> Path:
    """Train refiner + DiT of one variant; returns the model folder (skipped when already there)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    run = run_folder(work, name)
    model_dir = run / "model"
    if is_trained(work, name):
        return model_dir
    scenes, features = prepare(work, llm, s, device, instructions=(variant.instruction,))
    vae_config = json.loads((work / "vae" / "config.json").read_text())
    config = mini_config("llm_0", llm, variant, s, vae_config)
    latents = load_file(str(work / "data" / "latents.safetensors"))["latents"]
    torch.manual_seed(s.seed)
    refiner, dit = PromptRefiner(config.refiner).to(device), LiDiT(config.transformer).to(device)
    if s.init is not None:
        _load_init(Path(s.init), refiner, dit)
    params = [p for m in (refiner, dit) for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=device.type == "cuda")
    batches = _Batches(scenes, latents, features[variant.instruction], s, device,
                       torch.Generator(device).manual_seed(s.seed + 1))
    g = torch.Generator(device).manual_seed(s.seed + 2)
    checkpoint = _Checkpoint(run / "checkpoint.pt", s, params, ema, opt, (batches.g, g))
    start, history, spent = checkpoint.restore()
    smooth = history[-1][2] if history else None
    t0, last_save, step = time.time() - spent, time.time(), start
    for step in range(start + 1, s.steps + 1):
        x0, hidden, mask, pooled = batches()
        noise = torch.randn(x0.shape, generator=g, device=device)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=g, device=device))  # logit-normal (SD3)
        x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        t = sigma * SCHEDULER.num_train_timesteps
        with _autocast(device):
            context, context_mask = refiner([hidden], [mask], [pooled], t)
            out = dit(x, t, context, context_mask, pooled)
        loss = F.mse_loss(out.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = s.learning_rate(step)
        opt.step()
        with torch.no_grad():
            decay = min(s.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        value = loss.item() if step % s.log_every == 0 or step == 1 else None
        if value is not None:
            smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
            history.append((step, value, smooth))
            rate = (step - start) / max(time.time() - t0 - spent, 1e-6)
            log.info("%s step %d loss %.4f lr %.2e (%.2f steps/s)", name, step, value, s.learning_rate(step), rate)
            if s.max_minutes is not None and time.time() - t0 > 60 * s.max_minutes:
                log.warning("%s: stopping at step %d (--max-minutes %s)", name, step, s.max_minutes)
                break
            if s.checkpoint_minutes and time.time() - last_save > 60 * s.checkpoint_minutes and step < s.steps:
                checkpoint.save(step, history, time.time() - t0)
                last_save = time.time()
    seconds = time.time() - t0
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    with atomic_directory(model_dir, overwrite=True) as tmp:
        shutil.copytree(llm, tmp / "llm_0")
        from diffusers import AutoencoderKL

        save_components(tmp, config, refiner.cpu(), dit.cpu(), AutoencoderKL.from_pretrained(work / "vae"))
    atomic_write_json(run / "training.json", {
        "variant": name, "settings": asdict(s), "steps_done": step, "resumed_at": start or None,
        "seconds": seconds, "device": str(device), "threads": torch.get_num_threads(), "hardware": _hardware(device),
        "torch": torch.__version__,
        "parameters": {"refiner": sum(p.numel() for p in refiner.parameters()),
                       "transformer": sum(p.numel() for p in dit.parameters())},
        "loss": history})
    checkpoint.file.unlink(missing_ok=True)
    return model_dir


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _load_init(folder: Path, refiner: torch.nn.Module, dit: torch.nn.Module) -> None:
    """Start from the refiner + DiT weights of another model folder (e.g. continue the shipped model)."""
    for key, module in (("refiner", refiner), ("dit", dit)):
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS[key])).items()}
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as e:
            missing, unexpected = [str(e).splitlines()[1].strip()], []
        grown = [k for k in missing if k.startswith("pos_embed.more.")]  # added ResBlocks start as the identity
        if unexpected or len(grown) != len(missing):
            wrong = (sorted(set(missing) - set(grown)) + sorted(unexpected))[:3]
            raise ConfigError(f"--init {folder}: its {key} does not fit this variant's shapes ({', '.join(wrong)} ...);"
                              " train with the settings it was made with") from None
        if grown:
            log.warning("--init: %d weights of added positional-embedding ResBlocks start as the identity", len(grown))


class _Checkpoint:
    """Everything a killed training run needs to go on exactly where it was: weights, EMA, optimizer
    state, both random generators, the loss history and the time spent. Written atomically; torch's
    weights-only loader reads it back (no pickled objects)."""

    # settings a resumed run may change: they do not touch this stage's weights (every other one must match)
    FREE_KEYS = ("heldout", "vae_steps", "vae_batch", "max_minutes", "log_every", "checkpoint_minutes")

    def __init__(self, file: Path, s: TrainSettings, params, ema, opt, generators):
        self.file, self.params, self.ema, self.opt, self.generators = file, params, ema, opt, generators
        self.settings = {k: v for k, v in asdict(s).items() if k not in self.FREE_KEYS}

    def save(self, step: int, history: list, seconds: float) -> None:
        state = {"step": step, "seconds": seconds, "history": [list(h) for h in history],
                 "settings": json.dumps(self.settings), "params": [p.detach() for p in self.params],
                 "ema": self.ema, "optimizer": self.opt.state_dict(),
                 "generators": [gen.get_state() for gen in self.generators]}
        with atomic_path(self.file) as tmp:
            torch.save(state, tmp)
        log.info("checkpoint at step %d: %s", step, self.file)

    def restore(self) -> tuple[int, list, float]:
        """(step, loss history, seconds spent) of the checkpoint, or a fresh start."""
        if not self.file.exists():
            return 0, [], 0.0
        state = torch.load(self.file, map_location="cpu", weights_only=True)
        if json.loads(state["settings"]) != self.settings:
            raise ConfigError(f"{self.file} was written with other settings ({state['settings']}); rerun with "
                              "those, or delete the file to train afresh")
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
            for e, saved in zip(self.ema, state["ema"]):
                e.copy_(saved)
        self.opt.load_state_dict(state["optimizer"])
        for gen, saved in zip(self.generators, state["generators"]):
            gen.set_state(saved)
        log.warning("resuming from %s at step %d", self.file, state["step"])
        return state["step"], [tuple(h) for h in state["history"]], state["seconds"]


# ---------------------------------------------------------------------------------------------------
# evaluation

def generate_images(model_dir: Path, captions: list[str], device: str, steps: int | None = None,
                    cfg: float | None = None, seed: int = 0, batch: int = 50) -> np.ndarray:
    pipe = LiDiTPipeline.from_pretrained(model_dir, device=device)
    sch = pipe.config.scheduler
    images = []
    for i in range(0, len(captions), batch):
        request = GenerateRequest(captions[i:i + batch], steps=sch.default_steps if steps is None else steps,
                                  cfg=sch.default_cfg if cfg is None else cfg, seed=seed + i,
                                  height=pipe.config.default_height, width=pipe.config.default_width)
        images.append(pipe.generate(request).images)
    return np.concatenate(images)


def evaluate(model_dir: Path, scenes: list[Scene], device: str, steps: int | None = None,
             cfg: float | None = None) -> tuple[np.ndarray, dict]:
    from .scorer import score_images

    images = generate_images(model_dir, [sc.caption for sc in scenes], device, steps, cfg)
    return images, score_images(images, scenes)


def ground_truth(scenes: list[Scene]) -> np.ndarray:
    return to_uint8(render(scenes))



def package_weights(model_dir: Path, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The trained parts of a model folder (no LLM), weights stored in `dtype`: what the repo ships."""
    with atomic_directory(out, overwrite=True) as tmp:
        for rel in WEIGHTS.values():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            state = load_file(str(model_dir / rel))
            save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(tmp / rel))
        shutil.copy(model_dir / "vae" / "config.json", tmp / "vae" / "config.json")
        shutil.copy(model_dir / "model_index.json", tmp / "model_index.json")
    return out
