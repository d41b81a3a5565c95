"""The timestep-dependent refiner runs for every step before the loop, in batched calls: the same numbers as
once per step, in ceil(steps / (REFINER_ROWS / rows)) calls."""
import numpy as np
import pytest

import lidit_runtime.pipeline as pipeline
from lidit_runtime.pipeline import Pipeline, run_chain


class Counting:
    """Wraps a backend and counts refiner calls and their rows."""

    def __init__(self, backend):
        self.inner = backend
        self.refiner_rows = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def refine_tokens(self, hidden, masks, pooled, timestep):
        self.refiner_rows.append(hidden[0].shape[0])
        return self.inner.refine_tokens(hidden, masks, pooled, timestep)


def draw(pipe, request, batch_refiner, limit=None):
    backend = Counting(pipe.backend)
    if limit is not None:
        backend.max_refiner_rows = limit
    result = run_chain(backend, pipe.tokenizers, pipe.geometry, pipe.scheduler, pipe.prepare(request),
                       limits=pipe.limits, chain=pipe.chain, batch_refiner=batch_refiner)
    return result, backend.refiner_rows


@pytest.mark.parametrize("prompts, cfg, limit", [(["a red cat"], 4.0, None), (["a cat", "two small dogs"], 4.0, 12),
                                                 (["a cat"], 1.0, 3)])
def test_batched_refiner_equals_the_per_step_refiner(tiny_build, prompts, cfg, limit):
    pipe = Pipeline.load(tiny_build)
    request = dict(prompts=prompts, steps=7, cfg=cfg, seed=2, height=32, width=32)
    per_step, calls = draw(pipe, pipeline.GenerateRequest(**request), False)
    rows = len(prompts) * (2 if cfg != 1.0 else 1)
    assert calls == [rows] * 7
    batched, calls = draw(pipe, pipeline.GenerateRequest(**request), True, limit)
    per_call = max(1, (limit or pipeline.REFINER_ROWS) // rows)
    assert calls == [rows * min(per_call, 7 - i) for i in range(0, 7, per_call)]  # ceil(7 / per_call) calls
    assert np.abs(batched.latents - per_step.latents).max() <= 1e-5
    assert np.array_equal(batched.images, per_step.images)
