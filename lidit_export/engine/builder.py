"""TensorRT engines from the exported graphs, over full TensorRT (`tensorrt`: data centre, Jetson) or
TensorRT for RTX (`tensorrt_rtx`: RTX PCs; builds ahead of time on a CPU).

One engine per component, strongly typed (the graph's own types and Q/DQ decide the precision), one
optimization profile per component from the manifest's [min, opt, max] dims (overridable per component),
builder optimization level, workspace limit, timing cache (full TensorRT; a no-op in TensorRT for RTX),
optional refit / weight stripping. An engine is rebuilt only when its key changes: ONNX hash, precision,
profile, target, TensorRT version, compute capability and builder options.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lidit_runtime.dependencies import MissingDependency, install_hint, require
from lidit_runtime.manifest import TENSORRT_MODULES, EngineRecord, Manifest, compute_capability, file_sha256
from lidit_runtime.precision import Precision

from ..artifacts import atomic_write_bytes
from ..build_folder import BuildFolder
from ..errors import ArtifactError, ConfigError

TARGETS = TENSORRT_MODULES  # the runtime loads engines through the same table
# What a GPU too old for a precision is called, and what to build for it instead.
TOO_OLD = {Precision.FP8: ("Ada, Hopper, Blackwell", "int8 (or fp16/fp32)"), Precision.BF16: ("Ampere and later", "fp16")}
RTX_CC = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")  # what TensorRT for RTX 1.x can target


class EngineUnavailable(MissingDependency):
    """No TensorRT of the asked kind is installed."""


class EngineRefused(ConfigError):
    """The target cannot run this precision (FP8 below sm89, INT8 activations on TensorRT for RTX)."""


@dataclass
class EngineOptions:
    target: str = "auto"  # trt | trt-rtx | auto (full TensorRT first, then TensorRT for RTX)
    opt_level: int = 3  # builder optimization level 0-5
    workspace_gib: float = 4.0
    compute_capability: str | None = None  # e.g. "8.9"; default: the GPU present, else 8.9 for trt-rtx
    profiles: dict = field(default_factory=dict)  # component -> dim -> [min, opt, max], over the manifest's
    refit: bool = False
    strip_weights: bool = False  # with refit: a weightless plan, refitted from the ONNX weights at load

    def validate(self) -> "EngineOptions":
        if self.target not in ("auto", *TARGETS):
            raise ConfigError(f"target {self.target!r} is unknown; use trt, trt-rtx or auto", "target")
        if not 0 <= self.opt_level <= 5:
            raise ConfigError(f"opt_level={self.opt_level} must be between 0 and 5", "opt_level")
        if not 0 < self.workspace_gib <= 1024:
            raise ConfigError(f"workspace_gib={self.workspace_gib} must be > 0 and <= 1024", "workspace_gib")
        cc = self.compute_capability
        if cc is not None and not (cc.count(".") == 1 and all(p.isdigit() for p in cc.split("."))):
            raise ConfigError(f"compute_capability={cc!r} must read MAJOR.MINOR, e.g. 8.9", "compute_capability")
        if self.strip_weights and not self.refit:
            raise ConfigError("strip_weights needs refit (a stripped engine is refitted when loaded)", "strip_weights")
        return self


@dataclass(frozen=True)
class Target:
    name: str  # trt | trt-rtx
    module: object
    version: str


def load_target(target: str) -> Target:
    """The TensorRT package for `target` ("auto": whichever is installed, full TensorRT first)."""
    names = list(TARGETS) if target == "auto" else [target]
    for name in names:
        try:
            module = require(TARGETS[name], "engines")
        except MissingDependency:
            continue
        return Target(name, module, module.__version__)
    wanted = " or ".join(install_hint(TARGETS[n]) for n in names)
    raise EngineUnavailable(f"no TensorRT installed: install {wanted} to build engines")


def gpu_compute_capability() -> str | None:
    """"major.minor" of GPU 0, or None without a GPU (asked through cuda-python or cupy, not torch)."""
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        return f"{props.major}.{props.minor}" if int(err) == 0 else None
    except Exception:  # no cuda-python, no driver or no device
        pass
    try:
        import cupy

        return compute_capability(cupy.cuda.Device(0))
    except Exception:
        return None


def resolve_compute_capability(target: Target, options: EngineOptions) -> str:
    cc = options.compute_capability or gpu_compute_capability()
    if cc is None:
        if target.name == "trt":
            raise ConfigError("full TensorRT builds on the GPU it targets and none was found; build on the target "
                              "machine, or use --target trt-rtx to build RTX engines on a CPU")
        cc = "8.9"
    if target.name == "trt-rtx" and cc not in RTX_CC:
        raise ConfigError(f"TensorRT for RTX cannot target compute capability {cc} (it supports {', '.join(RTX_CC)}; "
                          "not 9.0 Hopper): use --target trt there")
    return cc


def precision_flag(component: str) -> str:
    """The build option that sets a component's precision: --encoder-weights for the LLM encoders."""
    return "--encoder-weights" if component.startswith("encoder_") else "--precision"


