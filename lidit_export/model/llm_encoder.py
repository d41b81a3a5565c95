"""LLM prompt encoder: any HF causal LM, cut after the block whose output the paper uses.

The paper takes `hidden_states[-3]` (output of the third-to-last block, no final norm). We load only the
blocks up to that one and replace the final norm by an identity, so the last two blocks are never run,
never exported and never held in memory.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..config import EncoderConfig
from ..errors import ArtifactError, ConfigError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SENTINEL = "\u2063LIDIT_CAPTION\u2063"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens: (B, L, H), (B, L) -> (B, H), accumulated in float32."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return ((hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)).to(hidden.dtype)


class LLMEncoder(nn.Module):
    def __init__(self, base_model: nn.Module):
        super().__init__()
        if not hasattr(base_model, "layers") or not hasattr(base_model, "norm"):
            raise ConfigError(f"{type(base_model).__name__} has no `layers`/`norm`: only decoder-only HF LMs "
                              "(Llama, Qwen2, Mistral, Gemma, Phi3, ...) are supported as prompt encoders")
        base_model.norm = nn.Identity()  # [paper] features are taken before the final norm
        self.model = base_model

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EncoderConfig, dtype: str | None = None,
                        attn_implementation: str = "sdpa") -> "LLMEncoder":
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"LLM folder {path} not found; the model folder is incomplete (re-create it)")
        if not any(f.is_file() for f in path.glob("*.safetensors")):
            raise ArtifactError(f"LLM folder {path} has no .safetensors weights (only safetensors are ever read, never "
                                "pickles such as pytorch_model.bin); convert them with save_pretrained(safe_serialization=True)")
        try:
            hf_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"LLM folder {path}: config.json cannot be read ({str(e).splitlines()[0][:150]}); "
                                "restore it from the LLM's release") from None
        seen = (getattr(hf_config, "num_hidden_layers", None), getattr(hf_config, "hidden_size", None))
        if seen != (config.num_hidden_layers, config.hidden_size):
            raise ArtifactError(f"LLM folder {path} has {seen[0]} blocks of width {seen[1]}, model_index.json says "
                                f"{config.num_hidden_layers} of {config.hidden_size}: the index and the LLM do not match")
        truncate_config_(hf_config, config.blocks_needed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the dropped blocks and lm_head are reported as unused weights
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(path, config=hf_config, dtype=TORCH_DTYPES[dtype or config.dtype],
                                              attn_implementation=attn_implementation, use_safetensors=True,
                                              trust_remote_code=False)
        except (OSError, ValueError, RuntimeError) as e:  # truncated / mismatched weights
            raise ArtifactError(f"LLM folder {path}: the weights cannot be loaded ({str(e).splitlines()[0][:150]}); "
                                "restore them from the LLM's release") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        return cls(model.eval().requires_grad_(False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids and 0/1 mask, right padded -> hidden (B, L, H), pooled (B, H)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return hidden, masked_mean(hidden, attention_mask)


def truncate_config_(hf_config, blocks: int) -> None:
    """Keep the first `blocks` decoder blocks (and per-layer lists such as Qwen2's layer_types)."""
    total = hf_config.num_hidden_layers
    hf_config.num_hidden_layers = blocks
    for name in ("layer_types",):
        value = getattr(hf_config, name, None)
        if isinstance(value, list) and len(value) == total:
            setattr(hf_config, name, value[:blocks])


def render_prompt_template(tokenizer, system_prompt: str, instruction: str, separator: str = " ") -> tuple[str, str]:
    """Split the full prompt text into (prefix, suffix) around the caption.

    With a chat template, the user turn is `instruction + separator + caption` [choice]; without one,
    the prefix is BOS (if the tokenizer uses one) + system prompt + instruction.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": instruction + _SENTINEL})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if text.count(_SENTINEL) != 1:
            raise ConfigError("the tokenizer's chat template does not keep the user message verbatim; "
                              "set the encoder's prefix_text/suffix_text by hand")
        prefix, suffix = text.split(_SENTINEL)
        return prefix, suffix
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", True) and tokenizer.bos_token else ""
    system = f"{system_prompt}\n" if system_prompt else ""
    return bos + system + instruction, ""


def encoder_config_for(folder: str | Path, relpath: str, system_prompt: str = "", instruction: str | None = None,
                       max_length: int = 256, dtype: str = "float32") -> EncoderConfig:
    """Describe an HF causal LM folder (model + tokenizer) as an EncoderConfig, rendering its template."""
    from transformers import AutoConfig, AutoTokenizer

    from ..config import PAPER_INSTRUCTION

    path = Path(folder) / relpath
    hf_config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    instruction = PAPER_INSTRUCTION if instruction is None else instruction
    prefix, suffix = render_prompt_template(tokenizer, system_prompt, instruction)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(f"tokenizer in {path} has neither a pad nor an eos token; set pad_token in its config")
    logging.getLogger(__name__).debug("prefix=%r suffix=%r", prefix, suffix)
    return EncoderConfig(path=relpath, hidden_size=hf_config.hidden_size, num_hidden_layers=hf_config.num_hidden_layers,
                         prefix_text=prefix, suffix_text=suffix, pad_token_id=int(pad), system_prompt=system_prompt,
                         instruction=instruction, max_length=max_length, dtype=dtype)


class PrefixCachedEncoder(nn.Module):
    """The encoder with its constant prefix (system prompt + instruction) computed once and baked in.

    The LLM is causal, so the prefix's per-layer keys/values and its feature-layer states never depend
    on the caption. This module holds them as buffers and runs only the caption (+ template suffix)
    tokens, attending to the cached prefix; it returns exactly what LLMEncoder returns for the full
    sequence: hidden (B, P + Lc, H) and the pooled mean over all valid tokens, prefix included.
    """

    def __init__(self, encoder: LLMEncoder, prefix_ids: list[int]):
        super().__init__()
        import inspect

        self.model = encoder.model
        self.prefix_length = len(prefix_ids)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        ids = torch.tensor([prefix_ids])
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        self.num_layers = len(cache.layers)
        for i, layer in enumerate(cache.layers):
            self.register_buffer(f"prefix_key_{i}", layer.keys.detach().clone())  # (1, kv_heads, P, head_dim)
            self.register_buffer(f"prefix_value_{i}", layer.values.detach().clone())
        self.register_buffer("prefix_hidden", out.last_hidden_state.detach().clone())  # (1, P, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption(+suffix) ids (B, Lc) and mask -> hidden (B, P + Lc, H), pooled (B, H)."""
        from transformers import DynamicCache

        B = input_ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        for i in range(self.num_layers):  # a fresh cache per call: the buffers are never mutated
            cache.update(getattr(self, f"prefix_key_{i}").expand(B, -1, -1, -1),
                         getattr(self, f"prefix_value_{i}").expand(B, -1, -1, -1), i)
        ones = torch.ones(B, self.prefix_length, dtype=attention_mask.dtype, device=attention_mask.device)
        full_mask = torch.cat([ones, attention_mask], dim=1)
        caption = self.model(input_ids=input_ids, attention_mask=full_mask, use_cache=True,
                             **{self._cache_kwarg: cache}).last_hidden_state
        hidden = torch.cat([self.prefix_hidden.expand(B, -1, -1).to(caption.dtype), caption], dim=1)
        return hidden, masked_mean(hidden, full_mask)
