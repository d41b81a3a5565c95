"""The runtime as its own distribution, in a venv of its own (no torch), and served by a real Triton Inference
Server (the binary NVIDIA's PyTriton bundles) on 127.0.0.1: same images as in process, per-request errors,
batching that keeps each request's image, SIGTERM and SIGKILL."""
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lidit_runtime.pipeline import Pipeline
from lidit_runtime.serve import free_ports, wait_ready

from helpers import needs_smollm2

REPO = Path(__file__).resolve().parents[1]
TYPES = {"negative_prompt": "BYTES", "steps": "INT32", "cfg": "FP32", "seed": "UINT64", "height": "INT32",
         "width": "INT32"}
REQUEST = dict(steps=4, height=64, width=64)


def run(args, **kwargs):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    """`pip install ./runtime[serve]` into a fresh venv: the runtime's own dependencies and PyTriton only."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin/python", "-m", "pip", "install", "-q", f"{REPO / 'runtime'}[serve]"])
    return venv


@pytest.fixture(scope="module")
def build(tiny_folder, tmp_path_factory):
    from lidit_export.export.export_build import export_model

    out = tmp_path_factory.mktemp("served") / "tiny"
    export_model(tiny_folder, out, progress=lambda *_: None)
    return out


class Server:
    def __init__(self, venv, build, *extra):
        self.http, grpc, metrics = free_ports()
        self.args = [venv / "bin/lidit-runtime", "serve", "--build", build, "--http-port", self.http,
                     "--grpc-port", grpc, "--metrics-port", metrics, *extra]
        self.start()

    def start(self):
        self.process = subprocess.Popen([str(a) for a in self.args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        assert wait_ready(f"http://127.0.0.1:{self.http}", self.process, timeout_s=120), self.process.stdout.read()[-3000:]

    def infer(self, prompt, timeout=60, raw_inputs=None, **fields):
        inputs = raw_inputs if raw_inputs is not None else (
            [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]}]
            + [{"name": k, "shape": [1, 1], "datatype": TYPES[k], "data": [v]} for k, v in fields.items()])
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/lidit/infer",
                                     json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                out = {o["name"]: o for o in json.loads(r.read())["outputs"]}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())["error"]
        image = np.array(out["image"]["data"], dtype=np.uint8).reshape(out["image"]["shape"])[0]
        return 200, image, json.loads(out["timings"]["data"][0])

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(runtime_venv, build):
    s = Server(runtime_venv, build, "--max-batch", "4", "--queue-delay-us", "200000")
    yield s
    s.stop()


@needs_smollm2
def test_runtime_venv_has_no_torch_and_draws_the_toolchains_image(runtime_venv, tmp_path):
    """The README's job: `mini` at FP8 (a short calibration: the images are compared, not judged), drawn by
    `lidit-runtime generate` in the runtime-only venv and by `lidit-export generate` in the toolchain's."""
    from lidit_export.presets import create_preset

    from helpers import quantized_build

    build = quantized_build(create_preset("mini", tmp_path / "mini"), tmp_path / "mini-fp8", "fp8")
    py = runtime_venv / "bin/python"
    missing = run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'diffusers') "
                   "if u.find_spec(m)])"])
    assert missing.strip() == "[]"
    flags = ["--build", build, "--prompt", "a red circle to the left of a blue square", "--seed", "7", "--quiet"]
    run([runtime_venv / "bin/lidit-runtime", "generate", *flags, "--out", tmp_path / "runtime.png"])
    run([sys.executable, "-m", "lidit_export.cli", "generate", "--backend", "onnxruntime", *flags,
         "--out", tmp_path / "toolchain.png"])
    a, b = (np.asarray(Image.open(tmp_path / f)) for f in ("runtime.png", "toolchain.png"))
    assert a.shape == (64, 64, 3) and a.std() > 5 and np.array_equal(a, b)


