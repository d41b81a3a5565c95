"""Typed configuration: one dataclass per component and one for the pipeline, JSON in and out.

Tags: [paper] is stated in Ma et al. 2024 (NeurIPS), [choice] is ours where the paper is silent.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from lidit_runtime.sampler import SchedulerConfig
from lidit_runtime.schema import from_dict

from .errors import ConfigError

# [paper] Sec. 3: the instruction placed before the caption.
PAPER_INSTRUCTION = ("Describe the image by detailing the color, shape, size, texture, quantity, text, "
                     "and spatial relationships of the objects:")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EncoderConfig:
    """One LLM prompt encoder: where it lives and how prompts are fed to it."""

    path: str  # sub-folder of the model folder holding the HF model and tokenizer
    hidden_size: int
    num_hidden_layers: int  # of the full LLM; the encoder runs only the blocks it needs
    prefix_text: str  # rendered template up to the caption: system prompt + instruction
    suffix_text: str  # rendered template after the caption
    pad_token_id: int
    system_prompt: str = ""
    instruction: str = PAPER_INSTRUCTION
    caption_separator: str = " "
    max_length: int = 256  # [choice] tokens, prefix and suffix included; longer captions are truncated with a warning
    feature_layer: int = -3  # [paper] HF hidden_states[-3]: output of the third-to-last block, no final norm
    dtype: str = "float32"  # reference precision; deployment default for LLMs is bfloat16

    @property
    def blocks_needed(self) -> int:
        return self.num_hidden_layers + 1 + self.feature_layer

    def validate(self, where: str) -> None:
        parts = Path(self.path).parts
        if not parts or Path(self.path).is_absolute() or ".." in parts:
            raise ConfigError(f"{where}.path={self.path!r} must name a sub-folder of the model folder (no '..', not absolute)")
        if self.hidden_size < 1 or self.num_hidden_layers < 1 or self.pad_token_id < 0:
            raise ConfigError(f"{where}: hidden_size and num_hidden_layers must be >= 1 and pad_token_id >= 0")
        if not 1 <= self.blocks_needed <= self.num_hidden_layers:
            raise ConfigError(f"{where}.feature_layer={self.feature_layer} is outside an LLM with "
                              f"{self.num_hidden_layers} blocks; use a value in [-{self.num_hidden_layers}, -1]")
        if self.max_length < 8:
            raise ConfigError(f"{where}.max_length={self.max_length} is too small; use at least 8 (default 256)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{where}.dtype={self.dtype!r} is unknown; use one of {DTYPES}")


@dataclass
class RefinerConfig:
    """Linguistic token refiner per LLM [paper] + collaborative refiner across LLMs [paper]."""

    llm_hidden_sizes: list[int]
    prefix_lengths: list[int]  # instruction tokens dropped per branch after refinement
    width: int  # [choice] = DiT width
    num_heads: int
    depth: int = 2  # [paper] N = 2 refiner blocks; 0 = input projection only (the "no refiner" ablation)
    mlp_ratio: float = 4.0
    collaborative: bool = True  # [paper] used when there are >= 2 LLMs
    causal: bool = False  # ablation only: the paper shows a causal refiner hurts (45.84 vs 54.02)
    eps: float = 1e-6

    def validate(self, where: str = "refiner") -> None:
        if len(self.llm_hidden_sizes) != len(self.prefix_lengths) or not self.llm_hidden_sizes:
            raise ConfigError(f"{where}: llm_hidden_sizes and prefix_lengths need one entry per LLM")
        _check_heads(where, self.width, self.num_heads)
        if min(self.prefix_lengths) < 0 or min(self.llm_hidden_sizes) < 1 or not self.mlp_ratio > 0:
            raise ConfigError(f"{where}: prefix_lengths must be >= 0, llm_hidden_sizes >= 1 and mlp_ratio > 0")
        if self.depth < 0:
            raise ConfigError(f"{where}.depth={self.depth} must be >= 0 (paper: 2; 0 = projection only)")


@dataclass
class DiTConfig:
    """LI-DiT denoiser. Paper Table 7: 1B = 28 x 1152 x 16 heads, 10B = 48 x 2816 x 44 heads, patch 2."""

    in_channels: int
    width: int
    depth: int
    num_heads: int
    context_dim: int  # refiner width
    pooled_dim: int  # sum of the LLM widths (pooled vectors concatenated)
    patch_size: int = 2
    mlp_ratio: float = 4.0
    pe_groups: int = 32  # GroupNorm groups in the ResBlock positional embedding
    eps: float = 1e-6
    # ResBlocks in the positional embedding. Zero padding is its only source of absolute position: each
    # ResBlock carries it 2 patches further in, so a grid wider than 4 x pe_depth patches has a centre
    # that cannot tell where it is (the miniature's 8 x 8 grid needs >= 2).
    pe_depth: int = 1

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def validate(self, where: str = "transformer") -> None:
        _check_heads(where, self.width, self.num_heads)
        if self.in_channels < 1 or self.pe_groups < 1 or not self.mlp_ratio > 0:
            raise ConfigError(f"{where}: in_channels and pe_groups must be >= 1 and mlp_ratio > 0")
        if self.width % self.pe_groups:
            raise ConfigError(f"{where}.pe_groups={self.pe_groups} must divide width={self.width}")
        if self.patch_size < 1 or self.depth < 1 or self.pe_depth < 1:
            raise ConfigError(f"{where}: patch_size, depth and pe_depth must be >= 1")


@dataclass
class VAEConfig:
    """A diffusers AutoencoderKL; 8x downsampling and 16 channels like SD3/FLUX [paper: 8x, 16 ch]."""

    latent_channels: int = 16
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 1.5305  # SD3's values; trained VAEs bring their own
    shift_factor: float = 0.0609

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, where: str = "vae") -> None:
        if not self.block_out_channels or min(self.block_out_channels) < 1 or self.norm_num_groups < 1 \
                or self.layers_per_block < 1 or self.latent_channels < 1:
            raise ConfigError(f"{where}: block_out_channels must be a non-empty list of sizes >= 1, and "
                              "norm_num_groups, layers_per_block and latent_channels >= 1")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"{where}.norm_num_groups={self.norm_num_groups} must divide every block_out_channels "
                              f"entry {self.block_out_channels}")
        if self.scaling_factor <= 0:
            raise ConfigError(f"{where}.scaling_factor must be > 0")


@dataclass
class PipelineConfig:
    encoders: list[EncoderConfig]
    refiner: RefinerConfig
    transformer: DiTConfig
    vae: VAEConfig
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    name: str = "lidit"
    default_height: int = 256
    default_width: int = 256

    def validate(self) -> "PipelineConfig":
        if not self.encoders:
            raise ConfigError("encoders: at least one LLM encoder is needed")
        for i, enc in enumerate(self.encoders):
            enc.validate(f"encoders[{i}]")
        self.refiner.validate()
        self.transformer.validate()
        self.vae.validate()
        self.scheduler.validate()
        widths = [e.hidden_size for e in self.encoders]
        if self.refiner.llm_hidden_sizes != widths:
            raise ConfigError(f"refiner.llm_hidden_sizes={self.refiner.llm_hidden_sizes} must equal the encoders' "
                              f"hidden sizes {widths}")
        if self.transformer.context_dim != self.refiner.width:
            raise ConfigError(f"transformer.context_dim={self.transformer.context_dim} must equal refiner.width="
                              f"{self.refiner.width}")
        if self.transformer.pooled_dim != sum(widths):
            raise ConfigError(f"transformer.pooled_dim={self.transformer.pooled_dim} must equal the sum of the LLM "
                              f"widths ({sum(widths)})")
        step = self.vae.scale_factor * self.transformer.patch_size
        if min(self.default_height, self.default_width) < 1 or self.default_height % step or self.default_width % step:
            raise ConfigError(f"default_height/default_width {self.default_height}x{self.default_width} must be positive "
                              f"multiples of {step} (VAE factor x patch size)")
        if self.transformer.in_channels != self.vae.latent_channels:
            raise ConfigError(f"transformer.in_channels={self.transformer.in_channels} must equal "
                              f"vae.latent_channels={self.vae.latent_channels}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineConfig":
        return _build(cls, data, "model_index").validate()

    @classmethod
    def from_json_file(cls, path: str | Path) -> "PipelineConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} not found; create a model folder with `lidit-export init --preset tiny --out DIR`")
        if not path.is_file() or path.stat().st_size > 16 << 20:  # never read a FIFO, device or folder
            raise ConfigError(f"{path} is not a model index file (a folder, FIFO, device or > 16 MB); restore it")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); restore it or re-run `lidit-export init`") from None
        except OSError as e:
            raise ConfigError(f"{path} cannot be read ({e.strerror}); check the path and its permissions") from None
        return cls.from_dict(data)


def _check_heads(where: str, width: int, heads: int) -> None:
    if heads < 1 or width % heads:
        raise ConfigError(f"{where}: width={width} is not divisible by num_heads={heads}; pick heads that divide it")


def _build(cls, data, where: str):
    """Build dataclass `cls` from a dict: every field type-checked (lidit_runtime.schema)."""
    return from_dict(cls, data, where, ConfigError)
