"""BUILD/manifest.json: everything the runtime needs to chain the exported graphs.

Written by `lidit-export export` (and later stages); read here without torch or transformers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .chain import ChainRecord
from .errors import ArtifactError, ConfigError
from .precision import BLOCK_WEIGHTS
from .sampler import SchedulerConfig
from .schema import from_dict

FORMAT = "lidit-build/2"  # 2: tokenizers and external data hashed; artifact file names carry their key
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
ORT_LEVELS = ("disable", "basic", "extended", "all")  # ONNX Runtime graph optimization levels
REQUIRED_DIMS = {"dit": ("batch", "latent_height", "latent_width"), "vae_decoder": ("batch",)}  # RequestLimits
TENSORRT_MODULES = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}  # engine target -> the package that runs it


def compute_capability(cupy_device) -> str:
    """"major.minor" of a CuPy device, whose compute_capability is digits only ("89" -> "8.9", "120" -> "12.0")."""
    digits = str(cupy_device.compute_capability)
    return f"{digits[:-1]}.{digits[-1]}"


@dataclass
class EncoderRecord:
    tokenizer_file: str  # relative to the build folder
    tokenizer_sha256: str
    prefix_text: str
    suffix_text: str
    caption_separator: str
    max_length: int
    pad_token_id: int
    prefix_length: int
    prefix_cached: bool = False  # the encoder graph holds the prefix states and takes caption tokens only
    whole_text: bool = False  # prefix + caption + suffix tokenized as one text, special tokens and truncation
    # the tokenizer's own (a diffusers pipeline's call); False: the three pieces tokenized apart and joined
    negative_prefix_text: str | None = None  # the negative prompt's own prefix (None: the same as prefix_text)

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
    ort_optimization: str = "all"  # "basic" for Q/DQ graphs (CPU INT8 is inexact at higher levels)
    data_file: str | None = None  # the graph's external weights (graphs past 1.8 GB), relative to the build folder
    data_sha256: str | None = None
    weights: str | None = None  # "int8" / "int4": block-quantized weights for ONNX Runtime (no TensorRT engine)


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
    chain: ChainRecord = field(default_factory=ChainRecord)  # how the graphs chain (default: LI-DiT's rules)

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig.from_dict(self.scheduler)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def build_file(build_dir: str | Path, rel: str, what: str, named_in: str = MANIFEST,
               fix: str = "rebuild with `lidit-export build`") -> Path:
    """The file `rel` names inside folder `build_dir`, refused unless it is a regular file there.

    Nothing is opened: the path is checked as written (relative, no `..`), then resolved (symbolic links
    followed) and checked again, then stat'ed, so a FIFO or device file is refused before any read.
    named_in / fix word the messages for other folders (a model folder's index)."""
    root = Path(build_dir).resolve()
    parts = PurePosixPath(rel).parts
    if not rel or "\\" in rel or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ArtifactError(f"{what} path {rel!r} in {named_in} is not a path inside {build_dir}; it was edited or made "
                            f"by another tool: {fix}")
    path = (root / rel).resolve()
    if root not in path.parents:
        raise ArtifactError(f"{what} {rel} resolves outside {build_dir} (to {path}); refusing to read it: replace the "
                            f"link with the file itself or {fix}")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ArtifactError(f"{what} {rel} is missing (named in {named_in}, looked for in {build_dir}); {fix}") from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{what} {rel} is not a regular file (a folder, FIFO or device); refusing to read it: {fix}")
    return path


def named_files(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(what, relative path, sha256) of every file the manifest names: graphs, their external data,
    tokenizers and engines."""
    files = [(f"tokenizer of encoder {i}", e.tokenizer_file, e.tokenizer_sha256) for i, e in enumerate(manifest.encoders)]
    for name, rec in manifest.components.items():
        files.append((f"graph {name}", rec.file, rec.sha256))
        if rec.data_file is not None:
            files.append((f"external data of graph {name}", rec.data_file, rec.data_sha256 or ""))
    files += [(f"engine {name}", rec.file, rec.sha256) for name, rec in manifest.engines.items()]
    return files


def verify_files(manifest: Manifest, build_dir: str | Path, hashes: bool = True) -> None:
    """Every named file is a regular file inside the build folder and (hashes) matches its sha256.
    Runs before any backend is imported, so a damaged engine is reported on a machine without TensorRT."""
    files = named_files(manifest)
    for what, rel, digest in files:
        path = build_file(build_dir, rel, what)
        if hashes and file_sha256(path) != digest:
            raise ArtifactError(f"{what} {rel} does not match its manifest hash (modified or truncated); "
                                "rebuild it with `lidit-export build` (or `lidit-export export`)")
    _refuse_links_out(Path(build_dir), {str(PurePosixPath(rel).parent) for _, rel, _ in files})


def _refuse_links_out(build_dir: Path, folders: set[str]) -> None:
    """A graph may read external data beside it by a name inside the graph itself: a link there that
    leads out of the build folder is refused too."""
    root = build_dir.resolve()
    for folder in sorted(folders):
        for entry in (root / folder).iterdir():
            if entry.is_symlink() and root not in entry.resolve().parents:
                raise ArtifactError(f"{folder}/{entry.name} is a link out of the build folder (to {entry.resolve()}); "
                                    "remove it or rebuild with `lidit-export build`")


def _read_manifest_data(build_dir: Path) -> dict:
    path = build_dir / MANIFEST
    if not build_dir.is_dir():
        raise ArtifactError(f"build folder {build_dir} not found (or not a folder); create it with "
                            f"`lidit-export export --model DIR --out {build_dir}`")
    if not path.exists():
        raise ArtifactError(f"{path} not found; create the build with `lidit-export export --model DIR --out {build_dir}`")
    build_file(build_dir, MANIFEST, "manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {path.stat().st_size} bytes, over the {MAX_MANIFEST_BYTES} a manifest may have; "
                            "it is not a lidit build manifest: rebuild with `lidit-export build`")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); rebuild with `lidit-export build`") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds a JSON {type(data).__name__}, not an object; rebuild with `lidit-export build`")
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {data.get('format')!r}, this runtime reads {FORMAT!r}; "
                            "rebuild with the matching lidit-export version")
    return data


def load_manifest(build_dir: str | Path, verify: bool = False, check_files: bool = True) -> Manifest:
    """Read and validate BUILD/manifest.json against the schema (types, ranges, the components the chain
    needs, paths inside the build folder). check_files: every named file exists as a regular file there;
    verify: and matches its sha256. check_files=False reads the records alone (how a resumed build sees them)."""
    build_dir = Path(build_dir)
    data = _read_manifest_data(build_dir)
    manifest = from_dict(Manifest, data, "manifest", _SchemaError)  # _SchemaError: an ArtifactError
    check_manifest(manifest)
    if check_files:
        verify_files(manifest, build_dir, hashes=verify)
    return manifest


class _SchemaError(ArtifactError):
    def __init__(self, message: str):
        super().__init__(f"{MANIFEST}: {message}; the build is damaged or from another tool: rebuild with "
                         "`lidit-export build`")


def check_manifest(m: Manifest) -> None:
    """What the types alone do not say: sizes >= 1, the components the chain runs, consistent records."""
    bad = _SchemaError
    for name in ("latent_channels", "vae_scale_factor", "patch_size", "default_height", "default_width"):
        if getattr(m, name) < 1:
            raise bad(f"{name}={getattr(m, name)} must be >= 1")
    step = m.vae_scale_factor * m.patch_size
    if m.default_height % step or m.default_width % step:
        raise bad(f"default size {m.default_height}x{m.default_width} is not a multiple of {step}")
    try:
        SchedulerConfig.from_dict(m.scheduler)
    except ConfigError as e:
        raise bad(str(e)) from None
    if not m.encoders:
        raise bad("encoders is empty; at least one LLM encoder is needed")
    for i, e in enumerate(m.encoders):
        if e.max_length < 2 or not 0 <= e.prefix_length < e.max_length or e.pad_token_id < 0:
            raise bad(f"encoders[{i}]: max_length {e.max_length}, prefix_length {e.prefix_length} and pad_token_id "
                      f"{e.pad_token_id} must satisfy 0 <= prefix_length < max_length and pad_token_id >= 0")
        _check_digest(e.tokenizer_sha256, f"encoders[{i}].tokenizer_sha256")
        if e.prefix_cached and (e.whole_text or e.negative_prefix_text is not None):
            raise bad(f"encoders[{i}]: a cached prefix needs the prefix tokenized apart and shared by every prompt")
    try:
        m.chain.validate()
    except ConfigError as e:
        raise bad(str(e)) from None
    expected = {f"encoder_{i}" for i in range(len(m.encoders))} | {"refiner", "dit", "vae_decoder"}
    if set(m.components) != expected:
        raise bad(f"components {sorted(m.components)} must be exactly {sorted(expected)}")
    for key, rec in m.components.items():
        where = f"components.{key}"
        if rec.name != key:
            raise bad(f"{where}.name is {rec.name!r}")
        _check_digest(rec.sha256, f"{where}.sha256")
        if (rec.data_file is None) != (rec.data_sha256 is None):
            raise bad(f"{where}: data_file and data_sha256 go together")
        if rec.data_sha256 is not None:
            _check_digest(rec.data_sha256, f"{where}.data_sha256")
        if rec.weights is not None and rec.weights not in BLOCK_WEIGHTS:
            raise bad(f"{where}.weights={rec.weights!r} is not one of {BLOCK_WEIGHTS}")
        if rec.ort_optimization not in ORT_LEVELS:
            raise bad(f"{where}.ort_optimization={rec.ort_optimization!r} is not one of {ORT_LEVELS}")
        missing = sorted(set(REQUIRED_DIMS.get(key, ())) - set(rec.dims))
        if missing:
            raise bad(f"{where}.dims lacks {missing}; the runtime sizes requests by them")
        for dim, value in rec.dims.items():
            if (not isinstance(value, list) or len(value) != 3 or not all(type(v) is int for v in value)
                    or not 1 <= value[0] <= value[1] <= value[2]):
                raise bad(f"{where}.dims.{dim}={value!r} must be [min, opt, max] with 1 <= min <= opt <= max")
        for side in ("inputs", "outputs"):
            for j, t in enumerate(getattr(rec, side)):
                if (not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("dtype"), str)
                        or not isinstance(t.get("shape"), list)):
                    raise bad(f"{where}.{side}[{j}] must be an object with name, dtype and shape")
    for key, rec in m.engines.items():
        if key not in m.components:
            raise bad(f"engines.{key} names no component")
        _check_digest(rec.sha256, f"engines.{key}.sha256")
        if rec.onnx_sha256 != m.components[key].sha256:
            raise bad(f"engines.{key} was built from another graph than components.{key}")


def _check_digest(value: str, where: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise _SchemaError(f"{where} is not a sha256 hex digest")


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
        file = build_file(build_dir, rec.file, f"engine {rec.name}")
        if file_sha256(file) != rec.sha256:
            raise ArtifactError(f"engine {file} does not match its manifest hash (modified or truncated); {rebuild}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
