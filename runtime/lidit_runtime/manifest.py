"""BUILD/manifest.json: everything the runtime needs to chain the exported graphs.

Written by `lidit-export export` (and later stages); read here without torch or transformers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArtifactError
from .sampler import SchedulerConfig

FORMAT = "lidit-build/1"
MANIFEST = "manifest.json"
TENSORRT_MODULES = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}  # engine target -> the package that runs it


def compute_capability(cupy_device) -> str:
    """"major.minor" of a CuPy device, whose compute_capability is digits only ("89" -> "8.9", "120" -> "12.0")."""
    digits = str(cupy_device.compute_capability)
    return f"{digits[:-1]}.{digits[-1]}"


@dataclass
class EncoderRecord:
    tokenizer_file: str  # relative to the build folder
    prefix_text: str
    suffix_text: str
    caption_separator: str
    max_length: int
    pad_token_id: int
    prefix_length: int
    prefix_cached: bool = False  # the encoder graph holds the prefix states and takes caption tokens only

    def encoder_inputs(self, input_ids, attention_mask) -> dict:
        """Feeds of this LLM's encoder graph for full-prompt tokens (drops the prefix when it is baked in)."""
        if self.prefix_cached:
            input_ids, attention_mask = input_ids[:, self.prefix_length:], attention_mask[:, self.prefix_length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class ComponentRecord:
    name: str
    file: str  # relative to the build folder
    sha256: str
    precision: str
    inputs: list  # [{"name", "dtype", "shape"}]
    outputs: list
    dims: dict  # symbolic dim -> [min, opt, max]
    derived_dims: dict = field(default_factory=dict)
    input_key: str = ""  # hash of everything the artifact was made from; equal key = up to date
    validated_shapes: list = field(default_factory=list)
    ort_optimization: str = "all"  # "basic" for Q/DQ graphs (CPU INT8 is inexact at higher levels)


@dataclass
class EngineRecord:
    """A TensorRT engine built from one component's graph; `key` hashes everything it was built from."""

    name: str
    file: str  # relative to the build folder
    sha256: str
    key: str
    target: str  # trt | trt-rtx
    tensorrt_version: str
    compute_capability: str  # "8.9"
    precision: str
    onnx_sha256: str
    dims: dict  # the optimization profile: dim -> [min, opt, max]
    refit: bool = False
    stripped: bool = False


@dataclass
class Manifest:
    format: str
    model_name: str
    latent_channels: int
    vae_scale_factor: int
    patch_size: int
    default_height: int
    default_width: int
    scheduler: dict
    encoders: list[EncoderRecord]
    components: dict[str, ComponentRecord]
    tool_versions: dict = field(default_factory=dict)
    engines: dict[str, EngineRecord] = field(default_factory=dict)

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig.from_dict(self.scheduler)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def load_manifest(build_dir: str | Path, verify: bool = False, check_files: bool = True) -> Manifest:
    """Read and validate BUILD/manifest.json. verify: also compare every file with its sha256.
    check_files=False reads the records even when files are missing (how a resumed build sees them)."""
    build_dir = Path(build_dir)
    path = build_dir / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path} not found; create the build with `lidit-export export --model DIR --out {build_dir}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); re-run `lidit-export export`") from None
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {data.get('format')!r}, this runtime reads {FORMAT!r}; "
                            "rebuild with the matching lidit-export version")
    try:
        data["encoders"] = [EncoderRecord(**e) for e in data["encoders"]]
        data["components"] = {k: ComponentRecord(**c) for k, c in data["components"].items()}
        data["engines"] = {k: EngineRecord(**e) for k, e in data.get("engines", {}).items()}
        manifest = Manifest(**data)
    except TypeError as e:
        raise ArtifactError(f"{path} does not match the manifest schema ({e}); re-run `lidit-export export`") from None
    for record in manifest.components.values() if check_files else ():
        file = build_dir / record.file
        if not file.exists():
            raise ArtifactError(f"{file} listed in the manifest is missing; re-run `lidit-export export`")
        if verify and file_sha256(file) != record.sha256:
            raise ArtifactError(f"{file} does not match its manifest hash (modified or truncated); "
                                "re-run `lidit-export export` to rebuild it")
    return manifest


def check_engines(manifest: Manifest, build_dir: str | Path, target: str, version: str,
                  compute_capability: str | None) -> None:
    """Refuse engines the running TensorRT / GPU cannot load, with the command that rebuilds them."""
    build_dir = Path(build_dir)
    if not manifest.engines:
        raise ArtifactError(f"{build_dir} has no TensorRT engines; build them with `lidit-export build --model DIR "
                            f"--out {build_dir} --target {target}` (or run it with --backend onnxruntime)")
    for rec in manifest.engines.values():
        rebuild = (f"rebuild with `lidit-export build --model DIR --out {build_dir} --precision {rec.precision} "
                   f"--target {target}`")
        if (rec.target, rec.tensorrt_version) != (target, version):
            raise ArtifactError(f"engine {rec.file} was built by {rec.target} {rec.tensorrt_version}, this is {target} "
                                f"{version}; {rebuild}")
        if compute_capability is not None and rec.compute_capability != compute_capability:
            raise ArtifactError(f"engine {rec.file} was built for compute capability {rec.compute_capability}, this GPU "
                                f"is {compute_capability}; {rebuild}")
        file = build_dir / rec.file
        if not file.exists():
            raise ArtifactError(f"engine {file} is missing; {rebuild}")
        if file_sha256(file) != rec.sha256:
            raise ArtifactError(f"engine {file} does not match its manifest hash (modified or truncated); {rebuild}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
