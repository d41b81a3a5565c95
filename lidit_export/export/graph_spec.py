"""One description per exported graph: I/O names, dtypes, symbolic dims and their shape ranges.

The exporter, the manifest, the runtime backends, the parity ladder (and later the TensorRT profiles)
all read these specs instead of repeating shapes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import PipelineConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints or symbolic dim names


@dataclass
class GraphSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dims: dict[str, tuple[int, int, int]]  # symbolic dim -> (min, opt, max)
    derived_dims: dict[str, str] = field(default_factory=dict)  # e.g. image_height = 8 * latent_height

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}


@dataclass
class ShapeProfile:
    """Shape ranges every graph must accept; min/opt/max feed TensorRT profiles later."""

    max_batch: int = 4  # prompts per call; CFG doubles it
    min_image: int = 64
    max_image: int | None = None  # default: 2x the model's default resolution
    opt_text_tokens: int = 64  # caption tokens of a typical prompt

    def validate(self) -> "ShapeProfile":
        for name in ("max_batch", "min_image", "max_image", "opt_text_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be an integer >= 1", name)
        return self


def refiner_input_names(index: int) -> tuple[str, str, str]:
    return f"hidden_{index}", f"attention_mask_{index}", f"pooled_{index}"


@dataclass(frozen=True)
class Ranges:
    """The [min, opt, max] ranges every graph's dims are derived from."""

    batch: tuple[int, int, int]  # rows per call: CFG doubles the prompts
    latent: tuple[int, int, int]  # latent cells per side
    text: dict  # text_len_<i> -> range, prefix included
    context: tuple[int, int, int]  # refined tokens (prefixes dropped, branches concatenated)


def shape_ranges(config: PipelineConfig, profile: ShapeProfile | None = None) -> Ranges:
    profile = (profile or ShapeProfile()).validate()
    f = config.vae.scale_factor
    max_image = profile.max_image or 2 * max(config.default_height, config.default_width)
    opt_image = max(config.default_height, config.default_width)
    latent = (max(profile.min_image // f, config.transformer.patch_size), opt_image // f, max_image // f)
    if not latent[0] <= latent[1] <= latent[2]:
        raise ConfigError(f"max_image={max_image} is below the model's default side {opt_image} (or the smallest, "
                          f"{profile.min_image}); use {opt_image} or more", "max_image")
    text, context = {}, [0, 0, 0]
    for i, enc in enumerate(config.encoders):
        prefix = config.refiner.prefix_lengths[i]
        suffix_min = 1  # at least one caption-or-suffix token follows the prefix
        dim = (prefix + suffix_min, min(prefix + profile.opt_text_tokens, enc.max_length), enc.max_length)
        text[f"text_len_{i}"] = dim
        context = [c + d - prefix for c, d in zip(context, dim)]
    return Ranges((1, 2, 2 * profile.max_batch), latent, text, tuple(context))


def encoder_spec(config: PipelineConfig, ranges: Ranges, prefix_cache: bool, index: int) -> GraphSpec:
    """LLM `index` up to the tapped block. prefix_cache: it takes caption(+suffix) tokens only and holds the
    prefix states."""
    enc, prefix = config.encoders[index], config.refiner.prefix_lengths[index]
    text, caption = f"text_len_{index}", f"caption_len_{index}"
    dim = ranges.text[text]
    token_dim = caption if prefix_cache else text
    return GraphSpec(
        f"encoder_{index}",
        [TensorSpec("input_ids", "int64", ("batch", token_dim)),
         TensorSpec("attention_mask", "int64", ("batch", token_dim))],
        [TensorSpec("hidden", "float32", ("batch", text, enc.hidden_size)),
         TensorSpec("pooled", "float32", ("batch", enc.hidden_size))],
        {"batch": ranges.batch, token_dim: tuple(d - prefix for d in dim) if prefix_cache else dim},
        {text: f"{caption} + {prefix}"} if prefix_cache else {})


def refiner_spec(config: PipelineConfig, ranges: Ranges, prefix_cache: bool) -> GraphSpec:
    inputs = [TensorSpec("timestep", "float32", ("batch",))]
    for i, enc in enumerate(config.encoders):
        h, m, p = refiner_input_names(i)
        inputs += [TensorSpec(h, "float32", ("batch", f"text_len_{i}", enc.hidden_size)),
                   TensorSpec(m, "int64", ("batch", f"text_len_{i}")),
                   TensorSpec(p, "float32", ("batch", enc.hidden_size))]
    return GraphSpec(
        "refiner", inputs,
        [TensorSpec("context", "float32", ("batch", "context_len", config.refiner.width)),
         TensorSpec("context_mask", "int64", ("batch", "context_len"))],
        {"batch": ranges.batch, **ranges.text},
        {"context_len": " + ".join(f"(text_len_{i} - {config.refiner.prefix_lengths[i]})"
                                   for i in range(len(config.encoders)))})


def dit_spec(config: PipelineConfig, ranges: Ranges, prefix_cache: bool) -> GraphSpec:
    C, D = config.vae.latent_channels, config.refiner.width
    return GraphSpec(
        "dit",
        [TensorSpec("latents", "float32", ("batch", C, "latent_height", "latent_width")),
         TensorSpec("timestep", "float32", ("batch",)),
         TensorSpec("context", "float32", ("batch", "context_len", D)),
         TensorSpec("context_mask", "int64", ("batch", "context_len")),
         TensorSpec("pooled", "float32", ("batch", config.transformer.pooled_dim))],
        [TensorSpec("model_out", "float32", ("batch", C, "latent_height", "latent_width"))],
        {"batch": ranges.batch, "context_len": ranges.context, "latent_height": ranges.latent,
         "latent_width": ranges.latent},
        {"latent_height": f"multiple of {config.transformer.patch_size}",
         "latent_width": f"multiple of {config.transformer.patch_size}"})


def vae_decoder_spec(config: PipelineConfig, ranges: Ranges, prefix_cache: bool) -> GraphSpec:
    C, f = config.vae.latent_channels, config.vae.scale_factor
    return GraphSpec(
        "vae_decoder",
        [TensorSpec("latents", "float32", ("batch", C, "latent_height", "latent_width"))],
        [TensorSpec("image", "float32", ("batch", 3, "image_height", "image_width"))],
        {"batch": (1, 1, ranges.batch[2] // 2), "latent_height": ranges.latent, "latent_width": ranges.latent},
        {"image_height": f"{f} * latent_height", "image_width": f"{f} * latent_width"})


def graph_specs(config: PipelineConfig, profile: ShapeProfile | None = None,
                prefix_cache: bool = False) -> dict[str, GraphSpec]:
    """Every component's spec, in the component table's order."""
    from ..components import components

    ranges = shape_ranges(config, profile)
    return {c.name: c.spec(config, ranges, prefix_cache) for c in components(config)}
