"""kill -9 at 10 points spread over an INT8 build of `tiny` into a folder that already holds a working FP32 build.

    python benchmarks/interrupted_build.py --work /tmp/kills --out benchmarks/results/interrupted_build_tiny.json

Setup: a `tiny` model folder, a working FP32 build (its image is the reference) and an uninterrupted INT8 build in
another folder (its graphs are what every resumed build must end with). The build writes nothing during its first
seconds (imports, model load) and everything in its last one, so the kill points are anchored to what it prints:
each point is an output line and a delay after it (POINTS), covering every stage. For each point: copy the FP32
build, start `lidit-export build --precision int8` on it in its own process, SIGKILL it there, and check that
1. the folder still loads and draws the FP32 reference image bit for bit (or, when the kill came after the
   commit, which a zero delay allows, the new build's image: never anything in between);
2. a rerun completes (exit 0), reuses everything the killed run had finished (a calibration cache it wrote is
   "reused from cache", each graph its journal recorded is "up to date"), leaves no temp files or progress
   journal behind, and ends with graphs identical (sha256) to the uninterrupted build's and the same image.
Writes JSON with the hardware, versions and machine load; `tests/test_concurrency.py` runs three of the points
(`--select`) and asserts the same facts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment  # noqa: E402

PROMPT, STEPS, SEED = "a red circle to the left of a blue square", 3, 0
POINTS = [  # (output line that arms the kill (None: the start), seconds after it): every stage of the build
    (None, 1.0),  # importing torch and ModelOpt
    (None, 3.0),  # loading the model folder
    ("calibration ", 0.0),  # calibration starts
    ("Inserted", 0.05),  # calibrating through the reference sampler
    ("Smoothed", 0.0),  # SmoothQuant applied, the calibration cache being written
    ("refiner (int8): exporting", 0.0),  # refiner export starts
    ("refiner (int8): exporting", 0.3),  # mid refiner export
    ("dit (int8): exporting", 0.0),  # the refiner journaled, the DiT starts
    ("dit (int8): exporting", 0.15),  # mid DiT export
    ("vae_decoder (fp32): up to date", 0.0),  # just before the commit
]


def build_command(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lidit_export.cli", "build", "--model", str(model), "--out", str(out),
            "--precision", "int8", "--num", "2", "--steps", "2", "--target", "none"]


def run_build(model: Path, out: Path, kill_at: tuple[str | None, float] | None = None) -> dict:
    """Run a build in its own process; kill_at (line, delay): SIGKILL it `delay` seconds after the first output
    line starting with `line` (after the start when None). Returns the exit code, whether it was killed, the
    seconds it ran and its output lines with the second each arrived."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(build_command(model, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[tuple[float, str]] = []
    killed = threading.Event()

    def kill_after(delay: float) -> None:
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.set()

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            if kill_at is not None and kill_at[0] is not None and line.strip().startswith(kill_at[0].strip()) \
                    and not any(th.name == "killer" for th in threading.enumerate()):
                threading.Thread(target=kill_after, args=(kill_at[1],), name="killer", daemon=True).start()

    reader = threading.Thread(target=read)
    reader.start()
    if kill_at is not None and kill_at[0] is None:
        threading.Thread(target=kill_after, args=(kill_at[1],), name="killer", daemon=True).start()
    proc.wait()
    reader.join()
    return {"returncode": proc.returncode, "killed": killed.is_set(), "seconds": time.perf_counter() - t0,
            "lines": lines}


def leftovers(build: Path) -> list[str]:
    """Temp entries and the progress journal: a finished build leaves none."""
    found = [p for folder in ("onnx", "engines", "tokenizers", "calibration") if (build / folder).is_dir()
             for p in (build / folder).glob(".*")]
    found += list(build.glob(".*.tmp")) + [p for p in [build / ".pending.json"] if p.exists()]
    return sorted(str(p.relative_to(build)) for p in found)


def finished_work(build: Path) -> dict:
    """What a killed run left finished: its calibration cache, and the graphs its progress journal records."""
    import json

    journal = build / ".pending.json"
    graphs = sorted({r["name"] for r in json.loads(journal.read_text())["components"].values()}) if journal.exists() else []
    return {"calibration": any((build / "calibration").glob("*/calibration.json")), "graphs": graphs}


