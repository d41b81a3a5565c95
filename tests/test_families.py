"""Diffusers checkpoints of the LLM-encoder family (Z-Image, Lumina-Image-2.0): tiny pipelines with seeded random
weights saved by diffusers and loaded through the same path a real checkpoint takes; the FP32 build against the
diffusers pipeline itself, every graph at unseen shapes, quantized builds through the image gate, engines."""
import ast
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lidit_export.check.metrics import psnr, ssim
from lidit_export.errors import LiditError
from lidit_export.export.graph_spec import ShapeProfile
from lidit_export.stages import BuildOptions, build_pipeline
from lidit_runtime.errors import ConfigError
from lidit_runtime.pipeline import Pipeline, initial_noise
from lidit_runtime.precision import Precision

from helpers import needs_smollm2

pytestmark = needs_smollm2
FAMILIES = ["z-image-tiny", "lumina2-tiny"]
PROMPTS = ["a red cat sitting on a blue chair", "two dogs"]
PROFILE = dict(max_batch=2, max_image=96)
SIZE = dict(height=64, width=96)  # the export traced 96 x 96: other sides and prompt lengths than that
# Six guidance settings per family, in the request's terms; the diffusers call is derived from each.
SETTINGS = [dict(cfg=0.0), dict(cfg=3.0), dict(cfg=1.5), dict(cfg=3.0, cfg_truncation=0.3),
            dict(cfg=3.0, cfg_normalization=1.0), dict(cfg=2.5, cfg_truncation=0.6, cfg_normalization=0.0)]


