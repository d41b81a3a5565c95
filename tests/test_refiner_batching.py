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


@pytest.mark.parametrize("prompts, negative", [(["a red cat"], ""), (["a cat", "two small dogs"], ""),
                                               (["a cat"], "blurry, low quality, a very long negative prompt here")])
def test_cached_negative_refiner_rows_equal_refining_every_row(tiny_build, prompts, negative):
    """With the pipeline's UncondCache, the negative prompt is refined once per schedule (one row per step, at its
    own length) and the cond rows alone per request: the same latents as refining all 2B rows together, whether
    the negative is shorter or longer than the prompts."""
    pipe = Pipeline.load(tiny_build)
    request = pipeline.GenerateRequest(prompts=prompts, negative_prompt=negative, steps=5, cfg=4.0, seed=3,
                                       height=32, width=32)
    plain, calls = draw(pipe, request, True)  # no cache: every row refined together
    assert calls == [2 * len(prompts) * 5]
    backend = Counting(pipe.backend)
    cache = pipeline.UncondCache()
    runs = [run_chain(backend, pipe.tokenizers, pipe.geometry, pipe.scheduler, pipe.prepare(request),
                      limits=pipe.limits, chain=pipe.chain, uncond_cache=cache) for _ in range(2)]
    assert backend.refiner_rows == [5, len(prompts) * 5, len(prompts) * 5]  # the negative once, then cond rows only
    assert np.array_equal(runs[0].latents, runs[1].latents)
    rel = np.linalg.norm(runs[1].latents - plain.latents) / np.linalg.norm(plain.latents)
    assert rel < 1e-5
    assert np.abs(runs[1].images.astype(int) - plain.images.astype(int)).max() <= 1


def test_uncond_cache_is_bounded_least_recently_used_first():
    cache = pipeline.UncondCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
