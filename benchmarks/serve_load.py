"""Load on a served build: N requests from C concurrent clients on loopback, for 1 and 2 model instances, with
and without --exact; each image is checked against the in-process one-request image for its seed.

Run it with the Python of a venv that has `pip install './runtime[serve]'` (PyTriton pins numpy < 2):

    RUNTIME_VENV/bin/python benchmarks/serve_load.py --build build/mini --out benchmarks/results

Writes OUT/serve_load_<model>.json (hardware, versions, machine load, settings, p50 / p95 latency, throughput,
max pixel difference from the serial images) and a bar plot of the throughputs next to it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lidit_runtime.serve import free_ports, wait_ready

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, percentiles  # noqa: E402


def infer(port: int, prompt: str, seed: int, steps: int, timeout: float) -> tuple[np.ndarray, dict]:
    inputs = [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]},
              {"name": "seed", "shape": [1, 1], "datatype": "UINT64", "data": [seed]},
              {"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [steps]}]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/lidit/infer",
                                 json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    image = np.array(out["image"]["data"], dtype=np.uint8).reshape(out["image"]["shape"])[0]
    return image, json.loads(out["timings"]["data"][0])


def run_config(build: str, instances: int, exact: bool, threads: int, jobs: list, clients: int, steps: int,
               serial: dict, timeout: float) -> dict:
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "lidit_runtime.cli", "serve", "--build", build, "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--instances", str(instances),
           "--threads", str(threads), "--max-batch", "4", "--queue-delay-us", "5000"] + (["--exact"] if exact else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_ready(f"http://127.0.0.1:{http}", server, 180):
            raise SystemExit("the server did not become ready")
        for prompt, seed in jobs[:instances * 2]:  # warm every instance up
            infer(http, prompt, seed, steps, timeout)

        def one(job):
            prompt, seed = job
            started = time.perf_counter()
            try:
                image, timings = infer(http, prompt, seed, steps, timeout)
            except (urllib.error.URLError, OSError) as e:
                return {"seed": seed, "ok": False, "error": str(e)[:200], "latency_s": time.perf_counter() - started}
            diff = int(np.abs(image.astype(np.int16) - serial[seed]).max())
            return {"seed": seed, "ok": True, "latency_s": time.perf_counter() - started, "max_pixel_diff": diff,
                    "batch": timings["batch"]}

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            rows = list(pool.map(one, jobs))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    ok = [r for r in rows if r["ok"]]
    return {"instances": instances, "exact": exact, "threads_per_instance": threads, "requests": len(rows),
            "succeeded": len(ok), "wall_s": wall, "throughput_images_per_s": len(ok) / wall,
            "latency": percentiles([r["latency_s"] for r in ok]),
            "max_pixel_diff_from_serial": max((r["max_pixel_diff"] for r in ok), default=None),
            "equal_to_serial": sum(r["max_pixel_diff"] == 0 for r in ok),
            "mean_batch": float(np.mean([r["batch"] for r in ok])) if ok else None, "failures": [r for r in rows if not r["ok"]]}


def plot(result: dict, out: Path) -> None:
    from PIL import Image, ImageDraw

    rows = result["configs"]
    w, h, bar = 640, 60 + 40 * len(rows), 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(r["throughput_images_per_s"] for r in rows)
    d.text((10, 10), f"serve_load {result['model']}: images/s, {result['settings']['requests']} requests, "
                     f"{result['settings']['clients']} clients", fill="black")
    for i, r in enumerate(rows):
        y = 40 + 40 * i
        label = f"{r['instances']} inst{' exact' if r['exact'] else ''}"
        d.text((10, y + 8), label, fill="black")
        length = int((w - 260) * r["throughput_images_per_s"] / top)
        d.rectangle([120, y, 120 + length, y + bar], fill=(70, 110, 180))
        d.text((130 + length, y + 8), f"{r['throughput_images_per_s']:.2f}/s, p50 {r['latency']['p50_ms'] / 1000:.2f}s", fill="black")
    img.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    args = parser.parse_args()

    from lidit_runtime.pipeline import Pipeline

    pipe = Pipeline.load(args.build)
    steps = args.steps or pipe.scheduler.default_steps
    words = ["a red circle", "a blue square", "a green triangle", "two yellow stars", "a small red circle left of a "
             "big blue square", "a purple ring"]
    jobs = [(words[i % len(words)], 1000 + i) for i in range(args.requests)]
    serial = {seed: pipe.generate(prompt, seed=seed, steps=steps).images[0] for prompt, seed in jobs}
    import os

    cores = os.cpu_count() or 1
    configs = []
    for instances in (1, 2):
        for exact in (False, True):
            threads = max(1, cores // instances)
            configs.append(run_config(args.build, instances, exact, threads, jobs, args.clients, steps, serial,
                                      args.timeout))
            c = configs[-1]
            print(f"{instances} instance(s){' exact' if exact else ''}: {c['succeeded']}/{c['requests']} ok, "
                  f"{c['throughput_images_per_s']:.2f} images/s, p50 {c['latency']['p50_ms'] / 1000:.2f}s p95 "
                  f"{c['latency']['p95_ms'] / 1000:.2f}s, max diff from serial {c['max_pixel_diff_from_serial']}")
    name = pipe.manifest.model_name.replace(":", "-")
    result = {"benchmark": "serve_load", "model": name, "build": str(args.build),
              "settings": {"requests": args.requests, "clients": args.clients, "steps": steps,
                           "resolution": [pipe.manifest.default_height, pipe.manifest.default_width],
                           "max_batch": 4, "queue_delay_us": 5000},
              "environment": describe_environment(), "configs": configs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve_load_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"serve_load_{name}.png")


if __name__ == "__main__":
    main()
