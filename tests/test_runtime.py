"""The runtime package: no torch, same images as the reference, buffers reused, uncond encoded once."""
import subprocess
import sys

import numpy as np
import pytest

from lidit_runtime.errors import ShapeError
from lidit_runtime.pipeline import GenerateRequest, Pipeline


def test_import_and_generate_without_torch_or_transformers(tiny_build):
    code = (
        "import sys\n"
        "import lidit_runtime\n"
        "from lidit_runtime import Pipeline\n"
        f"p = Pipeline.load({str(tiny_build)!r})\n"
        "r = p.generate('a red cat', steps=2, height=32, width=32)\n"
        "assert r.images.shape == (1, 32, 32, 3)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in out.stdout


def test_runtime_image_matches_the_reference_step_by_step(tiny_build, tiny_pipe):
    from lidit_export.check.metrics import psnr, tensor_errors

    prompt = "two green triangles above a yellow star"
    runtime = Pipeline.load(tiny_build)
    out = runtime.generate(prompt, steps=6, cfg=4.0, seed=11, height=80, width=48, keep_trajectory=True)
    ref = tiny_pipe.generate(GenerateRequest([prompt], steps=6, cfg=4.0, seed=11, height=80, width=48),
                             keep_trajectory=True)
    cosines = [tensor_errors(a, r)["cosine"] for a, r in zip(out.trajectory, ref.trajectory)]
    assert len(cosines) == 6 and min(cosines) >= 0.9999
    assert psnr(out.images, ref.images) >= 40.0


def test_output_buffers_are_reused_across_steps(tiny_build):
    runtime = Pipeline.load(tiny_build)
    runtime.generate("a cat", steps=3, height=32, width=32)
    dit_buffers = {k: v for k, v in runtime.backend._buffers.items() if k[0] == "dit"}
    assert len(dit_buffers) == 1
    (buffer,) = next(iter(dit_buffers.values()))
    address = buffer.ctypes.data
    runtime.generate("a dog", steps=3, height=32, width=32)
    assert runtime.backend._buffers[next(iter(dit_buffers))][0].ctypes.data == address


def test_unconditional_encoding_is_computed_once_and_changes_nothing(tiny_build):
    runtime = Pipeline.load(tiny_build)
    calls = []
    original = runtime.backend.encode_prompt
    runtime.backend.encode_prompt = lambda i, ids, mask: calls.append(ids.shape[0]) or original(i, ids, mask)
    first = runtime.generate(["a red cat", "a blue dog"], steps=3, height=32, width=32, seed=5)
    second = runtime.generate(["a red cat", "a blue dog"], steps=3, height=32, width=32, seed=5)
    assert calls == [1, 2, 1, 2, 2, 2]  # per LLM: uncond (once), then the 2 prompts
    runtime.uncond_cache.clear()
    runtime.generate(["x"], steps=1, height=32, width=32)
    fresh = Pipeline.load(tiny_build)
    fresh.uncond_cache = None  # cond and uncond in one 2B batch, nothing cached
    plain = fresh.generate(["a red cat", "a blue dog"], steps=3, height=32, width=32, seed=5)
    # Same math, different padded lengths (summation order): equal to float32 rounding.
    rel = np.linalg.norm(second.latents - plain.latents) / np.linalg.norm(plain.latents)
    assert rel < 1e-5
    assert np.array_equal(first.images, second.images)


def test_runtime_refuses_bad_resolutions(tiny_build):
    with pytest.raises(ShapeError, match="multiples of 16"):
        Pipeline.load(tiny_build).generate("a cat", height=40, width=33)


def test_compute_capability_of_a_cupy_device_keeps_two_digit_majors():
    """CuPy reports "89" / "120"; engines record "8.9" / "12.0" (RTX 50-series is sm120)."""
    from types import SimpleNamespace

    from lidit_runtime.manifest import compute_capability

    assert [compute_capability(SimpleNamespace(compute_capability=c)) for c in ("75", "89", "90", "120")] == [
        "7.5", "8.9", "9.0", "12.0"]


def test_cuda_graph_buffers_follow_any_nesting_of_the_loop_conditions():
    """The captured loop copies run_chain's conditions (lists per LLM, then arrays) into static buffers by
    flattening them and rebuilding the same nesting: host-side logic, checked here without a GPU."""
    from lidit_runtime.backends.tensorrt import leaves, refill

    rng = np.random.default_rng(0)
    conditions = ([rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 3, 4))], [np.ones((2, 5)), np.ones((2, 3))],
                  [rng.standard_normal((2, 4))] * 2, rng.standard_normal((2, 8)), np.arange(6.0).reshape(3, 2))
    flat = leaves(conditions)
    assert len(flat) == 8 and all(a is b for a, b in zip(flat[:2], conditions[0]))
    copies = [a.copy() for a in flat]
    rebuilt = refill(conditions, iter(copies))
    assert type(rebuilt) is tuple and [type(x) for x in rebuilt] == [list, list, list, np.ndarray, np.ndarray]
    assert all(a is b for a, b in zip(leaves(rebuilt), copies))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(rebuilt), flat))


def test_worker_threads_do_not_spin_between_the_alternating_sessions_unless_asked(tiny_build):
    key = "session.intra_op.allow_spinning"
    quiet = Pipeline.load(tiny_build).backend.sessions
    assert {s.get_session_options().get_session_config_entry(key) for s in quiet.values()} == {"0"}
    busy = Pipeline.load(tiny_build, spinning=True).backend.sessions
    assert {s.get_session_options().get_session_config_entry(key) for s in busy.values()} == {"1"}
