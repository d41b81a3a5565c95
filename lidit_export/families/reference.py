"""The PyTorch reference of a diffusers family checkpoint run through the shared chain: the exportable graph
modules (with the checkpoint's weights) driven by `lidit_runtime.pipeline.run_chain` and the chain record the
build writes. It is what `generate --backend torch` runs for such a folder and the forward loop calibration
observes; tests hold it (and the ONNX Runtime build) to the diffusers pipeline itself.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lidit_runtime.pipeline import GenerateRequest, GenerateResult, LatentGeometry, as_request, run_chain

from ..export.graph_spec import ShapeProfile
from .build import (chain_of, default_side, graph_modules, load_pipeline, patch_size, prompt_tokenizer,
                    scheduler_config)


class FamilyReference:
    def __init__(self, model_dir: str | Path, profile: ShapeProfile | None = None, loaded=None):
        self.path = Path(model_dir)
        self.family, self.pipe = loaded or load_pipeline(self.path)
        self.tokenizer, self.encoder_fields = prompt_tokenizer(self.path, self.pipe, self.family)
        self.modules = graph_modules(self.pipe, self.family)
        self.scheduler = scheduler_config(self.pipe, self.family)
        self.chain = chain_of(self.pipe, self.family)
        self.geometry = LatentGeometry(int(self.pipe.transformer.config.in_channels), int(self.pipe.vae_scale_factor),
                                       patch_size(self.pipe))
        self.side = default_side(self.pipe, self.family, profile or ShapeProfile())
        self.device = torch.device("cpu")

    # the components calibration observes and swaps, by graph name
    @property
    def refiner(self):
        return self.modules["refiner"]

    @property
    def transformer(self):
        return self.modules["dit"]

    @property
    def family_name(self) -> str:
        return self.family.name

    @property
    def dit_depth(self) -> int:
        return len(self.modules["dit"].layers)

    def calibration_identity(self) -> tuple[dict, list[Path]]:
        from .build import _source_files

        index = json.loads((self.path / "model_index.json").read_text())
        return ({"family": self.family.name, "index": index, "scheduler": asdict(self.scheduler)},
                _source_files(self.path, "dit") + _source_files(self.path, "encoder_0"))

    @property
    def defaults(self) -> tuple[int, float, int, int]:
        """steps, cfg, height, width of an unspecified request."""
        return self.scheduler.default_steps, self.scheduler.default_cfg, self.side, self.side

    def with_modules(self, replace_modules: dict) -> "FamilyReference":
        view = copy.copy(self)
        view.modules = {**self.modules, **replace_modules}
        return view

    @torch.inference_mode()
    def generate(self, request: GenerateRequest | str | Sequence[str], *, keep_trajectory: bool = False,
                 on_step=None, **fields) -> GenerateResult:
        request = as_request(request, **fields).with_defaults(self.scheduler, self.side, self.side, self.chain)
        return run_chain(_GraphModules(self.modules), [self.tokenizer], self.geometry, self.scheduler, request,
                         keep_trajectory=keep_trajectory, on_step=on_step, chain=self.chain)


class _GraphModules:
    """A backend that runs the graph modules themselves in torch (float32, CPU)."""

    name = "torch"

    def __init__(self, modules: dict):
        self.modules = modules

    def asarray(self, host: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(host))

    def to_numpy(self, array) -> np.ndarray:
        return array.detach().float().cpu().numpy()

    def concat(self, arrays, axis: int) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)

    def synchronize(self) -> None:
        pass

    def encode_prompt(self, index, input_ids, attention_mask):
        return self.modules[f"encoder_{index}"](input_ids, attention_mask), None

    def refine_tokens(self, hidden, masks, pooled, timestep):
        return self.modules["refiner"](hidden[0], masks[0])

    def denoise(self, latents, timestep, context, context_mask, pooled):
        return self.modules["dit"](latents, timestep, context, context_mask)

    def decode_latents(self, latents):
        return self.modules["vae_decoder"](latents)


def load_reference(model_dir: str | Path, device: str = "cpu", dtype: str | None = None,
                   profile: ShapeProfile | None = None):
    """The reference pipeline of a model folder: a FamilyReference for a diffusers checkpoint of a supported
    family, else lidit-export's own LiDiTPipeline."""
    from ..errors import ConfigError
    from ..model.pipeline import INDEX, LiDiTPipeline
    from .build import read_index

    path = Path(model_dir)
    if path.is_dir() and (path / INDEX).exists() and read_index(path) is not None:
        if device != "cpu" or dtype not in (None, "float32"):
            raise ConfigError("diffusers checkpoints run their reference in float32 on the CPU here; drop --device "
                              "and --dtype (or run the checkpoint with diffusers itself)")
        return FamilyReference(path, profile)
    return LiDiTPipeline.from_pretrained(path, device=device, dtype=dtype)
