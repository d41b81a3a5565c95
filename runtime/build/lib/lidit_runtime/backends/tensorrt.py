"""TensorRT backend: the engines of BUILD/engines on one CUDA stream, device memory through CuPy.

- engines are checked against the running TensorRT and GPU (manifest.check_engines), deserialized once;
- one execution context per engine, all sharing one scratch block sized for the largest engine (the
  stages run one after another on one stream, so they never need it at the same time);
- output tensors are allocated once per (engine, input shapes) and reused: a denoising loop at a fixed
  shape allocates nothing after its first step; set_tensor_address + execute_async_v3 on the stream;
- arrays are CuPy arrays, so run_chain's CFG and sampler arithmetic stay on the GPU, and nothing
  synchronizes with the host inside the loop unless `profile=True` (then each stage is timed by events);
- `run_steps`: the whole denoising loop (every step's refiner + DiT + CFG + sampler update, as run_chain
  writes it) is captured once per static shape / plan as one CUDA graph and replayed; the first request
  at a shape runs eagerly (TensorRT's shape setup, CuPy's kernel compilation), the second captures.

This module has only been checked for import and refusals on a machine without a GPU (ours have none
with TensorRT: the lent H100 has no TensorRT, and TensorRT for RTX does not run on Hopper); its GPU path,
the CUDA graph included, is unverified.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..dependencies import require
from ..manifest import TENSORRT_MODULES, Manifest, build_file, check_engines, compute_capability
from .base import GraphStages

_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


class TensorRTBackend(GraphStages):
    name = "tensorrt"

    def __init__(self, build_dir: str | Path, manifest: Manifest, profile: bool = False, cuda_graphs: bool = True):
        cupy = require("cupy", "the TensorRT backend")
        target = next(iter(manifest.engines.values())).target if manifest.engines else "trt"
        trt = require(TENSORRT_MODULES[target], f"running engines built for {target} (or use --backend onnxruntime)")
        cc = compute_capability(cupy.cuda.Device())
        check_engines(manifest, build_dir, target, trt.__version__, cc)
        self.cp, self.trt = cupy, trt
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.stream.use()  # CuPy's current stream: run_chain's arithmetic queues behind the engines
        self.profile = profile
        self.stage_ms: dict[str, float] = {}
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self.engines, self.contexts = {}, {}
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        for name, rec in manifest.engines.items():
            engine = self._runtime.deserialize_cuda_engine(build_file(build_dir, rec.file, f"engine {name}").read_bytes())
            if engine is None:
                raise ArtifactError(f"{rec.file} could not be deserialized; rebuild it with `lidit-export build`")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context(strategy)
        scratch = max(e.device_memory_size_v2 for e in self.engines.values())
        self._scratch = cupy.empty(max(scratch, 1), dtype=np.uint8)
        for ctx in self.contexts.values():
            ctx.set_device_memory(self._scratch.data.ptr, scratch)
        self.encoders = manifest.encoders
        self.graph_inputs = {n: {t["name"] for t in r.inputs} for n, r in manifest.components.items()}
        self._outputs: dict[tuple, dict[str, object]] = {}
        self.cuda_graphs = cuda_graphs and not profile  # per-stage events need the stages outside a graph
        self._graphs: dict[tuple, _CapturedLoop] = {}
        self._seen: set[tuple] = set()

    def run(self, name: str, feeds: dict) -> list:
        """Run engine `name` on device arrays; outputs live in buffers reused per input shapes."""
        cp, trt = self.cp, self.trt
        engine, ctx = self.engines[name], self.contexts[name]
        key = (name, *(tuple(v.shape) for v in feeds.values()))
        bound = {}  # converted inputs stay referenced until the engine is queued (caller's dict untouched)
        for k, v in feeds.items():
            want = _NP[engine.get_tensor_dtype(k).name]
            v = bound[k] = v if v.dtype == want and v.flags.c_contiguous else cp.ascontiguousarray(v, dtype=want)
            ctx.set_input_shape(k, tuple(v.shape))
            ctx.set_tensor_address(k, v.data.ptr)
        outputs = self._outputs.get(key)
        if outputs is None:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            outputs = {n: cp.empty(tuple(ctx.get_tensor_shape(n)), dtype=_NP[engine.get_tensor_dtype(n).name])
                       for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
            self._outputs[key] = outputs
        for n, buf in outputs.items():
            ctx.set_tensor_address(n, buf.data.ptr)
        start = end = None
        if self.profile:
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(self.stream)
        if not ctx.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"TensorRT failed to run {name}")
        if self.profile:
            end.record(self.stream)
            end.synchronize()
            self.stage_ms[name] = self.stage_ms.get(name, 0.0) + cp.cuda.get_elapsed_time(start, end)
        return list(outputs.values())

    def run_steps(self, key: tuple, loop, x, conditions):
        """x after `loop(x, conditions)` (all denoising steps), replayed from a CUDA graph per `key`."""
        if not self.cuda_graphs:
            return loop(x, conditions)
        captured = self._graphs.get(key)
        if captured is None:
            if key not in self._seen:  # first time at this shape: run eagerly (warm-up), capture next time
                self._seen.add(key)
                return loop(x, conditions)
            captured = self._graphs[key] = _CapturedLoop.capture(self.cp, self.stream, loop, x, conditions)
        return captured.replay(self.stream, x, conditions)

    # --- the Backend interface ---------------------------------------------------------------
    def asarray(self, host: np.ndarray):
        return self.cp.asarray(host)

    def to_numpy(self, array) -> np.ndarray:
        return self.cp.asnumpy(array, stream=self.stream, blocking=True)

    def concat(self, arrays, axis: int):
        return self.cp.concatenate(list(arrays), axis=axis)

    def synchronize(self) -> None:
        if self.profile:  # honest per-stage host timings; otherwise the loop never waits for the GPU
            self.stream.synchronize()


def leaves(tree) -> list:
    """The arrays of a nest of tuples / lists (run_chain's conditions), in order."""
    return [a for item in tree for a in leaves(item)] if isinstance(tree, (tuple, list)) else [tree]


def refill(tree, arrays):
    """`tree`'s nesting, its arrays taken in order from the iterator `arrays`."""
    return type(tree)(refill(item, arrays) for item in tree) if isinstance(tree, (tuple, list)) else next(arrays)


class _CapturedLoop:
    """One CUDA graph of the denoising loop, with the static buffers it reads and writes.

    The graph reads its inputs at fixed addresses: each replay copies the request's noise and conditions
    into those buffers first (device-to-device, on the stream). Everything the loop allocates while it is
    captured comes from a memory pool of its own, kept as long as the graph: freed blocks are reused only
    within the captured sequence, in the order the graph replays it, never by later allocations.
    """

    def __init__(self, graph, pool, x, conditions, out):
        self.graph, self.pool, self.x, self.conditions, self.out = graph, pool, x, conditions, out

    @classmethod
    def capture(cls, cp, stream, loop, x, conditions) -> "_CapturedLoop":
        pool = cp.cuda.MemoryPool()
        with cp.cuda.using_allocator(pool.malloc):
            static_x = x.copy()
            static = [a.copy() for a in leaves(conditions)]
            static_conditions = refill(conditions, iter(static))
            stream.synchronize()
            stream.begin_capture()  # relaxed mode (CuPy's default): the pool may still cudaMalloc
            try:
                out = loop(static_x, static_conditions)
            finally:
                graph = stream.end_capture()
        return cls(graph, pool, static_x, static, out)

    def replay(self, stream, x, conditions):
        self.x[...] = x
        for dst, src in zip(self.conditions, leaves(conditions)):
            dst[...] = src
        self.graph.launch(stream)
        return self.out
