"""Model folders round-trip, generation is seeded and healthy, CFG runs as one 2B batch."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lidit_export.errors import ArtifactError, ConfigError
from lidit_export.model.pipeline import INDEX, WEIGHTS, LiDiTPipeline, TorchBackend
from lidit_runtime.pipeline import GenerateRequest, run_chain

REQUEST = GenerateRequest(["a red circle to the left of a blue square"], steps=4, cfg=5.0, seed=3, height=64, width=64)


def test_every_parameter_of_a_random_preset_is_randomised(tiny_folder):
    for key in WEIGHTS.values():
        state = load_file(str(tiny_folder / key))
        zero = [name for name, t in state.items() if t.numel() and not t.any()]
        assert not zero, f"{key}: all-zero tensors {zero[:5]}"


def test_same_seed_gives_the_same_image_and_another_seed_does_not(tiny_pipe):
    a = tiny_pipe.generate(REQUEST)
    b = tiny_pipe.generate(REQUEST)
    c = tiny_pipe.generate(GenerateRequest(REQUEST.prompts, steps=4, seed=4, height=64, width=64))
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.latents, b.latents)
    assert np.abs(a.latents - c.latents).mean() > 0.1


def test_generated_image_is_finite_and_not_flat(tiny_pipe):
    result = tiny_pipe.generate(REQUEST)
    assert result.images.dtype == np.uint8 and result.images.shape == (1, 64, 64, 3)
    assert np.isfinite(result.latents).all()
    assert result.images.std() > 5.0
    assert set(result.timings) >= {"encode", "refine", "denoise", "decode", "total"}


def test_save_and_load_round_trip_exactly(tiny_pipe, tmp_path):
    out = tiny_pipe.save_pretrained(tmp_path / "copy")
    again = LiDiTPipeline.from_pretrained(out)
    for a, b in ((tiny_pipe.refiner, again.refiner), (tiny_pipe.transformer, again.transformer),
                 (tiny_pipe.autoencoder, again.autoencoder), *zip(tiny_pipe.encoders, again.encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert again.config == tiny_pipe.config
    assert np.array_equal(again.generate(REQUEST).images, tiny_pipe.generate(REQUEST).images)
    assert not list(tmp_path.glob(".*tmp"))  # no temp folders left behind


def test_save_refuses_to_overwrite_without_asking(tiny_pipe, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ArtifactError, match="--overwrite"):
        tiny_pipe.save_pretrained(tmp_path / "taken")


class CountingBackend(TorchBackend):
    def __init__(self, pipe):
        super().__init__(pipe)
        self.denoise_batches, self.encode_batches = [], []

    def encode_prompt(self, index, input_ids, attention_mask):
        self.encode_batches.append(input_ids.shape[0])
        return super().encode_prompt(index, input_ids, attention_mask)

    def denoise(self, latents, *args):
        self.denoise_batches.append(latents.shape[0])
        return super().denoise(latents, *args)


@torch.inference_mode()
def test_cfg_runs_cond_and_uncond_as_one_2b_batch(tiny_pipe):
    backend = CountingBackend(tiny_pipe)
    request = GenerateRequest(["a cat", "a dog", "a tree"], steps=3, cfg=4.0, height=32, width=32)
    run_chain(backend, tiny_pipe.tokenizers, tiny_pipe.geometry, tiny_pipe.config.scheduler, request)
    assert backend.denoise_batches == [6, 6, 6]
    assert backend.encode_batches == [6, 6]  # each LLM encodes prompts + empty captions once, together
    backend = CountingBackend(tiny_pipe)
    request.cfg = 1.0
    run_chain(backend, tiny_pipe.tokenizers, tiny_pipe.geometry, tiny_pipe.config.scheduler, request)
    assert backend.denoise_batches == [3, 3, 3]


def test_cfg_combines_cond_and_uncond_outputs(tiny_pipe):
    # cfg = 0 must equal sampling with the unconditional (empty) prompt alone and cfg = 1.
    guided = tiny_pipe.generate(GenerateRequest(["a red cat"], steps=3, cfg=0.0, height=32, width=32))
    uncond = tiny_pipe.generate(GenerateRequest([""], steps=3, cfg=1.0, height=32, width=32))
    np.testing.assert_allclose(guided.latents, uncond.latents, rtol=1e-4, atol=1e-4)


def test_missing_folder_and_bad_config_are_reported_with_the_fix(tiny_folder, tmp_path):
    with pytest.raises(ArtifactError, match="lidit-export init"):
        LiDiTPipeline.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = json.loads((tiny_folder / INDEX).read_text())
    data["transformer"]["num_heads"] = 5
    (broken / INDEX).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="num_heads=5"):
        LiDiTPipeline.from_pretrained(broken)


def test_missing_weights_are_reported(tiny_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    (copy / WEIGHTS["dit"]).unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        LiDiTPipeline.from_pretrained(copy)
