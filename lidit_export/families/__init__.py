"""Diffusers pipelines of the LLM-encoder DiT family, each described once: which pipeline class, where its LLM
is tapped, how its prompt is templated, which graphs restate its refiner and DiT, and the chain rules the
runtime follows (`lidit_runtime.chain`). Adding a family is adding a row here and its graphs in `graphs.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lidit_runtime.chain import ChainRecord, GuidanceRule

from ..errors import ConfigError

SENTINEL = "\u2063LIDIT_CAPTION\u2063"


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str  # model_index.json's _class_name
    encoder_kind: str  # what the README's support table says the LLM is
    tap: int  # hidden_states[-tap]
    templates: Callable  # pipe -> (prefix, suffix, negative prefix or None)
    render: Callable  # (pipe, caption) -> the text the pipeline feeds its tokenizer (checked against the template)
    side: Callable  # pipe -> the image side the pipeline draws by default
    refiner: str  # class names in graphs.py
    dit: str
    chain: ChainRecord
    shift_seq_len: str  # what the pipeline passes to the dynamic shift: "patches" or "channels"
    default_steps: int  # the pipeline __call__'s defaults
    default_cfg: float
    guidance_kwargs: Callable  # request -> the pipeline __call__'s guidance arguments (parity)
    context_multiple: int = 1  # the refiner pads captions to a multiple of this (Z-Image: 32)


def _chat_template(pipe) -> tuple[str, str, None]:
    """Z-Image: the user turn of the tokenizer's chat template, generation prompt added, thinking enabled."""
    text = _chat_render(pipe, SENTINEL)
    if text.count(SENTINEL) != 1:
        raise ConfigError("the tokenizer's chat template does not keep the prompt verbatim; this checkpoint's template "
                          "cannot be split around the caption")
    prefix, suffix = text.split(SENTINEL)
    return prefix, suffix, None


def _chat_render(pipe, caption: str) -> str:
    return pipe.tokenizer.apply_chat_template([{"role": "user", "content": caption}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)


def _system_render(pipe, caption: str) -> str:
    return pipe.system_prompt + " <Prompt Start> " + caption


def _system_prefix(pipe) -> tuple[str, str, str]:
    """Lumina-2: `system_prompt <Prompt Start> caption` for the prompt; the negative prompt goes alone."""
    return pipe.system_prompt + " <Prompt Start> ", "", ""


def _z_image_guidance(request) -> dict:
    return dict(guidance_scale=request.cfg, cfg_truncation=request.cfg_truncation,
                cfg_normalization=request.cfg_normalization)


def _lumina2_guidance(request) -> dict:
    if request.cfg_normalization not in (0.0, 1.0):
        raise ConfigError(f"cfg_normalization={request.cfg_normalization}: Lumina-2's pipeline renormalises fully (1) "
                          "or not at all (0); other multiples have no diffusers counterpart to check against")
    return dict(guidance_scale=request.cfg, cfg_trunc_ratio=request.cfg_truncation,
                cfg_normalization=bool(request.cfg_normalization))


Z_IMAGE = Family(
    name="z-image", pipeline_class="ZImagePipeline", encoder_kind="Qwen3", tap=2, templates=_chat_template,
    render=_chat_render, side=lambda pipe: 1024, refiner="ZImageRefiner", dit="ZImageDiT",
    chain=ChainRecord(
        family="z-image", refiner_timestep=False, timestep_offset=1.0, timestep_scale=-0.001, output_scale=-1.0,
        guidance=GuidanceRule(scale_offset=1.0, applies="above_one", truncation="sigma", default_truncation=1.0,
                              renorm="clamp", renorm_axes="sample", default_normalization=0.0)),
    shift_seq_len="patches", default_steps=50, default_cfg=5.0, guidance_kwargs=_z_image_guidance,
    context_multiple=32)
LUMINA2 = Family(
    name="lumina2", pipeline_class="Lumina2Pipeline", encoder_kind="Gemma-2", tap=2, templates=_system_prefix,
    render=_system_render, side=lambda pipe: pipe.default_sample_size * pipe.vae_scale_factor,
    refiner="Lumina2Refiner", dit="Lumina2DiT",
    chain=ChainRecord(
        family="lumina2", refiner_timestep=False, timestep_offset=1.0, timestep_scale=-0.001, output_scale=-1.0,
        guidance=GuidanceRule(scale_offset=0.0, applies="above_one", truncation="step", default_truncation=1.0,
                              renorm="match", renorm_axes="last", default_normalization=1.0)),
    shift_seq_len="channels", default_steps=30, default_cfg=4.0, guidance_kwargs=_lumina2_guidance)
FAMILIES = {f.pipeline_class: f for f in (Z_IMAGE, LUMINA2)}


def family_of(pipeline_class: str) -> Family:
    try:
        return FAMILIES[pipeline_class]
    except KeyError:
        raise ConfigError(f"diffusers pipeline {pipeline_class!r} is not supported; supported: "
                          f"{', '.join(sorted(FAMILIES))} (and lidit-export's own model folders)") from None
