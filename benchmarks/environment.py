"""Hardware and version facts recorded with every benchmark result."""
from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path


PACKAGES = ("lidit-export", "lidit-runtime", "torch", "transformers", "diffusers", "onnx", "onnxruntime",
            "onnxruntime-gpu", "tokenizers", "numpy", "nvidia-modelopt", "tensorrt", "tensorrt-rtx", "nvidia-pytriton")


def versions() -> dict:
    """Installed versions of the packages that matter (works in a runtime-only venv without torch)."""
    import importlib.metadata as md

    found = {}
    for pkg in PACKAGES:
        try:
            found[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return found


def cpu_steal(seconds: float = 1.0) -> float | None:
    """Share of CPU time the hypervisor took from this VM over `seconds` (/proc/stat "steal"): on a shared
    cloud machine it slows every configuration of a run, and a run with much of it is worth repeating."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields[:8]), fields[7] if len(fields) > 7 else 0

    try:
        total0, steal0 = sample()
        time.sleep(seconds)
        total1, steal1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0


# The instruction sets that decide which kernels ONNX Runtime (MLAS) and PyTorch (oneDNN) pick: FP32 GEMMs run
# 256- or 512-bit wide, and INT8 GEMMs either multiply-add u8 x s8 pairs into int16 (AVX2 alone: faster than
# FP32 only by ~1.3x, and saturating on 127-level weights) or into int32 (VNNI: several times faster and exact).
# The "same" 2-core VM has come with either, so every result records which.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def describe_cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of ISA_FLAGS it has (Linux /proc/cpuinfo)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    cpu, flags = fields.get("model name") or platform.processor() or "", set(fields.get("flags", "").split())
    return cpu, [f for f in ISA_FLAGS if f in flags]


def isa_tag() -> str:
    """A short name for the CPU's widest kernels, for result file names: results from a VM that came with
    another CPU do not overwrite these."""
    _, isa = describe_cpu()
    if "avx512f" in isa:
        return "avx512-vnni" if "avx512_vnni" in isa else "avx512"
    return ("avx2-vnni" if "avx_vnni" in isa else "avx2") if "avx2" in isa else "cpu"


def describe_environment() -> dict:
    cpu, isa = describe_cpu()
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = {"name": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0))}
    except ImportError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cpu_isa": isa,
            "cpu_count": os.cpu_count(), "memory_gib": memory_gib, "gpu": gpu, "versions": versions(),
            "load_average_1m": os.getloadavg()[0], "cpu_steal": cpu_steal()}


def percentiles(samples: list[float]) -> dict:
    import numpy as np

    a = np.asarray(samples) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "repetitions": len(samples)}


STAGES = ("encode", "refine", "denoise", "decode", "total")


def build_folder(builds: str | Path, model: str, precision: str, encoder_weights: str = "fp32",
                 int8_kernels: str = "qdq") -> Path:
    """Where the benchmarks keep a model's build of one precision, encoder weight format and INT8 kernel kind
    (shared, so that one benchmark reuses what another built)."""
    return Path(builds) / (f"{model}-{precision}" + (f"-{int8_kernels}" if int8_kernels != "qdq" else "")
                           + (f"-encoder-{encoder_weights}" if encoder_weights != "fp32" else ""))


def artifact_bytes(build: Path, manifest) -> dict:
    """Bytes on disk of each component's graph, its external data included."""
    return {n: (build / r.file).stat().st_size + ((build / r.data_file).stat().st_size if r.data_file else 0)
            for n, r in manifest.components.items()}


def interleaved(runs: dict, images: int, warmup: int = 2) -> dict:
    """Per-stage percentiles of each setting: runs maps a name to `seed -> timings`; images are drawn in turn,
    alternating which setting goes first, so that machine load hits every setting alike."""
    for run in runs.values():
        for seed in range(warmup):
            run(seed)
    samples = {name: [] for name in runs}
    for i in range(images):
        for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            samples[name].append(runs[name](i))
    return {name: {"stages": {s: percentiles([t[s] for t in timings]) for s in STAGES}}
            for name, timings in samples.items()}


def stage_plot(rows: dict, title: str) -> bytes:
    from lidit_export.toy.plots import stacked_bars

    return stacked_bars({name: {stage: row["stages"][stage]["p50_ms"] for stage in STAGES[:-1]}
                         for name, row in rows.items()}, title, "ms")
