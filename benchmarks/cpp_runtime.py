"""liblidit (C++) against lidit_runtime (Python) on the same FP32 build and the same ONNX Runtime library,
image by image in turn, per stage; and each one's orchestration overhead (total minus the time inside ONNX
Runtime's Run).

    cmake -S runtime/cpp -B build/cpp && cmake --build build/cpp -j2
    python benchmarks/cpp_runtime.py --model models/mini --model models/smol --builds build

Writes OUT/cpp_runtime_cpu.json (hardware, versions, load, settings, per-stage p50/p95 of both runtimes, the
overhead, and whether the two drew identical images) and a PNG made from it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import STAGES, describe_environment, interleaved, percentiles, stage_plot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle to the left of a blue square"


class PythonRunner:
    """lidit_runtime with the time inside ONNX Runtime summed per call (the backend's one entry to ORT)."""

    def __init__(self, build: Path, steps: int):
        from lidit_runtime.pipeline import Pipeline

        self.pipe, self.steps, self.inside = Pipeline.load(build), steps, 0.0
        run = self.pipe.backend.run

        def timed(name, feeds):
            t0 = time.perf_counter()
            try:
                return run(name, feeds)
            finally:
                self.inside += time.perf_counter() - t0

        self.pipe.backend.run = timed
        self.samples = []

    def __call__(self, seed: int) -> dict:
        self.inside = 0.0
        timings = dict(self.pipe.generate(PROMPT, seed=seed, steps=self.steps).timings, onnxruntime=self.inside)
        self.samples.append(timings)
        return timings


class CppRunner:
    """lidit-bench, loaded once, fed one seed per image."""

    def __init__(self, build: Path, steps: int):
        tool = ROOT / "build" / "cpp" / "lidit-bench"
        if not tool.exists():
            sys.exit(f"{tool} not found: build it with `cmake -S runtime/cpp -B build/cpp && cmake --build build/cpp`")
        self.proc = subprocess.Popen([tool, "--build", build, "--prompt", PROMPT, "--steps", str(steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.samples = []

    def __call__(self, seed: int) -> dict:
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        timings = json.loads(self.proc.stdout.readline())
        self.samples.append(timings)
        return timings

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=10, help="timed images per runtime (after 2 warm-up)")
    args = parser.parse_args(argv)

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json
    from lidit_export.config import PipelineConfig
    from lidit_export.model.pipeline import INDEX
    from lidit_export.stages import BuildOptions, build_pipeline

    models, all_rows = {}, {}
    for folder in args.model:
        config = PipelineConfig.from_json_file(Path(folder) / INDEX)
        build = Path(args.builds) / f"{config.name}-fp32"
        build_pipeline(folder, build, BuildOptions(engines=None), progress=lambda *_: None)
        steps = config.scheduler.default_steps
        runners = {"python": PythonRunner(build, steps), "c++": CppRunner(build, steps)}
        rows = interleaved(runners, args.images)
        for name, runner in runners.items():
            timed = runner.samples[2:]  # the warm-up images are not in the percentiles
            rows[name]["stages"]["onnxruntime"] = percentiles([t["onnxruntime"] for t in timed])
            rows[name]["overhead"] = percentiles([t["total"] - t["onnxruntime"] for t in timed])
        runners["c++"].close()
        same = bool(np.array_equal(np.asarray(subprocess_image(build, steps)),
                                   runners["python"].pipe.generate(PROMPT, seed=0, steps=steps).images[0]))
        total = {n: r["stages"]["total"]["p50_ms"] for n, r in rows.items()}
        models[config.name] = {"steps": steps, "cfg": config.scheduler.default_cfg,
                               "resolution": [config.default_height, config.default_width], "rows": rows,
                               "cpp_speedup_p50": total["python"] / total["c++"], "identical_image_seed0": same}
        all_rows.update({f"{config.name} {n}": r for n, r in rows.items()})
        print(f"{config.name}: python p50 {total['python']:.1f} ms, c++ {total['c++']:.1f} ms "
              f"({total['python'] / total['c++']:.2f}x); overhead p50 python "
              f"{rows['python']['overhead']['p50_ms']:.1f} ms, c++ {rows['c++']['overhead']['p50_ms']:.1f} ms; "
              f"identical image: {same}")
    result = {"benchmark": "cpp_runtime", "environment": describe_environment(),
              "settings": {"precision": "fp32", "backend": "onnxruntime (CPU)", "images": args.images,
                           "interleaved": True, "batch": 1, "prompt": PROMPT, "stages": [*STAGES, "onnxruntime"],
                           "overhead": "total - time inside ONNX Runtime's Run"}, "models": models}
    out = Path(args.out)
    atomic_write_json(out / "cpp_runtime_cpu.json", result)
    atomic_write_bytes(out / "cpp_runtime_cpu.png",
                       stage_plot(all_rows, "liblidit (C++) vs lidit_runtime (Python), FP32, ONNX Runtime CPU: p50"))


def subprocess_image(build: Path, steps: int):
    from PIL import Image

    out = ROOT / "build" / "cpp" / "bench-seed0.png"
    subprocess.run([ROOT / "build" / "cpp" / "lidit-generate", "--build", build, "--prompt", PROMPT, "--out", out,
                    "--seed", "0", "--steps", str(steps)], check=True, capture_output=True)
    return Image.open(out)


if __name__ == "__main__":
    main()
