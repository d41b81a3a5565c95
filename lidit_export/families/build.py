"""A diffusers pipeline folder (Z-Image, Lumina-Image-2.0) -> a build folder the runtime runs like any other.

The folder is checked before diffusers reads it: model_index.json names only the classes a family has (no
arbitrary import), every weight file is safetensors, nothing links out of the folder; the pipeline is then
loaded with `local_files_only` (nothing is fetched). Export: the LLM cut at the tapped layer, the refiner, the
DiT for one call and the VAE decoder, each its own graph; the manifest's `chain` and encoder records carry the
family's rules (template, tap, guidance, sigmas, VAE scale), so the runtime has no family code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lidit_runtime.manifest import FORMAT, EncoderRecord, Manifest, build_file, file_sha256
from lidit_runtime.sampler import SchedulerConfig
from lidit_runtime.precision import Precision
from lidit_runtime.tokenize import PromptTokenizer

from .. import __version__
from ..build_folder import BuildFolder
from ..components import component
from ..errors import ArtifactError, ConfigError
from ..export.graph_spec import GraphSpec, ShapeProfile, TensorSpec
from . import Family, family_of

INDEX = "model_index.json"
COMPONENT_CLASSES = {  # what each slot of a supported pipeline may name: (library, classes or None for any)
    "scheduler": ("diffusers", {"FlowMatchEulerDiscreteScheduler"}),
    "vae": ("diffusers", {"AutoencoderKL"}),
    "transformer": ("diffusers", {"ZImageTransformer2DModel", "Lumina2Transformer2DModel"}),
    "text_encoder": ("transformers", None),
    "tokenizer": ("transformers", None),
}
WEIGHTED = ("transformer", "text_encoder", "vae")
CAPTIONS = ["a red circle to the left of a blue square on a wooden table", "two small cats",
            "a photo of a yellow bus next to a tall tree under a cloudy sky", ""]
_UNSUPPORTED_SCHEDULER = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                          "stochastic_sampling", "shift_terminal")


def read_index(model_dir: Path) -> dict | None:
    """model_index.json of a diffusers folder (None when the folder is lidit-export's own format)."""
    path = build_file(model_dir, INDEX, "model index", "the model folder", "restore the model folder")
    if path.stat().st_size > 1 << 20:
        raise ArtifactError(f"{path} is over 1 MiB; it is not a model index")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); restore the model folder") from None
    return data if isinstance(data, dict) and "_class_name" in data else None


def check_folder(model_dir: Path, index: dict) -> Family:
    """Refuse what diffusers would otherwise import, load or follow: unknown classes, pickles, links out."""
    family = family_of(index["_class_name"])
    root = model_dir.resolve()
    for slot, (library, classes) in COMPONENT_CLASSES.items():
        entry = index.get(slot)
        if (not isinstance(entry, list) or len(entry) != 2 or entry[0] != library
                or not isinstance(entry[1], str) or (classes is not None and entry[1] not in classes)):
            raise ArtifactError(f"{INDEX}: {slot}={entry!r} is not what a {family.pipeline_class} folder holds "
                                f"([{library!r}, {sorted(classes) if classes else 'a class'}]); the folder is not a "
                                "supported checkpoint")
        if slot in WEIGHTED:
            folder = (model_dir / slot).resolve()
            if root not in folder.parents or not folder.is_dir():
                raise ArtifactError(f"{slot}/ is missing from {model_dir} or leads out of it; restore the checkpoint")
            if not any(folder.glob("*.safetensors")):
                raise ArtifactError(f"{slot}/ has no .safetensors weights (pickled .bin files are never read); convert "
                                    "the checkpoint with save_pretrained(safe_serialization=True)")
    for entry in model_dir.rglob("*"):
        if entry.is_symlink() and root not in entry.resolve().parents:
            raise ArtifactError(f"{entry.relative_to(model_dir)} is a link out of the model folder; copy the file in")
    return family