def test_served_image_equals_the_in_process_pipeline(server, build):
    in_process = Pipeline.load(build).generate("a red cat", seed=3, **REQUEST).images[0]
    code, image, timings = server.infer("a red cat", seed=3, **REQUEST)
    assert code == 200 and image.shape == (64, 64, 3) and np.array_equal(image, in_process)
    assert {"encode", "refine", "denoise", "decode", "total"} <= set(timings)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/lidit/ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}{path}", timeout=5) as r:
            assert r.status == 200


def test_bad_requests_get_one_line_client_errors_and_the_server_keeps_serving(server):
    cases = [(dict(steps=0), "steps=0 must be an integer between 1 and 1000"),
             (dict(steps=10_000), "steps=10000 must be an integer between 1 and 1000"),
             (dict(height=30, width=64), "resolution 30x64 is not supported"),
             (dict(prompt="x" * 100_000), "prompt of 100000 characters is over the 20000 allowed")]
    for fields, message in cases:
        prompt = fields.pop("prompt", "a cat")
        code, error = server.infer(prompt, **fields)
        assert code == 400 and error.startswith(message) and "\n" not in error, (code, error)
    wrong_dtype = [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]},
                   {"name": "steps", "shape": [1, 1], "datatype": "FP32", "data": [2.5]}]
    missing = [{"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [2]}]
    for inputs, message in ((wrong_dtype, "steps"), (missing, "prompt")):
        code, error = server.infer(None, raw_inputs=inputs)
        assert code == 400 and message in error and "\n" not in error, (code, error)
    assert server.infer("a cat", seed=1, **REQUEST)[0] == 200


def concurrent(server, prompts):
    results = {}

    def client(prompt, seed):
        results[seed] = server.infer(prompt, seed=seed, **REQUEST)

    threads = [threading.Thread(target=client, args=p) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


PROMPTS = [("a red cat", 1), ("a blue dog on a sofa", 2), ("two trees", 3), ("a red cat", 4)]


def test_batched_requests_each_get_their_own_image(server, build):
    """Grouped into one call, each row keeps its own seed's noise; ONNX Runtime's kernels are not
    batch-invariant, so an image may differ from its one-request image by rounding: at most 1 level."""
    pipe = Pipeline.load(build)
    serial = {seed: pipe.generate(prompt, seed=seed, **REQUEST).images[0] for prompt, seed in PROMPTS}
    results = concurrent(server, PROMPTS)
    assert sorted(results) == [1, 2, 3, 4]
    for seed, (code, image, timings) in results.items():
        assert code == 200 and np.abs(image.astype(int) - serial[seed]).max() <= 1, seed
    assert max(r[2]["batch"] for r in results.values()) > 1  # the batcher grouped some of them


def test_exact_serving_is_bit_identical_to_one_request_calls(runtime_venv, build):
    pipe = Pipeline.load(build)
    serial = {seed: pipe.generate(prompt, seed=seed, **REQUEST).images[0] for prompt, seed in PROMPTS}
    server = Server(runtime_venv, build, "--exact", "--queue-delay-us", "200000")
    try:
        for seed, (code, image, timings) in concurrent(server, PROMPTS).items():
            assert code == 200 and np.array_equal(image, serial[seed]) and timings["batch"] == 1, seed
    finally:
        server.stop()


def test_sigkill_under_load_then_a_restart_serves_the_same_images(runtime_venv, build):
    server = Server(runtime_venv, build)
    try:
        expected = server.infer("a red cat", seed=5, **REQUEST)[1]
        outcomes = []

        def client(i):
            started = time.monotonic()
            try:
                outcomes.append((server.infer(f"prompt {i}", seed=i, timeout=30, steps=800, height=64, width=64)[0],
                                 time.monotonic() - started))
            except (urllib.error.URLError, OSError, ConnectionError):
                outcomes.append(("error", time.monotonic() - started))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]  # ~2 s of work each
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        for t in threads:
            t.join(timeout=60)
        assert len(outcomes) == 8 and all(seconds < 45 for _, seconds in outcomes)  # nothing hangs
        assert any(code != 200 for code, _ in outcomes)  # the killed server's clients got errors
        time.sleep(1.0)  # the server, a child dying with its parent, lets go of the ports
        server.start()
        code, image, _ = server.infer("a red cat", seed=5, **REQUEST)
        assert code == 200 and np.array_equal(image, expected)
    finally:
        server.stop()


def test_sigterm_stops_the_server_cleanly(runtime_venv, build):
    server = Server(runtime_venv, build)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0 and time.monotonic() - started < 60
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/health/live", timeout=2)


def test_triton_repo_serves_on_the_bundled_server(runtime_venv, build, tmp_path):
    """The repository a production container would mount, on the tritonserver binary itself (the build copied in;
    lidit_runtime imported from the server Python's own site-packages, as in a container)."""
    repo = tmp_path / "repo"
    run([runtime_venv / "bin/lidit-runtime", "triton-repo", "--build", build, "--out", repo, "--copy-build"])
    config = (repo / "lidit" / "config.pbtxt").read_text()
    assert "dynamic_batching" in config and 'string_value: "build"' in config
    script = f"""
import subprocess, sys, tempfile
from pathlib import Path
from lidit_runtime.serve import ServeOptions, server_command, server_environment, server_workspace, triton_home, wait_ready
opts = ServeOptions(**dict(zip(("http_port", "grpc_port", "metrics_port"), {free_ports(3)})))
with tempfile.TemporaryDirectory() as tmp:
    ws = server_workspace(triton_home(), Path(tmp) / "ts")
    p = subprocess.Popen(server_command(ws, Path({str(repo)!r}), opts), env=server_environment(triton_home()),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = wait_ready(f"http://127.0.0.1:{{opts.http_port}}", p, 120)
    print(opts.http_port if ok else "not ready", flush=True)
    sys.stdin.readline()
    p.terminate(); p.wait(30)
"""
    helper = subprocess.Popen([str(runtime_venv / "bin/python"), "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = helper.stdout.readline().strip()
        assert port.isdigit(), port
        served = Server.__new__(Server)
        served.http = int(port)
        code, image, _ = served.infer("a red cat", seed=3, **REQUEST)
        assert code == 200 and np.array_equal(image, Pipeline.load(build).generate("a red cat", seed=3,
                                                                                    **REQUEST).images[0])
    finally:
        helper.communicate("\n", timeout=60)


def test_serving_commands_refuse_bad_input_with_one_line(build, tmp_path):
    """In the toolchain's venv (no PyTriton): the options are checked first, then the missing extra is named."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lidit_runtime.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    cases = [(["serve", "--build", build, "--http-port", "9000", "--grpc-port", "9000"], "must be three different"),
             (["serve", "--build", tmp_path / "nowhere"], "not found"),
             (["serve", "--build", build, "--instances", "0"], "argument --instances: 0 must be >= 1"),
             (["triton-repo", "--build", build, "--out", build], "exists and is not empty"),
             (["generate", "--build", build, "--prompt", "a", "--steps", "0"], "argument --steps: 0 must be >= 1"),
             (["generate", "--build", build, "--prompt", "a", "--height", "30", "--out", tmp_path / "x.png"],
              "resolution 30x64 is not supported")]
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        cases.append((["serve", "--build", build], "needs NVIDIA PyTriton: `pip install 'lidit-runtime[serve]'`"))
    for args, message in cases:
        done = cli(*args)
        err = done.stderr.strip()
        assert done.returncode == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err, (
            args, done.returncode, err)


def test_a_port_in_use_ends_serve_with_an_error(runtime_venv, build):
    import socket

    http, grpc, metrics = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", http))
        busy.listen()
        done = subprocess.run([str(runtime_venv / "bin/lidit-runtime"), "serve", "--build", str(build), "--http-port",
                               str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                              capture_output=True, text=True, timeout=180)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]  # after the server's own log
    assert done.returncode == 2 and len(ours) == 1, done.stderr[-800:]
    assert ours[0].startswith("error: the Triton server exited while starting (exit code 1)")
