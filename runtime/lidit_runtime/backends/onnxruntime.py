"""ONNX Runtime backend: one session per graph; outputs land in buffers reused across steps.

Safe to call from many threads: ONNX Runtime sessions are, and the reused output buffers are kept per
thread, so concurrent requests never write into each other's arrays.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..manifest import ORT_LEVELS, Manifest, build_file
from ..precision import Precision
from .base import GraphStages
from .bf16_emulation import emulated_session

_LEVELS = dict(zip(ORT_LEVELS, ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")))


class OnnxRuntimeBackend(GraphStages):
    name = "onnxruntime"
    thread_safe = True

    def __init__(self, build_dir: str | Path, manifest: Manifest, providers: Sequence[str] | None = None,
                 optimization: str | None = None, threads: int | None = None, spinning: bool = False):
        """threads: intra-op threads per session (None: ONNX Runtime's choice). spinning: let worker threads
        busy-wait for work after each run. Off by default: the refiner and DiT sessions alternate every step,
        and threads still spinning for one session take the cores the other needs
        (benchmarks/results/ort_spinning_mini_cpu.json)."""
        import onnxruntime as ort

        self._ort = ort
        self.providers = list(providers or ["CPUExecutionProvider"])
        missing = sorted(set(self.providers) - set(ort.get_available_providers()))
        if missing:
            raise ConfigError(f"execution provider {', '.join(missing)} is not in this ONNX Runtime (it has "
                              f"{', '.join(ort.get_available_providers())}); install the ONNX Runtime build that has it")
        if optimization is not None and optimization not in _LEVELS:
            raise ConfigError(f"optimization={optimization!r} is unknown; use one of {', '.join(_LEVELS)}")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise ConfigError(f"threads={threads!r} must be an integer >= 0 (0: ONNX Runtime decides)", "threads")
        if not isinstance(spinning, bool):
            raise ConfigError(f"spinning={spinning!r} must be true or false", "spinning")
        self.spinning = spinning
        self.sessions = {}
        self.emulated_bf16: list[str] = []  # BF16 graphs this provider has no kernels for (see bf16_emulation)
        self.levels: dict[str, str] = {}  # the ONNX Runtime level each graph runs at
        for name, record in manifest.components.items():
            options = ort.SessionOptions()
            level = optimization or record.ort_optimization
            if optimization is None and self._fused_int8_exact(record):
                level = "all"  # this CPU's fused INT8 GEMMs give the graph's own numbers (backends/int8_probe.py)
            self.levels[name] = level
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
            if threads:
                options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            file = build_file(build_dir, record.file, f"graph {name}")
            try:
                self.sessions[name] = ort.InferenceSession(str(file), options, providers=self.providers)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                if record.precision != Precision.BF16 or "NOT_IMPLEMENTED" not in str(e):
                    raise ArtifactError(f"ONNX Runtime cannot load {record.file}: {str(e).splitlines()[0]}; "
                                        "re-run `lidit-export export`") from None
                self.sessions[name] = emulated_session(file, options, self.providers)
                self.emulated_bf16.append(name)
            session = self.sessions[name]
            io = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
            if io != ([t["name"] for t in record.inputs], [t["name"] for t in record.outputs]):
                raise ArtifactError(f"graph {record.file} has inputs/outputs {io}, its manifest record says otherwise; "
                                    "the build is inconsistent: rebuild it")
        self.output_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}
        self.encoders = manifest.encoders
        self.graph_inputs = {n: {t["name"] for t in r.inputs} for n, r in manifest.components.items()}
        self._local = threading.local()

    def _fused_int8_exact(self, record) -> bool:
        """A Q/DQ INT8 graph the build pinned to BASIC, on the CPU provider of a CPU whose fused integer GEMMs
        are exact (VNNI): it can run at ALL."""
        if record.precision != Precision.INT8 or record.ort_optimization != "basic":
            return False
        if self.providers != ["CPUExecutionProvider"]:
            return False
        from .int8_probe import fused_int8_exact

        return fused_int8_exact()

    @property
    def _buffers(self) -> dict[tuple, list[np.ndarray]]:
        """This thread's output buffers, per (graph, input shapes)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run graph `name`. Outputs are written into buffers kept per (graph, input shapes), so a
        denoising loop at a fixed shape allocates nothing after its first step. The returned arrays are
        overwritten by the next call of the same graph at the same shapes."""
        session = self.sessions[name]
        key = (name, *(v.shape for v in feeds.values()))
        buffers = self._buffers.get(key)
        if buffers is None:  # first call at these shapes: let ORT size the outputs, keep them as buffers
            outputs = session.run(self.output_names[name], feeds)
            self._buffers[key] = outputs
            return outputs
        binding = session.io_binding()
        for k, v in feeds.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for out_name, buf in zip(self.output_names[name], buffers):
            binding.bind_output(out_name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        session.run_with_iobinding(binding)
        return buffers

    # --- the Backend interface ---------------------------------------------------------------
    def asarray(self, host: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(host)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return array

    def concat(self, arrays, axis: int) -> np.ndarray:
        return np.concatenate(list(arrays), axis=axis)

    def synchronize(self) -> None:
        pass