def diffusers_kwargs(name: str, setting: dict) -> dict:
    """The same setting as diffusers' own arguments (Z-Image: cfg_truncation / cfg_normalization floats;
    Lumina-2: cfg_trunc_ratio and a boolean cfg_normalization, on by default)."""
    if name == "z-image-tiny":
        return dict(guidance_scale=setting["cfg"], cfg_truncation=setting.get("cfg_truncation", 1.0),
                    cfg_normalization=setting.get("cfg_normalization", 0.0))
    return dict(guidance_scale=setting["cfg"], cfg_trunc_ratio=setting.get("cfg_truncation", 1.0),
                cfg_normalization=bool(setting.get("cfg_normalization", 1.0)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from lidit_export.presets import create_preset

    root = tmp_path_factory.mktemp("families")
    return {name: create_preset(name, root / name, seed=0) for name in FAMILIES}


@pytest.fixture(scope="module")
def loaded(folders):
    from lidit_export.families.build import load_pipeline

    return {name: load_pipeline(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def references(folders, loaded):
    from lidit_export.families.reference import FamilyReference

    return {name: FamilyReference(folder, ShapeProfile(**PROFILE), loaded[name]) for name, folder in folders.items()}


def build(folder, out, precision="fp32", **engines):
    from lidit_export.engine.builder import EngineOptions

    options = BuildOptions(precision=precision, num_prompts=4, steps=3, profile=ShapeProfile(**PROFILE),
                           engines=EngineOptions(**engines) if engines else None)
    logs = []
    manifest = build_pipeline(folder, out, options, progress=logs.append)
    return manifest, logs


@pytest.fixture(scope="module")
def builds(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("family_builds")
    return {name: build(folder, root / name)[0] and root / name for name, folder in folders.items()}


def diffusers_latents(pipe, name, setting, steps=4, seed=3, prompts=PROMPTS, output_type="latent"):
    shape = (len(prompts), pipe.transformer.config.in_channels, SIZE["height"] // pipe.vae_scale_factor,
             SIZE["width"] // pipe.vae_scale_factor)
    noise = torch.from_numpy(initial_noise(shape, seed))  # the runtime's noise, handed to diffusers
    out = pipe(prompts, num_inference_steps=steps, latents=noise, output_type=output_type, **SIZE,
               **diffusers_kwargs(name, setting)).images
    return out.numpy() if output_type == "latent" else out


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_folder_is_a_diffusers_checkpoint(folders, loaded, name):
    index = json.loads((folders[name] / "model_index.json").read_text())
    family, pipe = loaded[name]
    assert index["_class_name"] == family.pipeline_class == type(pipe).__name__
    assert sorted(p.name for p in folders[name].glob("*/*.safetensors")) == [
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors", "model.safetensors"]
    assert not list(folders[name].rglob("*.bin"))


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_build_equals_the_diffusers_pipeline_over_six_guidance_settings(builds, loaded, name):
    family, pipe = loaded[name]
    runtime = Pipeline.load(builds[name])
    for setting in SETTINGS:
        ours = runtime.generate(PROMPTS, steps=4, seed=3, **SIZE, **setting).latents
        ref = diffusers_latents(pipe, name, setting)
        rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        assert rel <= 1e-5, (setting, rel)
    # the settings really differ: truncation and renormalisation change the latents
    plain = runtime.generate(PROMPTS, steps=4, seed=3, **SIZE, cfg=3.0).latents
    for setting in (dict(cfg_truncation=0.3), dict(cfg_normalization=1.0 if name == "z-image-tiny" else 0.0)):
        assert np.abs(runtime.generate(PROMPTS, steps=4, seed=3, **SIZE, cfg=3.0, **setting).latents - plain).max() > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_images_equal_the_pipelines_to_one_level(builds, loaded, name):
    family, pipe = loaded[name]
    runtime = Pipeline.load(builds[name])
    ours = runtime.generate(PROMPTS[:1], steps=3, seed=5, **SIZE).images[0]
    noise = torch.from_numpy(initial_noise((1, 4, SIZE["height"] // pipe.vae_scale_factor,
                                            SIZE["width"] // pipe.vae_scale_factor), 5))
    ref = pipe(PROMPTS[:1], num_inference_steps=3, latents=noise, output_type="np", **SIZE).images[0]
    ref = (ref * 255).round().astype(np.int16)
    assert ours.shape == (SIZE["height"], SIZE["width"], 3) and ours.std() > 5
    assert np.abs(ours.astype(np.int16) - ref).max() <= 1


@pytest.mark.parametrize("name", FAMILIES)
def test_every_graph_matches_its_module_at_two_unseen_shapes(builds, references, name):
    """Each ONNX graph against the torch module it was traced from, at batches, caption lengths and latent sizes
    it was not traced at (the export shape: batch 2, 96 x 96 px)."""
    from lidit_export.check.parity import THRESHOLDS
    from lidit_export.families.parity import component_rows

    runtime = Pipeline.load(builds[name])
    rows = component_rows(references[name], runtime, THRESHOLDS)
    assert {r["component"] for r in rows} == {"encoder_0", "refiner", "dit", "vae_decoder"} and len(rows) == 10
    batches = {r["inputs"]["latents"][0] for r in rows if r["component"] == "dit"}
    latents = {tuple(r["inputs"]["latents"][2:]) for r in rows if r["component"] == "dit"}
    assert batches == {3, 1} and len(latents) == 2 and (12, 12) not in latents  # not the traced shape
    for r in rows:
        assert r["passed"] and r["rel_l2"] <= 1e-5, r
    if name == "z-image-tiny":  # captions padded to multiples of 32 with attended pad tokens
        masks = [r for r in rows if r["output"] == "context_mask"]
        assert all(r["shape"][1] % 32 == 0 for r in masks)


@pytest.mark.parametrize("name", FAMILIES)
def test_parity_command_checks_a_build_against_diffusers(folders, builds, name, tmp_path):
    from lidit_export.check.parity import run_parity

    report = run_parity(folders[name], builds[name], tmp_path / "parity", steps=4)
    assert report.passed, report.failures
    assert report.image["reference"] == "the diffusers pipeline" and report.image["psnr_db"] >= 60
    assert report.trajectory["min_cosine"] >= 0.99999 and (tmp_path / "parity" / "parity.json").exists()


def test_one_runtime_for_every_family(builds):
    """No family branches in the runtime: each build loads through the same Pipeline.load and its chain is data."""
    chains = {}
    for name, out in builds.items():
        runtime = Pipeline.load(out)
        chains[name] = runtime.chain
        assert runtime.generate("a cat", steps=2, **SIZE).images.shape == (1, 64, 96, 3)
    assert chains["z-image-tiny"].family == "z-image" and chains["lumina2-tiny"].family == "lumina2"
    assert chains["z-image-tiny"].guidance != chains["lumina2-tiny"].guidance
    # no name, attribute or string of the runtime's code (comments and docstrings aside) names a family
    words = []
    for file in Path(Pipeline.load.__code__.co_filename).parent.rglob("*.py"):
        tree = ast.parse(file.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                words.append(node.id)
            elif isinstance(node, ast.Attribute):
                words.append(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words.append(node.value)
    named = [w for w in words if re.search(r"z[-_ ]?image|lumina", w, re.IGNORECASE)]
    assert len(words) > 1000 and not named, named


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_quantized_builds_pass_the_image_gate_against_diffusers(folders, loaded, name, precision, tmp_path):
    family, pipe = loaded[name]
    manifest, logs = build(folders[name], tmp_path / precision, precision)
    assert manifest.components["dit"].precision == precision == manifest.components["refiner"].precision
    assert any("kept (" in line for line in logs)  # the family recipe keeps its sensitive layers
    runtime = Pipeline.load(tmp_path / precision)
    gate = Precision(precision).policy.thresholds
    for i, prompt in enumerate(PROMPTS):
        ours = runtime.generate([prompt], steps=4, seed=i, **SIZE).images[0]
        noise = torch.from_numpy(initial_noise((1, 4, SIZE["height"] // pipe.vae_scale_factor,
                                                SIZE["width"] // pipe.vae_scale_factor), i))
        ref = pipe([prompt], num_inference_steps=4, latents=noise, output_type="np", **SIZE).images[0]
        ref = (ref * 255).round().astype(np.uint8)
        assert psnr(ours, ref) >= gate.image_psnr_db and ssim(ours, ref) >= gate.image_ssim, (psnr(ours, ref),
                                                                                               ssim(ours, ref))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT for RTX not installed: pip install tensorrt-rtx")
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_tensorrt_for_rtx_builds_every_engine(folders, name, precision, tmp_path):
    """Built on this CPU for an RTX GPU (compute capability 8.9); running them needs that GPU."""
    manifest, _ = build(folders[name], tmp_path / "trt", precision, target="trt-rtx")
    assert set(manifest.engines) == {"encoder_0", "refiner", "dit", "vae_decoder"}
    for rec in manifest.engines.values():
        assert rec.target == "trt-rtx" and (tmp_path / "trt" / rec.file).stat().st_size > 10_000
        assert rec.dims == manifest.components[rec.name].dims
        assert rec.precision == manifest.components[rec.name].precision
    assert manifest.engines["dit"].precision == precision


# --- untrusted folders and requests -------------------------------------------------------------------------

def copy_folder(folders, name, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folders[name], out)
    return out


def edit_index(folder: Path, **entries):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(entries)
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("edit, message", [
    (dict(_class_name="FluxPipeline"), "'FluxPipeline' is not supported"),
    (dict(scheduler=["os", "system"]), "scheduler=['os', 'system'] is not what a ZImagePipeline folder holds"),
    (dict(transformer=["diffusers", "UNet2DConditionModel"]), "transformer="),
])
def test_foreign_classes_in_the_index_are_refused_before_diffusers_reads_it(folders, tmp_path, edit, message):
    from lidit_export.families.build import load_pipeline

    folder = copy_folder(folders, "z-image-tiny", tmp_path)
    edit_index(folder, **edit)
    with pytest.raises(LiditError, match=re.escape(message)):
        load_pipeline(folder)


def test_pickles_and_links_out_are_refused(folders, tmp_path):
    from lidit_export.families.build import load_pipeline

    folder = copy_folder(folders, "lumina2-tiny", tmp_path)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(LiditError, match="no .safetensors weights"):
        load_pipeline(folder)
    weights.with_suffix(".bin").rename(weights)
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (folder / "vae" / "config.json").unlink()
    os.symlink(secret, folder / "vae" / "config.json")
    with pytest.raises(LiditError, match="link out of the model folder"):
        load_pipeline(folder)


def test_cli_builds_and_draws_a_family_checkpoint_and_refuses_bad_requests(folders, builds, tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lidit_export.cli", *args], capture_output=True, text=True)

    out = tmp_path / "img.png"
    run = cli("generate", "--backend", "onnxruntime", "--build", str(builds["z-image-tiny"]), "--prompt", "a cat",
              "--steps", "2", "--height", "64", "--width", "64", "--cfg-truncation", "0.5", "--out", str(out), "--quiet")
    assert run.returncode == 0 and out.stat().st_size > 100, run.stderr
    for flags, message in ((["--cfg-truncation", "1.5"], "--cfg-truncation: cfg_truncation=1.5 must lie between 0 and 1"),
                           (["--cfg-normalization", "-1"], "--cfg-normalization: cfg_normalization=-1.0 must lie")):
        run = cli("generate", "--backend", "onnxruntime", "--build", str(builds["lumina2-tiny"]), "--prompt", "a",
                  "--steps", "2", "--out", str(out), *flags)
        assert run.returncode != 0 and run.stderr.strip().startswith("error: " + message), run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_guidance_fields_a_chain_lacks_are_refused(tiny_build):
    runtime = Pipeline.load(tiny_build)  # LI-DiT's chain: no truncation, no renormalisation
    with pytest.raises(ConfigError, match="the lidit chain has no guidance truncation"):
        runtime.generate("a cat", steps=1, cfg_truncation=0.5)
    with pytest.raises(ConfigError, match="the lidit chain has no guidance renormalisation"):
        runtime.generate("a cat", steps=1, cfg_normalization=1.0)


def test_negative_prompts_get_their_own_template(builds):
    runtime = Pipeline.load(builds["lumina2-tiny"])
    tok = runtime.tokenizers[0]
    assert tok.rows([""], negative=True) == [[0]]  # Lumina-2: BOS alone, no system prompt for the negative
    assert len(tok.rows([""])[0]) > 20  # the positive prompt carries the system prompt


def test_export_info_and_calibrate_take_a_checkpoint(folders, tmp_path):
    import subprocess
    import sys

    def cli(*args):
        run = subprocess.run([sys.executable, "-m", "lidit_export.cli", *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    folder = str(folders["lumina2-tiny"])
    cli("export", "--model", folder, "--out", str(tmp_path / "b"), "--max-image", "96", "--max-batch", "1")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert sorted(manifest["components"]) == ["dit", "encoder_0", "refiner", "vae_decoder"]
    assert manifest["chain"]["family"] == "lumina2" and manifest["encoders"][0]["whole_text"]
    info = json.loads(cli("info", folder, "--json"))
    assert info["pipeline"] == "Lumina2Pipeline" and info["tapped_state"] == "hidden_states[-2]"
    assert all(c["params"] > 10_000 for c in info["components"].values())
    out = cli("calibrate", "--model", folder, "--out", str(tmp_path / "b"), "--num", "2", "--steps", "2")
    assert re.search(r"dit: \d+ layers calibrated", out)


def test_sides_beyond_the_rotary_tables_are_refused(folders, tmp_path):
    with pytest.raises(ConfigError, match=r"max_image=512 is above the largest side this model's rotary tables "
                                          r"cover \(256 px\)"):
        build_pipeline(folders["z-image-tiny"], tmp_path / "b",
                       BuildOptions(profile=ShapeProfile(max_image=512), engines=None), progress=lambda *_: None)


@pytest.mark.parametrize("path, value, message", [
    (("chain", "guidance", "applies"), "sometimes", "chain.guidance.applies='sometimes' is not one of"),
    (("chain", "latent_scale"), 0.0, "must be non-zero"),
    (("chain", "timestep_scale"), "fast", "manifest.chain.timestep_scale must be a finite number"),
    (("encoders", 0, "prefix_cached"), True, "a cached prefix needs the prefix tokenized apart"),
    (("scheduler", "shift_seq_len"), "pixels", "shift_seq_len='pixels' must be one of"),
])
def test_damaged_chain_records_are_refused(builds, tmp_path, path, value, message):
    from lidit_runtime.errors import ArtifactError

    out = tmp_path / "b"
    shutil.copytree(builds["lumina2-tiny"], out)
    data = json.loads((out / "manifest.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=re.escape(message)) as e:
        Pipeline.load(out)
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


def test_cpp_runtime_draws_the_families_like_the_python_runtime(builds, tmp_path):
    """liblidit runs both families' builds from their manifests alone (refiner once, flow shifts, the guidance
    rules): per setting, pixels within 1 level and latents at cosine >= 0.99999 of lidit_runtime's."""
    import subprocess

    from PIL import Image

    from test_cpp import cpp_tool

    tool = cpp_tool("lidit-generate")
    for name, build_dir in builds.items():
        pipe = Pipeline.load(build_dir)
        for i, setting in enumerate(SETTINGS):
            ref = pipe.generate(PROMPTS[0], seed=i, steps=4, **SIZE, **setting)
            flags = [f"--{k.replace('_', '-')}" if k != "cfg" else "--cfg" for k in setting]
            args = [str(a) for kv in zip(flags, setting.values()) for a in kv]
            out, lat = tmp_path / f"{name}{i}.png", tmp_path / f"{name}{i}.f32"
            run = subprocess.run([tool, "--build", build_dir, "--prompt", PROMPTS[0], "--seed", str(i), "--steps", "4",
                                  "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", out,
                                  "--latents", lat, *args], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            image = np.asarray(Image.open(out)).astype(int)
            a = np.fromfile(lat, dtype=np.float32).astype(np.float64)
            b = ref.latents.ravel().astype(np.float64)
            cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert np.abs(image - ref.images[0]).max() <= 1 and cosine >= 0.99999, (name, setting, cosine)
