"""Serving a build with NVIDIA Triton Inference Server: a model repository (`write_model_repository`) whose Python
backend model owns a `Pipeline`, and `serve`, which runs it on the Triton server binary that NVIDIA's PyTriton
package bundles (it runs on CPU).

Why a plain model repository rather than PyTriton's callable API: that API has no per-request error, so one bad
request in a dynamic batch would fail its neighbours, with a Python traceback as the message. A Python-backend
model answers each request on its own (`pb_utils.InferenceResponse(error=...)`, one line), and the same
repository serves in a production Triton container (`lidit-runtime triton-repo`).

The model `lidit` takes `prompt` (BYTES) and optional `negative_prompt`, `steps`, `cfg`, `seed`, `height`,
`width`, `cfg_truncation`, `cfg_normalization`; it returns `image` (uint8 H x W x 3) and `timings` (JSON).
Triton's dynamic batcher hands the model a list of requests; the model groups those that can share one batch
(same negative prompt, steps, cfg, size and guidance fields) and runs each group as one call, every row with
its own seed (its noise is the one-request call's). With `exact`, each request is drawn alone instead.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LiditError

MODEL = "lidit"
# name -> (Triton type, whether the request may leave it out)
INPUTS = {"prompt": ("TYPE_STRING", False), "negative_prompt": ("TYPE_STRING", True), "steps": ("TYPE_INT32", True),
          "cfg": ("TYPE_FP32", True), "seed": ("TYPE_UINT64", True), "height": ("TYPE_INT32", True),
          "width": ("TYPE_INT32", True), "cfg_truncation": ("TYPE_FP32", True), "cfg_normalization": ("TYPE_FP32", True)}


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 1  # model instances (processes), each with its own Pipeline
    max_batch: int = 4  # requests Triton may hand the model at once
    queue_delay_us: int = 2000  # how long the batcher waits for more requests
    backend: str = "onnxruntime"
    # exact: draw every request of a batch on its own, so each image is bit-identical to a one-request call.
    # Otherwise requests that can share a call are drawn together: faster, but ONNX Runtime's kernels are not
    # batch-invariant and an image may differ from the one-request image by rounding (1 level measured).
    exact: bool = False
    threads: int = 0  # ONNX Runtime intra-op threads per instance (0: its choice; instances x threads <= cores)

    def validate(self) -> "ServeOptions":
        for name in ("instances", "max_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be an integer >= 1", name)
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads={self.threads!r} must be an integer >= 0", "threads")
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3 or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise ConfigError(f"ports {ports} must be three different numbers between 1 and 65535")
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise ConfigError(f"backend={self.backend!r} is unknown; use onnxruntime or tensorrt", "backend")
        return self


def model_config(build: str, options: ServeOptions, python_path: str = "") -> str:
    """config.pbtxt of the model: inputs, outputs, dynamic batching, instance group, the build's path."""
    inputs = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ 1 ]{" optional: true" if optional else ""} }}'
        for name, (dtype, optional) in INPUTS.items())
    return f'''name: "{MODEL}"
backend: "python"
max_batch_size: {options.max_batch}
input [
{inputs}
]
output [
  {{ name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }},
  {{ name: "timings" data_type: TYPE_STRING dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}
instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]
parameters {{ key: "build" value: {{ string_value: {json.dumps(build)} }} }}
parameters {{ key: "backend" value: {{ string_value: "{options.backend}" }} }}
parameters {{ key: "python_path" value: {{ string_value: {json.dumps(python_path)} }} }}
parameters {{ key: "exact" value: {{ string_value: "{str(options.exact).lower()}" }} }}
parameters {{ key: "threads" value: {{ string_value: "{options.threads}" }} }}
'''


def write_model_repository(build_dir: str | Path, out: str | Path, options: ServeOptions | None = None,
                           copy_build: bool = False, python_path: str = "", verify: bool = True) -> Path:
    """REPO/lidit/{config.pbtxt, 1/model.py} (and 1/build/ with copy_build); the build is checked first.
    python_path: folders (":"-separated) the model puts on sys.path before importing lidit_runtime (empty: the
    server's Python has it installed, as in a container)."""
    from .manifest import load_manifest

    options = (options or ServeOptions()).validate()
    build_dir = Path(build_dir).resolve()
    load_manifest(build_dir, verify=verify)  # refuse a damaged build before writing anything
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder", "out")
    folder = out / MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("triton_model.py"), folder / "1" / "model.py")
    build = str(build_dir)
    if copy_build:
        shutil.copytree(build_dir, folder / "1" / "build", ignore=shutil.ignore_patterns(".lock", ".pending.json"))
        build = "build"  # relative to the version folder
    (folder / "config.pbtxt").write_text(model_config(build, options, python_path))
    return folder