def draw(build: Path):
    from lidit_runtime.pipeline import Pipeline

    return Pipeline.load(build).generate(PROMPT, steps=STEPS, seed=SEED).images[0]


def graph_hashes(build: Path) -> dict:
    from lidit_runtime.manifest import load_manifest

    return {n: r.sha256 for n, r in load_manifest(build, verify=True).components.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="scratch folder (emptied)")
    parser.add_argument("--select", default=None, help="comma-separated indices into POINTS (default: all)")
    parser.add_argument("--out", default="benchmarks/results/interrupted_build_tiny.json")
    args = parser.parse_args(argv)

    import numpy as np

    from lidit_export.artifacts import atomic_write_json
    from lidit_export.presets import create_preset

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    model = create_preset("tiny", work / "tiny", seed=0)
    fp32 = work / "fp32"
    subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", str(model), "--out", str(fp32),
                    "--target", "none"], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    reference = draw(fp32)
    clean = run_build(model, work / "int8")
    assert clean["returncode"] == 0, clean["lines"]
    expected_hashes, expected_image = graph_hashes(work / "int8"), draw(work / "int8")

    points = []
    selected = [int(i) for i in args.select.split(",")] if args.select else range(len(POINTS))
    for i in selected:
        anchor, delay = POINTS[i]
        folder = work / f"kill{i}"
        shutil.copytree(fp32, folder)
        killed = run_build(model, folder, kill_at=(anchor, delay))
        at = killed["seconds"]
        stage = next((line for t, line in reversed(killed["lines"]) if line.strip()), "(nothing printed yet)")
        committed = any(line.startswith("built ") for _, line in killed["lines"])
        finished = finished_work(folder)
        image = draw(folder)
        old_image_equal = bool(np.array_equal(image, reference))
        new_image_equal = bool(np.array_equal(image, expected_image))
        rerun = run_build(model, folder)
        text = [line for _, line in rerun["lines"]]
        up_to_date = sorted(line.split()[0] for line in text if "up to date" in line)
        reused_calibration = any("reused from cache" in line for line in text)
        points.append({
            "point": i, "anchor": anchor or "(start)", "delay_s": delay, "killed_at_s": round(at, 2),
            "killed": killed["killed"], "last_line_before_kill": stage,
            "killed_before_commit": not committed,
            "previous_build_draws_the_same_image": old_image_equal,
            "folder_consistent_after_kill": old_image_equal if not committed else new_image_equal,
            "rerun_returncode": rerun["returncode"], "rerun_s": round(rerun["seconds"], 2),
            "finished_before_kill": finished,
            "rerun_reused_calibration": reused_calibration,
            "rerun_graphs_up_to_date": up_to_date,
            "rerun_reused_all_finished": (reused_calibration or not finished["calibration"])
                                         and set(finished["graphs"]) <= set(up_to_date),
            "rerun_graphs_exported": sorted(line.split()[0] for line in text if "exporting" in line),
            "leftovers_after_rerun": leftovers(folder),
            "same_graphs_as_uninterrupted": rerun["returncode"] == 0 and graph_hashes(folder) == expected_hashes,
            "same_image_as_uninterrupted": rerun["returncode"] == 0 and bool(np.array_equal(draw(folder), expected_image)),
        })
        print(f"kill at {at:5.2f}s ({stage[:60]}): previous build intact {old_image_equal}, rerun "
              f"{rerun['seconds']:.1f}s exit {rerun['returncode']}, reused {points[-1]['rerun_graphs_up_to_date']}")
    result = {"benchmark": "interrupted_build", "environment": describe_environment(), "load_avg": os.getloadavg(),
              "settings": {"model": "tiny", "from": "fp32 build", "to": "int8 (2 prompts x 2 steps)",
                           "points": list(selected), "command": " ".join(build_command(Path("MODEL"), Path("BUILD")))},
              "uninterrupted_build_s": round(clean["seconds"], 2),
              "uninterrupted_timeline": [[round(t, 2), line] for t, line in clean["lines"]], "points": points,
              "all_hold": all(p["folder_consistent_after_kill"] and p["rerun_returncode"] == 0
                              and p["rerun_reused_all_finished"]
                              and not p["leftovers_after_rerun"] and p["same_graphs_as_uninterrupted"]
                              and p["same_image_as_uninterrupted"] for p in points)}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}: all hold: {result['all_hold']}")
    return result


if __name__ == "__main__":
    main()
