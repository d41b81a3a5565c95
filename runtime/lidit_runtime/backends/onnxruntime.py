"""ONNX Runtime backend: one session per graph; outputs land in buffers reused across steps."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ArtifactError
from ..manifest import Manifest
from .base import GraphStages

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeBackend(GraphStages):
    name = "onnxruntime"

    def __init__(self, build_dir: str | Path, manifest: Manifest, providers: Sequence[str] | None = None,
                 optimization: str | None = None, threads: int | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.sessions = {}
        self.emulated_bf16: list[str] = []  # BF16 graphs this provider has no kernels for (see bf16_emulation)
        for name, record in manifest.components.items():
            options = ort.SessionOptions()
            level = optimization or record.ort_optimization
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
            if threads:
                options.intra_op_num_threads = threads
            file = Path(build_dir) / record.file
            try:
                self.sessions[name] = ort.InferenceSession(str(file), options, providers=self.providers)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                if record.precision != "bf16" or "NOT_IMPLEMENTED" not in str(e):
                    raise ArtifactError(f"ONNX Runtime cannot load {record.file}: {str(e).splitlines()[0]}; "
                                        "re-run `lidit-export export`") from None
                self.sessions[name] = self._emulated_bf16_session(file, options)
                self.emulated_bf16.append(name)
        self.output_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}
        self.encoders = manifest.encoders
        self._buffers: dict[tuple, list[np.ndarray]] = {}

    def _emulated_bf16_session(self, file: Path, options):
        import tempfile

        import onnx

        from .bf16_emulation import emulate_bf16

        model = emulate_bf16(onnx.load(str(file)))
        with tempfile.TemporaryDirectory(prefix="lidit-bf16-") as tmp:  # FP32 weights can pass protobuf's 2 GB
            path = Path(tmp) / file.name
            onnx.save_model(model, str(path), save_as_external_data=True, location=file.name + ".data")
            return self._ort.InferenceSession(str(path), options, providers=self.providers)

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
