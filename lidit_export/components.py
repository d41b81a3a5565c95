"""The components of a pipeline, each described once: what its graph is called, where its weights live, which
part of the config it depends on, which pipeline attribute holds its module, what a build may do to it, and
how its graph spec is built. The exporter, calibration, parity, the model folder and training read this table;
no other code takes a component name apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .config import PipelineConfig
from .errors import ConfigError
from .export.graph_spec import dit_spec, encoder_spec, refiner_spec, vae_decoder_spec

ENCODER_PREFIX = "encoder_"


@dataclass(frozen=True)
class Component:
    name: str  # graph, engine and manifest name
    weights: str | None  # its weights in the model folder (None: an LLM encoder, whose folder the index names)
    config_field: str  # the PipelineConfig field its graph depends on
    module_attr: str  # the LiDiTPipeline attribute holding its module (a list for the encoders)
    quantizable: bool  # calibrated and exported as Q/DQ graphs by the FP8 / INT8 recipes
    half_convertible: bool  # converted by --precision fp16 / bf16 (encoders and the VAE stay FP32)
    spec: Callable  # (config, shape ranges, prefix_cache) -> GraphSpec
    llm: int | None = None  # the LLM index of an encoder

    def module(self, pipe):
        module = getattr(pipe, self.module_attr)
        return module if self.llm is None else module[self.llm]

    def config_slice(self, config: PipelineConfig) -> dict:
        """The part of the config its graph depends on (a DiT change never re-exports the encoders)."""
        if self.llm is not None:
            return {"encoder": asdict(config.encoders[self.llm]), "prefix_length": config.refiner.prefix_lengths[self.llm]}
        return asdict(getattr(config, self.config_field))

    def source_files(self, model_dir: Path, config: PipelineConfig) -> list[Path]:
        """The model-folder files its graph is made from."""
        if self.llm is not None:
            folder = Path(model_dir) / config.encoders[self.llm].path
            return sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
        return [Path(model_dir) / self.weights]


REFINER = Component("refiner", "refiner/model.safetensors", "refiner", "refiner", True, True, refiner_spec)
DIT = Component("dit", "transformer/model.safetensors", "transformer", "transformer", True, True, dit_spec)
VAE_DECODER = Component("vae_decoder", "vae/diffusion_pytorch_model.safetensors", "vae", "vae_decoder", False, False,
                        vae_decoder_spec)
TRAINED = (REFINER, DIT, VAE_DECODER)  # the components whose weights the model folder holds itself
WEIGHTS = {c.name: c.weights for c in TRAINED}
QUANTIZABLE = tuple(c.name for c in TRAINED if c.quantizable)


def encoder(index: int) -> Component:
    return Component(f"{ENCODER_PREFIX}{index}", None, "encoders", "encoders", False, False,
                     partial(encoder_spec, index=index), llm=index)


def components(config: PipelineConfig) -> list[Component]:
    """Every component of a pipeline, in the order the chain runs them."""
    return [encoder(i) for i in range(len(config.encoders))] + list(TRAINED)


def component(name: str) -> Component:
    """The component a graph name stands for: the one place a name is read."""
    for c in TRAINED:
        if c.name == name:
            return c
    index = name[len(ENCODER_PREFIX):]
    if name.startswith(ENCODER_PREFIX) and index.isdigit():
        return encoder(int(index))
    raise ConfigError(f"component {name!r} is unknown; components are encoder_<i>, "
                      f"{', '.join(c.name for c in TRAINED)}")
