"""The PyTorch reference pipeline: model folders in and out, and `generate` through the shared chain.

A model folder (diffusers `save_pretrained` in spirit; safetensors only, never pickles):

    model_index.json            PipelineConfig (all component configs, validated on load)
    llm_0/, llm_1/, ...         HF causal LM + tokenizer, one per encoder
    refiner/model.safetensors   PromptRefiner
    transformer/model.safetensors  LiDiT
    vae/diffusion_pytorch_model.safetensors (+ diffusers config.json)
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lidit_runtime.manifest import build_file
from lidit_runtime.pipeline import (GenerateRequest, GenerateResult, LatentGeometry, RequestLimits, UncondCache, as_request,
                                   run_chain)
from lidit_runtime.tokenize import PromptTokenizer

from ..artifacts import atomic_directory, atomic_write_text
from ..components import WEIGHTS
from ..config import PipelineConfig
from ..errors import ArtifactError, ConfigError
from ..export.graph_spec import graph_specs
from .dit import LiDiT
from .llm_encoder import TORCH_DTYPES, LLMEncoder
from .refiner import PromptRefiner
from .vae import VAEDecoder, build_autoencoder

INDEX = "model_index.json"


def resolve_device(name: str) -> torch.device:
    """A torch device from a user's string, refused with a one-line error when torch cannot use it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device torch knows; use cpu or cuda[:N]", "device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for, but torch sees no GPU; use cpu", "device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: torch sees {torch.cuda.device_count()} GPU(s); use a smaller index", "device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: only cpu and cuda are supported", "device")
    return device


def load_prompt_tokenizers(folder: str | Path, config: PipelineConfig) -> list[PromptTokenizer]:
    tokenizers = []
    for enc in config.encoders:
        file = model_file(Path(folder), f"{enc.path}/tokenizer.json", "fast tokenizer (every LLM folder needs one)")
        tokenizers.append(PromptTokenizer(file, enc.prefix_text, enc.suffix_text, enc.max_length,
                                          enc.pad_token_id, enc.caption_separator))
    return tokenizers


def model_file(folder: Path, rel: str, what: str) -> Path:
    """A file inside the model folder (a regular file there, links out refused), or a one-line error."""
    return build_file(folder, rel, what, INDEX, "restore the model folder (or re-create it with `lidit-export init`)")


def load_model_config(folder: Path) -> PipelineConfig:
    """The model folder's index, validated; read only as a regular file inside the folder (never a link out)."""
    return PipelineConfig.from_json_file(build_file(folder, INDEX, "model index", "the model folder",
                                                    "restore it (or re-create the folder with `lidit-export init`)"))


def check_llm_folder(folder: Path, rel: str) -> Path:
    """An LLM sub-folder: inside the model folder, and no file in it a link out of it."""
    root, path = folder.resolve(), (folder / rel).resolve()
    if root not in path.parents or not path.is_dir():
        raise ArtifactError(f"LLM folder {rel} is missing from {folder} or leads out of it; restore the model folder")
    for entry in path.iterdir():
        if root not in entry.resolve().parents:
            raise ArtifactError(f"{rel}/{entry.name} is a link out of the model folder; copy the file in instead")
    return path


def load_weights(module: torch.nn.Module, folder: Path, rel: str) -> None:
    file = model_file(folder, rel, "weights")
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError for truncated or foreign files
        raise ArtifactError(f"{file} is not a readable safetensors file ({str(e).splitlines()[0][:120]}); restore it "
                            "or re-create the model folder") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{file} does not fit the config: missing {list(missing)[:3]}, unexpected "
                            f"{list(unexpected)[:3]}; the weights and model_index.json come from different models")


