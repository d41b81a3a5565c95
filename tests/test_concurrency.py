"""Many threads on one pipeline, two builds into one folder, builds killed with -9."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from lidit_export.cli import main
from lidit_runtime.pipeline import GenerateRequest, Pipeline

REQUESTS = [GenerateRequest([f"a {colour} {shape}"], seed=seed, height=height, width=64, steps=3)
            for seed, (colour, shape, height) in enumerate(
                [("red", "cat", 64), ("blue", "dog", 80), ("green", "bird", 64), ("yellow", "car", 96),
                 ("black", "tree", 64), ("white", "house", 80), ("pink", "boat", 64), ("grey", "star", 128)])]


def test_eight_threads_on_one_pipeline_give_exactly_the_serial_results(tiny_build):
    """8 threads x 5 rounds, each thread its own prompt, seed and size, all on one Pipeline at once."""
    serial = [Pipeline.load(tiny_build).generate(r) for r in REQUESTS]
    shared = Pipeline.load(tiny_build)
    barrier = threading.Barrier(len(REQUESTS))
    results: dict = {}
    errors = []

    def worker(index):
        try:
            for round_ in range(5):
                barrier.wait()  # every round starts together, so the calls overlap
                results[index, round_] = shared.generate(REQUESTS[index])
        except Exception as e:  # reported below; a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40
    for (index, _), result in results.items():
        assert np.array_equal(result.images, serial[index].images)
        assert np.array_equal(result.latents, serial[index].latents)


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_holds_it(tiny_folder, tmp_path, capsys):
    build = tmp_path / "build"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lidit_export.build_folder import BuildFolder\n"
         f"with BuildFolder({str(build)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["build", "--model", str(tiny_folder), "--out", str(build), "--target", "none"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err
        assert f"another lidit-export process (pid {holder.pid}) is writing" in err and "choose another --out" in err
        assert not (build / "manifest.json").exists()
    finally:
        holder.kill()  # kill -9 drops the kernel lock with the process
        holder.wait()
    assert main(["build", "--model", str(tiny_folder), "--out", str(build), "--target", "none"]) == 0
    Pipeline.load(build).generate("a cat", steps=1)


def test_two_threads_of_one_process_cannot_build_into_one_folder_at_once(tmp_path):
    from lidit_export.build_folder import BuildFolder
    from lidit_export.errors import ArtifactError

    outcome = []
    with BuildFolder(tmp_path / "b"):
        def other():
            try:
                with BuildFolder(tmp_path / "b"):
                    outcome.append("entered")
            except ArtifactError as e:
                outcome.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(outcome) == 1 and "is writing" in outcome[0]


def test_killed_int8_builds_leave_the_fp32_build_working_and_resume(tmp_path):
    """kill -9 at points spread over an INT8 build into a folder holding a working FP32 build (the 10-point
    run is `benchmarks/interrupted_build.py`, results in benchmarks/results/interrupted_build_tiny.json)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "interrupted_build.py"
    out = tmp_path / "result.json"
    t0 = time.perf_counter()
    # points: mid-calibration (cache being written), the refiner journaled as the DiT starts, just before the commit
    subprocess.run([sys.executable, str(script), "--work", str(tmp_path / "work"), "--select", "4,7,9", "--out", str(out)],
                   check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads(out.read_text())
    assert len(result["points"]) == 3 and time.perf_counter() - t0 < 600
    assert sum(point["killed_before_commit"] for point in result["points"]) >= 2  # the kills landed mid-build
    assert "refiner" in result["points"][1]["finished_before_kill"]["graphs"]  # and there was work to resume
    for point in result["points"]:
        assert point["killed"], point
        assert point["folder_consistent_after_kill"], point  # the FP32 image before the commit, the INT8 one after
        if point["killed_before_commit"]:
            assert point["previous_build_draws_the_same_image"], point
        assert point["rerun_returncode"] == 0 and point["leftovers_after_rerun"] == [], point
        assert point["rerun_reused_all_finished"], point  # the calibration cache and journaled graphs it left
        assert point["same_graphs_as_uninterrupted"] and point["same_image_as_uninterrupted"], point
    assert result["all_hold"]