def check_precision(precision: Precision, target: Target, cc: str, flag: str = "--precision") -> None:
    """Refuse a precision the target cannot run; `flag` is the option that set it (an encoder's is
    --encoder-weights)."""
    precision = Precision(precision)
    policy = precision.policy
    needed = policy.min_compute_capability
    if needed is not None and tuple(int(x) for x in cc.split(".")) < needed:
        gpus, instead = TOO_OLD[precision]
        raise EngineRefused(f"{precision.value.upper()} needs a GPU of compute capability {needed[0]}.{needed[1]} or "
                            f"newer ({gpus}); the target is {cc}: use {flag} {instead} for this GPU")
    if policy.int8_activations and target.name == "trt-rtx":
        raise EngineRefused("TensorRT for RTX runs INT8 only as weight-only quantization, not SmoothQuant's INT8 "
                          "activations: use --precision int8-wo (INT8 weights, FP16/FP32 activations) or fp8")


def component_profile(record, overrides: dict) -> dict:
    """dim -> [min, opt, max] for one component: the manifest's, with this component's overrides."""
    dims = {k: list(v) for k, v in record.dims.items()}
    for dim, value in overrides.get(record.name, {}).items():
        if dim not in dims:
            raise ConfigError(f"--profile {record.name}.{dim}: {record.name} has no dim {dim!r}; its dims are "
                              f"{sorted(dims)}")
        lo, opt, hi = value
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"--profile {record.name}.{dim}={lo},{opt},{hi} must satisfy 1 <= min <= opt <= max")
        dims[dim] = [lo, opt, hi]
    return dims


def input_shapes(record, dims: dict) -> dict[str, list[list[int]]]:
    """input name -> [min shape, opt shape, max shape]."""
    return {i["name"]: [[d if isinstance(d, int) else dims[d][k] for d in i["shape"]] for k in range(3)]
            for i in record.inputs}


def engine_key(record, precision: str, dims: dict, target: Target, cc: str, options: EngineOptions) -> str:
    fields = {"onnx": record.sha256, "precision": precision, "dims": dims, "target": target.name,
              "version": target.version, "cc": cc, "opt_level": options.opt_level,
              "workspace_gib": options.workspace_gib, "refit": options.refit, "strip": options.strip_weights}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _cc_enum(trt, cc: str):
    return getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""))


def build_one(target: Target, onnx_file: Path, shapes: dict, cc: str, options: EngineOptions,
              timing_cache: Path | None) -> bytes:
    trt = target.module
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT {target.version} cannot parse {onnx_file.name}: {errors[:300]}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.opt_level
    if options.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if options.strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
    if target.name == "trt-rtx":  # ahead-of-time for one named GPU generation, on any machine
        config.num_compute_capabilities = 1
        config.set_compute_capability(_cc_enum(trt, cc), 0)
    cache = None
    if target.name == "trt" and timing_cache is not None:  # TensorRT for RTX has no timing cache
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ArtifactError(f"TensorRT {target.version} failed to build an engine from {onnx_file.name} (see the "
                            "builder log above); try --opt-level 0 or a smaller --profile")
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def build_engines(folder: BuildFolder, manifest: Manifest, options: EngineOptions, progress=print) -> dict:
    """Build (or reuse) one engine per component into an open BuildFolder; returns the new manifest.engines
    and a per-engine report. Engines are named after their key, so those of the build in place stay."""
    options.validate()
    build_dir = folder.path
    target = load_target(options.target)
    cc = resolve_compute_capability(target, options)
    for name, record in manifest.components.items():
        check_precision(record.precision, target, cc, precision_flag(name))
    ort_only = sorted(n for n, r in manifest.components.items() if r.weights)
    if ort_only:
        raise EngineRefused(f"{', '.join(ort_only)} hold {manifest.components[ort_only[0]].weights} weights in ONNX "
                            "Runtime's MatMulNBits form, which TensorRT cannot parse: build engines with "
                            "--encoder-weights fp32, or --target none for ONNX Runtime alone")
    engines, report = {}, {}
    timing_cache = build_dir / "engines" / f"timing-{target.name}-{target.version}.cache"
    for name, record in manifest.components.items():
        dims = component_profile(record, options.profiles)
        key = engine_key(record, record.precision, dims, target, cc, options)
        old = folder.reusable_engine(name, key)
        file = build_dir / "engines" / f"{name}-{key[:16]}.{target.name}.engine"
        if old is not None:
            engines[name] = old
            report[name] = {"reused": True, "seconds": 0.0, "bytes": (build_dir / old.file).stat().st_size}
            continue
        progress(f"  {name} ({record.precision}): building a {target.name} {target.version} engine for sm{cc} ...")
        t0 = time.perf_counter()
        try:
            plan = build_one(target, build_dir / record.file, input_shapes(record, dims), cc, options, timing_cache)
        except ArtifactError as e:
            if Precision(record.precision).policy.half:
                # TensorRT for RTX 1.7 fails inside Myelin on half attention with a head size of 12 (16 and 64 build)
                raise ArtifactError(f"{e}; or build this {record.precision} graph in FP32 ({precision_flag(name)} "
                                    "fp32): some half attention shapes (head size 12, for one) fail inside TensorRT") from None
            raise
        atomic_write_bytes(file, plan)
        seconds = time.perf_counter() - t0
        engines[name] = EngineRecord(name=name, file=str(file.relative_to(build_dir)), sha256=file_sha256(file),
                                     key=key, target=target.name, tensorrt_version=target.version,
                                     compute_capability=cc, precision=record.precision, onnx_sha256=record.sha256,
                                     dims=dims, refit=options.refit, stripped=options.strip_weights)
        folder.add_engine(engines[name])
        report[name] = {"reused": False, "seconds": seconds, "bytes": len(plan)}
    return {"engines": engines, "report": report,
            "target": {"target": target.name, "tensorrt_version": target.version, "compute_capability": cc}}