class LiDiTPipeline:
    def __init__(self, config: PipelineConfig, path: Path, encoders: Sequence[LLMEncoder], refiner: PromptRefiner,
                 transformer: LiDiT, autoencoder, tokenizers: Sequence[PromptTokenizer], device: torch.device):
        self.config = config
        self.path = path
        self.encoders = list(encoders)
        self.refiner = refiner
        self.transformer = transformer
        self.autoencoder = autoencoder
        self.vae_decoder = VAEDecoder(autoencoder, config.vae)
        self.tokenizers = list(tokenizers)
        self.device = device
        # Image sides capped like a build of this model with the default profile; the batch is not (calibration
        # and evaluation run larger ones).
        specs = graph_specs(config)
        self.limits = replace(RequestLimits.from_dims(specs["dit"].dims, specs["vae_decoder"].dims), max_batch=None)
        # Off by default: calibration and training change the modules in place, and cached negative-prompt
        # outputs would then be stale. A caller that serves fixed weights may set an UncondCache (benchmarks do).
        self.uncond_cache: UncondCache | None = None

    family_name = None  # lidit-export's own architecture (the diffusers families are FamilyReference)

    @property
    def dit_depth(self) -> int:
        return self.config.transformer.depth

    @property
    def defaults(self) -> tuple[int, float, int, int]:
        """steps, cfg, height, width of an unspecified request."""
        c = self.config
        return c.scheduler.default_steps, c.scheduler.default_cfg, c.default_height, c.default_width

    def with_modules(self, modules: dict) -> "LiDiTPipeline":
        """A view of this pipeline with components (by graph name) swapped, e.g. calibration's observed copies."""
        from ..components import component

        view = copy.copy(self)
        for name, module in modules.items():
            setattr(view, component(name).module_attr, module)
        return view

    def calibration_identity(self) -> tuple[dict, list[Path]]:
        """What a calibration of this model depends on: the config and the weight files."""
        files = [WEIGHTS["refiner"], WEIGHTS["dit"]] + [f"{e.path}/model.safetensors" for e in self.config.encoders]
        return self.config.to_dict(), [self.path / rel for rel in files]

    @property
    def geometry(self) -> LatentGeometry:
        return LatentGeometry(self.config.vae.latent_channels, self.config.vae.scale_factor,
                              self.config.transformer.patch_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str | None = None) -> "LiDiTPipeline":
        """Load a model folder. dtype overrides every component (e.g. "bfloat16" for GPU baselines)."""
        path = Path(path)
        if not path.is_dir() or not (path / INDEX).exists():
            raise ArtifactError(f"{path} is not a model folder ({INDEX} missing); create one with "
                                "`lidit-export init --preset smol --out DIR`")
        config = load_model_config(path)
        dev = resolve_device(device)  # device and dtype are checked before any weights are read
        if dtype is not None and dtype not in TORCH_DTYPES:
            raise ConfigError(f"dtype={dtype!r} is unknown; use one of {sorted(TORCH_DTYPES)}")
        torch_dtype = TORCH_DTYPES[dtype or "float32"]
        encoders = [LLMEncoder.from_pretrained(check_llm_folder(path, e.path), e, dtype) for e in config.encoders]
        refiner, transformer, autoencoder = build_modules(config)
        load_weights(refiner, path, WEIGHTS["refiner"])
        load_weights(transformer, path, WEIGHTS["dit"])
        load_weights(autoencoder, path, WEIGHTS["vae_decoder"])
        for m in (refiner, transformer, autoencoder):
            m.to(dev).eval().requires_grad_(False)
            if torch_dtype != torch.float32:  # diffusers warns on any dtype cast; skip the no-op one
                m.to(torch_dtype)
        for enc in encoders:  # already in their own dtype
            enc.to(dev)
        return cls(config, path, encoders, refiner, transformer, autoencoder, load_prompt_tokenizers(path, config), dev)

    def save_pretrained(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write a complete model folder atomically: it appears only once every file is written."""
        out = Path(out)
        with atomic_directory(out, overwrite=overwrite) as tmp:
            for enc in self.config.encoders:
                shutil.copytree(self.path / enc.path, tmp / enc.path)
            save_components(tmp, self.config, self.refiner, self.transformer, self.autoencoder)
        return out

    @torch.inference_mode()
    def generate(self, request: GenerateRequest | str | Sequence[str], *, keep_trajectory: bool = False,
                 on_step=None, **fields) -> GenerateResult:
        """Through the shared chain, like the runtime's Pipeline.generate, checked against self.limits."""
        config = self.config
        request = as_request(request, **fields).with_defaults(config.scheduler, config.default_height,
                                                                config.default_width)
        return run_chain(TorchBackend(self), self.tokenizers, self.geometry, config.scheduler, request,
                         keep_trajectory=keep_trajectory, on_step=on_step, limits=self.limits,
                         uncond_cache=self.uncond_cache)


def build_modules(config: PipelineConfig):
    return PromptRefiner(config.refiner), LiDiT(config.transformer), build_autoencoder(config.vae)


def save_components(folder: Path, config: PipelineConfig, refiner, transformer, autoencoder) -> None:
    """Refiner, DiT, VAE weights and the index into `folder` (the LLM sub-folders are written by the caller)."""
    for key, module in (("refiner", refiner), ("dit", transformer)):
        file = folder / WEIGHTS[key]
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(file))
    autoencoder.save_pretrained(folder / "vae", safe_serialization=True)
    atomic_write_text(folder / INDEX, config.to_json())


class TorchBackend:
    """The reference backend: runs each stage with the PyTorch modules of a LiDiTPipeline."""

    name = "torch"

    def __init__(self, pipe: LiDiTPipeline):
        self.pipe = pipe
        self.device = pipe.device

    def asarray(self, host: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().float().cpu().numpy()

    def concat(self, arrays, axis: int) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def encode_prompt(self, index, input_ids, attention_mask):
        return self.pipe.encoders[index](input_ids, attention_mask)

    def refine_tokens(self, hidden, masks, pooled, timestep):
        return self.pipe.refiner(hidden, masks, pooled, timestep)

    def denoise(self, latents, timestep, context, context_mask, pooled):
        return self.pipe.transformer(latents, timestep, context, context_mask, pooled)

    def decode_latents(self, latents):
        return self.pipe.vae_decoder(latents)