def load_pipeline(model_dir: str | Path):
    """(family, the diffusers pipeline in float32 on CPU), from a checked folder, nothing fetched."""
    import diffusers
    import torch

    model_dir = Path(model_dir)
    index = read_index(model_dir)
    if index is None:
        raise ArtifactError(f"{model_dir} is not a diffusers pipeline folder ({INDEX} has no _class_name)")
    family = check_folder(model_dir, index)
    cls = getattr(diffusers, family.pipeline_class)
    try:
        pipe = cls.from_pretrained(model_dir, local_files_only=True, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{model_dir}: diffusers cannot load this {family.pipeline_class} folder "
                            f"({str(e).splitlines()[0][:160]}); restore the checkpoint") from None
    pipe.set_progress_bar_config(disable=True)
    levels = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if levels != pipe.vae_scale_factor:
        raise ArtifactError(f"the VAE has {levels} pixels per latent cell, {family.pipeline_class} assumes "
                            f"{pipe.vae_scale_factor}: diffusers itself would draw the wrong size; fix the checkpoint's VAE")
    return family, pipe


def scheduler_config(pipe, family: Family) -> SchedulerConfig:
    """The pipeline's FlowMatchEulerDiscreteScheduler as the runtime's flow-Euler plan (sigmas as diffusers
    rounds them); options the plan does not reproduce are refused."""
    c = pipe.scheduler.config
    used = [k for k in _UNSUPPORTED_SCHEDULER if c.get(k)]
    if used or c.get("time_shift_type", "exponential") != "exponential":
        raise ConfigError(f"scheduler options {used or ['time_shift_type']} are not reproduced by the runtime's "
                          "flow-Euler plan; use the checkpoint's stock scheduler config")

    def get(name, default):
        value = c.get(name)
        return default if value is None else value

    return SchedulerConfig(
        sampler="flow_euler", prediction="velocity", num_train_timesteps=int(c.num_train_timesteps),
        flow_shift=float(c.shift), dynamic_shift=bool(c.use_dynamic_shifting),
        base_seq_len=int(get("base_image_seq_len", 256)), max_seq_len=int(get("max_image_seq_len", 4096)),
        base_shift=float(get("base_shift", 0.5)), max_shift=float(get("max_shift", 1.15)),
        shift_seq_len=family.shift_seq_len, sigma_precision="float32",
        default_steps=family.default_steps, default_cfg=family.default_cfg).validate()


def _max_length(family: Family) -> int:
    import inspect

    import diffusers

    return inspect.signature(getattr(diffusers, family.pipeline_class).__call__).parameters["max_sequence_length"].default


def _tokenizer_file(model_dir: Path) -> Path:
    return build_file(model_dir, "tokenizer/tokenizer.json", "fast tokenizer", INDEX,
                      "the checkpoint needs tokenizer/tokenizer.json (save the tokenizer with a fast tokenizer)")


def prompt_tokenizer(model_dir: Path, pipe, family: Family) -> tuple[PromptTokenizer, dict]:
    """The runtime's tokenizer for this checkpoint and its encoder fields, checked token for token against the
    pipeline's own tokenizer call on sample prompts (template text and ids)."""
    prefix, suffix, negative = family.templates(pipe)
    max_length = _max_length(family)
    tok = pipe.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ConfigError("the checkpoint's tokenizer has neither a pad nor an eos token")
    fields = dict(prefix_text=prefix, suffix_text=suffix, caption_separator="", max_length=max_length,
                  pad_token_id=int(pad), whole_text=True, negative_prefix_text=negative)
    ours = PromptTokenizer(_tokenizer_file(model_dir), prefix, suffix, max_length, int(pad), "", whole_text=True,
                           negative_prefix_text=negative)
    for caption in CAPTIONS + ["word " * (max_length + 8)]:
        text = prefix + caption + suffix
        if family.render(pipe, caption) != text:
            raise ConfigError("the pipeline's prompt template changes the prompt text (it trims or escapes it); "
                              "this checkpoint's template is not supported yet")
        want = tok(text, max_length=max_length, truncation=True).input_ids
        logging.getLogger("lidit_runtime.tokenize").disabled = True  # the long sample is truncated on purpose
        try:
            got = ours.rows([caption])[0]
        finally:
            logging.getLogger("lidit_runtime.tokenize").disabled = False
        if got != list(want):
            raise ConfigError(f"tokenizer.json gives other ids than the pipeline's tokenizer for {caption[:30]!r}; "
                              "the checkpoint's tokenizer files disagree (re-save the tokenizer)")
    return ours, fields