def triton_home() -> Path:
    """The Triton server PyTriton ships (bin/tritonserver, its libraries and the Python backend)."""
    from .dependencies import require

    pytriton = require("pytriton", "lidit-runtime serve")
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise ConfigError(f"{home}/bin/tritonserver is missing: reinstall the serve extra (`pip install "
                          "'lidit-runtime[serve]'`)")
    return home


def server_workspace(home: Path, dest: Path) -> Path:
    """A copy of the server tree with the Python-backend stub built for this interpreter's version in place."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ConfigError(f"PyTriton ships no Python backend stub for Python {version}; serve from Python 3.10-3.13")
    shutil.copytree(home, dest, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, dest / "backends" / "python" / "triton_python_backend_stub")
    return dest


def server_environment(home: Path) -> dict:
    """The server's environment: its own libraries, this interpreter's libpython (a pyenv Python is not the
    system's), and this interpreter's bin folder first on PATH (the model's Python stub takes its prefix, and so
    its site-packages, from there)."""
    env = dict(os.environ)
    libs = [str(home.parent.parent / "nvidia_pytriton.libs"), str(home / "external_libs"),
            sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def runtime_path() -> str:
    """The folder lidit_runtime is imported from here (an editable install's source tree included)."""
    return str(Path(__file__).resolve().parents[1])


def server_command(workspace: Path, repository: Path, options: ServeOptions) -> list[str]:
    return [str(workspace / "bin" / "tritonserver"), f"--model-repository={repository}",
            f"--backend-directory={workspace / 'backends'}", f"--http-address={options.host}",
            f"--http-port={options.http_port}", f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
            f"--metrics-address={options.host}", f"--metrics-port={options.metrics_port}",
            "--exit-timeout-secs=10", "--log-verbose=0", "--strict-readiness=true"]


def serve(build_dir: str | Path, options: ServeOptions | None = None, ready=print) -> int:
    """Run Triton on the build until SIGINT / SIGTERM (forwarded to the server, which finishes in-flight
    requests); returns 0 after such a stop, else the server's exit code."""
    from .manifest import load_manifest

    options = (options or ServeOptions()).validate()
    load_manifest(build_dir, verify=True)  # the build's own errors first, then the server's (hashed once here)
    home = triton_home()
    with tempfile.TemporaryDirectory(prefix="lidit-serve-") as tmp:
        tmp = Path(tmp)
        repository = tmp / "repository"
        write_model_repository(build_dir, repository, options, python_path=runtime_path(), verify=False)
        workspace = server_workspace(home, tmp / "tritonserver")
        server = subprocess.Popen(server_command(workspace, repository, options), env=server_environment(home),
                                  preexec_fn=_die_with_parent)

        stopping = []

        def forward(signum, frame):
            stopping.append(signum)
            server.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not wait_ready(f"http://{options.host}:{options.http_port}", server, timeout_s=120):
                if stopping:  # a stop asked for while the server was starting (it may be ready to a client already)
                    return 0
                if server.poll() is not None:
                    raise LiditError(f"the Triton server exited while starting (exit code {server.returncode}); its "
                                     "log above names the cause (a port in use, a model that failed to load)")
                raise LiditError("the Triton server did not become ready within 120 s; its log above says where it "
                                 "stopped")
            ready(f"serving model '{MODEL}' on http://{options.host}:{options.http_port} (gRPC "
                  f"{options.grpc_port}, metrics {options.metrics_port}); Ctrl-C stops")
            code = server.wait()
            return 0 if stopping else code  # stopped on request: the server's own shutdown code is not a failure
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()


def free_ports(n: int = 3) -> list[int]:
    """n TCP ports free on 127.0.0.1 now (for servers started by tests and benchmarks)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _die_with_parent() -> None:
    """In the server's process before exec: SIGKILL it when this process dies, however it dies (a killed
    `serve` must not leave an orphan server holding the ports)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_ready(url: str, server: subprocess.Popen | None = None, timeout_s: float = 120.0) -> bool:
    """Poll /v2/health/ready until it answers 200; False when the server exited or the time ran out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False