def graph_modules(pipe, family: Family) -> dict:
    from . import graphs

    transformer = graphs.with_real_rope(pipe.transformer)  # one weight-sharing copy for the refiner and the DiT
    return {"encoder_0": graphs.TappedLLM(pipe.text_encoder, family.tap),
            "refiner": getattr(graphs, family.refiner)(transformer),
            "dit": getattr(graphs, family.dit)(transformer),
            "vae_decoder": graphs.VAEImage(pipe.vae)}


def patch_size(pipe) -> int:
    config = pipe.transformer.config
    return int((config.get("all_patch_size") or [config.get("patch_size")])[0])


def chain_of(pipe, family: Family):
    """The family's chain record with this checkpoint's VAE scale and shift."""
    vae = pipe.vae.config
    return replace(family.chain, latent_scale=float(vae.scaling_factor), latent_shift=float(vae.shift_factor or 0.0))


def rope_limit(pipe) -> int:
    """The largest image side (px) the DiT's rotary tables cover: rows and columns index tables of axes_lens."""
    lens = pipe.transformer.config.axes_lens
    return min(lens[1], lens[2]) * patch_size(pipe) * pipe.vae_scale_factor


def default_side(pipe, family: Family, profile: ShapeProfile) -> int:
    """The pipeline's default image side, capped by the build's --max-image (a build never draws above it) and
    by what the rotary tables cover."""
    step = pipe.vae_scale_factor * 2
    side = min(family.side(pipe), rope_limit(pipe) // step * step)
    return side if profile.max_image is None else max(step, min(side, profile.max_image // step * step))


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def graph_specs(pipe, family: Family, profile: ShapeProfile, max_length: int, patch: int) -> dict[str, GraphSpec]:
    profile = profile.validate()
    f = pipe.vae_scale_factor
    side = default_side(pipe, family, profile)
    limit = rope_limit(pipe)
    if profile.max_image is not None and profile.max_image > limit:
        raise ConfigError(f"max_image={profile.max_image} is above the largest side this model's rotary tables cover "
                          f"({limit} px); use --max-image {limit} or less", "max_image")
    max_image = profile.max_image or min(2 * side, limit)
    latent = (max(profile.min_image // f, patch), side // f, max_image // f)
    if not latent[0] <= latent[1] <= latent[2]:
        raise ConfigError(f"max_image={max_image} is below the smallest image {profile.min_image}", "max_image")
    batch = (1, 2, 2 * profile.max_batch)
    text = (1, min(profile.opt_text_tokens, max_length), max_length)
    m = family.context_multiple
    context = tuple(_ceil(t, m) for t in text)
    if max_length + family.context_multiple >= pipe.transformer.config.axes_lens[0]:
        raise ConfigError(f"captions of {max_length} tokens need more caption positions than the DiT's rotary table "
                          f"holds ({pipe.transformer.config.axes_lens[0]}); the checkpoint's config is inconsistent")
    H = pipe.text_encoder.config.hidden_size
    D = pipe.transformer.config.get("dim") or pipe.transformer.config.hidden_size
    C = pipe.transformer.config.in_channels
    lat = ("batch", C, "latent_height", "latent_width")
    multiple = {"latent_height": f"multiple of {patch}", "latent_width": f"multiple of {patch}"}
    return {
        "encoder_0": GraphSpec("encoder_0", [TensorSpec("input_ids", "int64", ("batch", "text_len_0")),
                                             TensorSpec("attention_mask", "int64", ("batch", "text_len_0"))],
                               [TensorSpec("hidden", "float32", ("batch", "text_len_0", H))],
                               {"batch": batch, "text_len_0": text}),
        "refiner": GraphSpec("refiner", [TensorSpec("hidden_0", "float32", ("batch", "text_len_0", H)),
                                         TensorSpec("attention_mask_0", "int64", ("batch", "text_len_0"))],
                             [TensorSpec("context", "float32", ("batch", "context_len", D)),
                              TensorSpec("context_mask", "int64", ("batch", "context_len"))],
                             {"batch": batch, "text_len_0": text},
                             {"context_len": f"ceil(text_len_0 / {m}) * {m}" if m > 1 else "text_len_0"}),
        "dit": GraphSpec("dit", [TensorSpec("latents", "float32", lat), TensorSpec("timestep", "float32", ("batch",)),
                                 TensorSpec("context", "float32", ("batch", "context_len", D)),
                                 TensorSpec("context_mask", "int64", ("batch", "context_len"))],
                         [TensorSpec("model_out", "float32", lat)],
                         {"batch": batch, "context_len": context, "latent_height": latent, "latent_width": latent},
                         multiple),
        "vae_decoder": GraphSpec("vae_decoder", [TensorSpec("latents", "float32", lat)],
                                 [TensorSpec("image", "float32", ("batch", 3, "image_height", "image_width"))],
                                 {"batch": (1, 1, profile.max_batch), "latent_height": latent, "latent_width": latent},
                                 {"image_height": f"{f} * latent_height", "image_width": f"{f} * latent_width"}),
    }


def sample_inputs(modules: dict, tokenizer: PromptTokenizer, specs: dict, seed: int = 0) -> dict:
    """Inputs for tracing each graph at its opt shape: real prompts through the torch modules."""
    import torch

    rng = np.random.default_rng(seed)
    tokens = tokenizer(CAPTIONS[:2])
    with torch.inference_mode():
        hidden = modules["encoder_0"](torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask))
        context, context_mask = modules["refiner"](hidden, torch.from_numpy(tokens.attention_mask))
    latent = specs["dit"].dims["latent_height"][1]
    C = specs["dit"].inputs[0].shape[1]
    return {"encoder_0": {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask},
            "refiner": {"hidden_0": hidden.numpy(), "attention_mask_0": tokens.attention_mask},
            "dit": {"latents": rng.standard_normal((2, C, latent, latent), dtype=np.float32),
                    "timestep": rng.uniform(0.05, 0.95, size=2).astype(np.float32),
                    "context": context.numpy(), "context_mask": context_mask.numpy()},
            "vae_decoder": {"latents": rng.standard_normal((1, C, latent, latent), dtype=np.float32)}}


def _source_files(model_dir: Path, name: str) -> list[Path]:
    slot = {"encoder_0": "text_encoder", "refiner": "transformer", "dit": "transformer", "vae_decoder": "vae"}[name]
    folder = model_dir / slot
    return sorted(folder.glob("*.safetensors")) + [folder / "config.json"]


def _input_key(model_dir: Path, family: Family, spec: GraphSpec, name: str) -> str:
    from ..export.graph_passes import PASSES_REVISION
    from ..export.onnx_export import OPSET

    h = hashlib.sha256(json.dumps({"family": family.name, "spec": spec.to_dict(), "opset": OPSET, "tap": family.tap,
                                   "lidit-export": __version__, "passes": PASSES_REVISION}, sort_keys=True).encode())
    for f in _source_files(model_dir, name):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def export_family(model_dir: str | Path, folder: BuildFolder, profile: ShapeProfile | None = None,
                  progress=print, loaded=None, quantized: dict | None = None,
                  precision: Precision = Precision.FP32, encoder_weights: str = "fp32") -> Manifest:
    """Every graph of a diffusers family checkpoint into the open build folder; returns the manifest (the
    caller commits it). Graphs whose input key did not change are reused. quantized: component -> calibrated
    module (quant.calibrate), exported as `precision` Q/DQ graphs; half precisions convert the refiner and DiT;
    encoder_weights int8 / int4 quantizes the LLM encoder graph's weights for ONNX Runtime."""
    from ..artifacts import atomic_write_bytes
    from ..export.export_build import export_component, graph_weights, tool_versions

    model_dir = Path(model_dir)
    family, pipe = loaded or load_pipeline(model_dir)
    profile = profile or ShapeProfile()
    tokenizer, encoder_fields = prompt_tokenizer(model_dir, pipe, family)
    patch = patch_size(pipe)
    specs = graph_specs(pipe, family, profile, encoder_fields["max_length"], patch)
    modules = graph_modules(pipe, family)
    quantized = quantized or {}
    precision = Precision(precision)
    samples = {}

    def sample(name: str) -> dict:  # traced inputs, computed only when a graph is not up to date
        if not samples:
            samples.update(sample_inputs(modules, tokenizer, specs))
        return samples[name]

    records = {}
    for name, spec in specs.items():
        records[name] = export_component(
            folder, name, spec, _input_key(model_dir, family, spec, name),
            quantized[name].module if name in quantized else modules[name], lambda name=name: sample(name),
            precision, quantized[name].key if name in quantized else None,
            precision.policy.half and name in ("refiner", "dit"), progress,
            weights=graph_weights(component(name), encoder_weights),
            ort_optimization=quantized[name].ort_optimization if name in quantized else None)
    source = _tokenizer_file(model_dir).read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    rel = f"tokenizers/llm_0-{digest[:16]}.json"
    if not (folder.path / rel).is_file() or file_sha256(folder.path / rel) != digest:
        atomic_write_bytes(folder.path / rel, source)
    side = default_side(pipe, family, profile)
    if side != family.side(pipe):
        progress(f"  default image side {side} px (the pipeline's {family.side(pipe)}, capped by --max-image "
                 f"or by the {rope_limit(pipe)} px the rotary tables cover)")
    previous = folder.previous.engines if folder.previous else {}
    return Manifest(
        format=FORMAT, model_name=f"{family.name}:{model_dir.name}", latent_channels=int(pipe.transformer.config.in_channels),
        vae_scale_factor=int(pipe.vae_scale_factor), patch_size=int(patch), default_height=side, default_width=side,
        scheduler=asdict(scheduler_config(pipe, family)),
        encoders=[EncoderRecord(rel, digest, prefix_length=0, prefix_cached=False, **encoder_fields)],
        components=records, tool_versions=tool_versions(),
        engines={n: e for n, e in previous.items() if n in records and e.onnx_sha256 == records[n].sha256},
        chain=chain_of(pipe, family))


def describe_checkpoint(model_dir: str | Path) -> dict:
    """Family, classes and parameter counts of a checked checkpoint folder, read from the safetensors headers
    (no weights loaded: cheap for a multi-GB checkpoint)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    index = read_index(model_dir)
    family = check_folder(model_dir, index)
    out = {"family": family.name, "pipeline": family.pipeline_class, "encoder": family.encoder_kind,
           "tapped_state": f"hidden_states[-{family.tap}]", "components": {}}
    for slot in WEIGHTED:
        params = 0
        for file in sorted((model_dir / slot).glob("*.safetensors")):
            try:
                with safe_open(str(build_file(model_dir, f"{slot}/{file.name}", "weights", INDEX,
                                              "restore the checkpoint")), "pt") as f:
                    params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
            except Exception as e:  # safetensors raises its own error type for a damaged header
                raise ArtifactError(f"{slot}/{file.name} is not a readable safetensors file "
                                    f"({str(e).splitlines()[0][:100]}); restore the checkpoint") from None
        out["components"][slot] = {"class": index[slot][1], "params": params}
    return out
