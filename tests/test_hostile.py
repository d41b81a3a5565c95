"""Hostile but fair input: every case exits non-zero (or raises our error) with one line that says what
was wrong and what to do, never a traceback and never a silently wrong result.

Four tables: command-line flags, damaged model folders, damaged build folders, Python API requests.
"""
import json
import math
import os
import shutil
import time

import numpy as np
import pytest

from lidit_export.cli import main
from lidit_runtime.errors import LiditError
from lidit_runtime.manifest import file_sha256
from lidit_runtime.pipeline import Pipeline


def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse exits itself
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, needles, expected_code=2):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------------
# 1. command-line flags

def _generate(build, tmp, *extra):
    """Without --quiet: nothing but the error may reach stderr (no progress bar before it)."""
    return ["generate", "--backend", "onnxruntime", "--build", build, "--prompt", "a cat", "--out", tmp / "x.png",
            "--steps", "1", *extra]


GENERATE_FLAGS = [
    (["--height", "0"], ["--height", "0 must be >= 1"]),
    (["--width", "-64"], ["--width", "-64 must be >= 1"]),
    (["--steps", "0"], ["--steps", "0 must be >= 1"]),
    (["--steps", "abc"], ["'abc' is not an integer"]),
    (["--cfg", "nan"], ["--cfg", "finite"]),
    (["--cfg", "inf"], ["--cfg", "finite"]),
    (["--cfg", "1e38"], ["error: --cfg: cfg=1e+38", "between 0 and 100"]),
    (["--cfg", "-1"], ["cfg=-1.0", "between 0 and 100"]),
    (["--seed", "-1"], ["--seed", "must be >= 0"]),
    (["--seed", str(2**64)], ["--seed", "<= 18446744073709551615"]),
    (["--height", "50"], ["multiples of 16"]),
    (["--height", "100000", "--width", "100000"], ["over the largest side", "--max-image 100000"]),
    (["--height", "256"], ["over the largest side this build was exported for (128 px)"]),
    (["--backend", "bogus"], ["invalid choice: 'bogus'"]),
    (["--dtype", "float8"], ["invalid choice: 'float8'"]),
    (["--bogus-flag"], ["unrecognized arguments: --bogus-flag"]),
]


@pytest.mark.parametrize("extra,needles", GENERATE_FLAGS, ids=[" ".join(c[0]) for c in GENERATE_FLAGS])
def test_generate_refuses_bad_numbers_before_any_work(tiny_build, tmp_path, capsys, extra, needles):
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, *_generate(tiny_build, tmp_path, *extra))
    assert_refused(code, err, needles)
    assert time.perf_counter() - t0 < 10  # refused before allocating (a 100000^2 image would take minutes)
    assert not (tmp_path / "x.png").exists()


OUTPUTS = [
    ("x.txt", ["extension '.txt'", ".png, .jpg, .jpeg, .webp"]),
    ("noext", ["extension '(none)'"]),
    ("folder", ["is a folder"]),
    ("afile/x.png", ["cannot write into", "afile"]),
]


@pytest.mark.parametrize("out,needles", OUTPUTS, ids=[o for o, _ in OUTPUTS])
def test_generate_checks_the_output_path_first(tiny_build, tmp_path, capsys, out, needles):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder")
    args = _generate(tiny_build, tmp_path)
    args[args.index("--out") + 1] = tmp_path / out
    code, _, err = run_cli(capsys, *args)
    assert_refused(code, err, needles)


@pytest.mark.parametrize("suffix,magic", [(".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF"), (".png", b"\x89PNG")])
def test_generate_writes_the_format_its_extension_names(tiny_build, tmp_path, capsys, suffix, magic):
    out = tmp_path / "new" / f"image{suffix}"
    args = _generate(tiny_build, tmp_path)
    args[args.index("--out") + 1] = out
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert out.read_bytes().startswith(magic)


def test_generate_with_a_too_long_prompt_is_refused(tiny_build, tmp_path, capsys):
    args = _generate(tiny_build, tmp_path)
    args[args.index("--prompt") + 1] = "cat " * 6000
    code, _, err = run_cli(capsys, *args)
    assert_refused(code, err, ["24000 characters", "over the 20000 allowed"])


COMMANDS = [  # (args built from tiny folder M, build B, tmp T), expected message parts
    (lambda M, B, T: ["generate", "--backend", "onnxruntime", "--build", T / "none", "--prompt", "x", "--out", T / "x.png"],
     ["not found", "lidit-export export"]),
    (lambda M, B, T: ["generate", "--backend", "onnxruntime", "--build", T / "afile", "--prompt", "x", "--out", T / "x.png"],
     ["not found (or not a folder)"]),
    (lambda M, B, T: ["generate", "--backend", "onnxruntime", "--prompt", "x", "--out", T / "x.png"], ["--build DIR"]),
    (lambda M, B, T: ["generate", "--prompt", "x", "--out", T / "x.png"], ["--model DIR"]),
    (lambda M, B, T: ["generate", "--model", T / "afile", "--prompt", "x", "--out", T / "x.png"], ["not a model folder"]),
    (lambda M, B, T: ["generate", "--model", M, "--device", "cuda", "--prompt", "x", "--out", T / "x.png"],
     ["error: --device: device cuda asked for, but torch sees no GPU; use cpu"]),
    (lambda M, B, T: ["generate", "--model", M, "--device", "quantum", "--prompt", "x", "--out", T / "x.png"],
     ["not a device torch knows"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--steps", "0"], ["--steps", "0 must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--num", "0"], ["--num", "0 must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--num", "-1"], ["--num", "-1 must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--max-batch", "0"], ["--max-batch", "must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--max-batch", "-3"], ["--max-batch", "must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--max-image", "0"], ["--max-image", "must be >= 1"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--max-image", "16", "--target", "none"],
     ["error: --max-image: max_image=16 is below the model's default side 64"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--precision", "fp7"], ["invalid choice: 'fp7'"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--alpha", "nan"], ["--alpha", "finite"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--precision", "int8", "--alpha", "2"],
     ["error: --alpha: smoothquant_alpha=2.0 must lie in [0, 1]"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--opt-level", "9"], ["--opt-level", "<= 5"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--workspace-gib", "0"], ["error: --workspace-gib: workspace_gib=0.0 must be > 0"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--compute-capability", "abc"],
     ["error: --compute-capability: compute_capability='abc' must read MAJOR.MINOR"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "b", "--profile", "dit.latent_height=1"],
     ["COMPONENT.DIM=MIN,OPT,MAX"]),
    (lambda M, B, T: ["build", "--model", M, "--out", T / "afile"], ["is a file, not a build folder"]),
    (lambda M, B, T: ["build", "--model", T / "none", "--out", T / "b"], ["not a model folder"]),
    (lambda M, B, T: ["export", "--model", M, "--out", T / "b", "--max-batch", "0"], ["--max-batch", "must be >= 1"]),
    (lambda M, B, T: ["train", "--work", T / "w", "--heads", "0"], ["--heads", "0 must be >= 1"]),
    (lambda M, B, T: ["train", "--work", T / "w", "--lr", "nan"], ["--lr", "finite"]),
    (lambda M, B, T: ["train", "--work", T / "w", "--lr", "-1"], ["lr must be > 0"]),
    (lambda M, B, T: ["train", "--work", T / "w", "--width", "100", "--heads", "3"],
     ["error: --width: width=100 must be a multiple of 32 and of heads (3)"]),
    (lambda M, B, T: ["info", T / "afile"], ["info takes a model folder", "is a file"]),
    (lambda M, B, T: ["info", T / "none"], ["is not there"]),
    (lambda M, B, T: ["info", M, "--height", "0"], ["--height", "must be >= 1"]),
    (lambda M, B, T: ["parity", "--model", M, "--build", B, "--steps", "0"], ["--steps", "must be >= 1"]),
    (lambda M, B, T: ["report", "--model", M, "--build", B, "--num-eval", "0"], ["--num-eval", "must be >= 1"]),
    (lambda M, B, T: ["calibrate", "--model", M, "--out", T / "b", "--num", "0"], ["--num", "must be >= 1"]),
    (lambda M, B, T: ["init", "--preset", "huge", "--out", T / "m"], ["choose one of"]),
    (lambda M, B, T: ["init", "--preset", "tiny", "--out", T / "afile"], ["already exists", "--overwrite"]),
    (lambda M, B, T: ["init", "--preset", "tiny", "--out", T / "m", "--seed", "-5"], ["--seed", "must be >= 0"]),
    (lambda M, B, T: [], ["required: command"]),
]


@pytest.mark.parametrize("make,needles", COMMANDS, ids=[f"{i:02d}-{c[1][0][:30]}" for i, c in enumerate(COMMANDS)])
def test_commands_refuse_bad_flags_and_paths_with_one_line(tiny_folder, tiny_build, tmp_path, capsys, make, needles):
    (tmp_path / "afile").write_text("not a folder")
    code, _, err = run_cli(capsys, *make(tiny_folder, tiny_build, tmp_path))
    assert_refused(code, err, needles)


# ---------------------------------------------------------------------------------------------------
# 2. prompt files

PROMPT_FILES = [
    ("missing.txt", None, ["prompt file", "not found"]),
    ("bad.txt", b"\xff\xfe caption\n", ["is not UTF-8 text"]),
    ("bad.jsonl", b'{"text": "a cat"}\n{oops\n', ["bad.jsonl:2 is not valid JSON"]),
    ("notext.jsonl", b'{"caption": "a cat"}\n', ["notext.jsonl:1 must be a JSON object with a string \"text\" field"]),
    ("list.jsonl", b'["a cat"]\n', ["list.jsonl:1 must be a JSON object"]),
    ("empty.txt", b"\n\n", ["has no prompts"]),
    ("fifo", "fifo", ["is not a regular file"]),
]


@pytest.mark.parametrize("name,content,needles", PROMPT_FILES, ids=[p[0] for p in PROMPT_FILES])
def test_calibration_prompt_files_are_checked(tiny_folder, tmp_path, capsys, name, content, needles):
    path = tmp_path / name
    if content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        path.write_bytes(content)
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, "build", "--model", tiny_folder, "--out", tmp_path / "b", "--precision", "fp8",
                           "--prompts", path, "--num", "1", "--steps", "1", "--target", "none")
    assert_refused(code, err, needles)
    assert time.perf_counter() - t0 < 30  # a FIFO is never opened (it would block forever)


# ---------------------------------------------------------------------------------------------------
# 3. damaged model folders

def _edit_json(path, change):
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))


def _set(keys, value):
    def change(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return data
    return change


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


MODEL_DAMAGE = [
    ("index is a list", lambda m: _edit_json(m / "model_index.json", lambda d: [d]), ["model_index must be a JSON object"]),
    ("index misses vae", lambda m: _edit_json(m / "model_index.json", lambda d: {k: v for k, v in d.items() if k != "vae"}),
     ["missing required fields ['vae']"]),
    ("width is a string", lambda m: _edit_json(m / "model_index.json", _set(["transformer", "width"], "abc")),
     ["model_index.transformer.width must be an integer, got 'abc'"]),
    ("heads is a float", lambda m: _edit_json(m / "model_index.json", _set(["transformer", "num_heads"], 2.5)),
     ["num_heads must be an integer"]),
    ("scaling factor 0", lambda m: _edit_json(m / "model_index.json", _set(["vae", "scaling_factor"], 0)),
     ["vae.scaling_factor must be > 0"]),
    ("norm groups 0", lambda m: _edit_json(m / "model_index.json", _set(["vae", "norm_num_groups"], 0)),
     ["norm_num_groups", ">= 1"]),
    ("no vae blocks", lambda m: _edit_json(m / "model_index.json", _set(["vae", "block_out_channels"], [])),
     ["block_out_channels must be a non-empty list"]),
    ("llm path escapes", lambda m: _edit_json(m / "model_index.json", _set(["encoders", 0, "path"], "../../etc")),
     ["encoders[0].path='../../etc' must name a sub-folder"]),
    ("default height 50", lambda m: _edit_json(m / "model_index.json", _set(["default_height"], 50)),
     ["must be positive multiples of 16"]),
    ("unknown field", lambda m: _edit_json(m / "model_index.json", _set(["turbo"], True)), ["unknown fields ['turbo']"]),
    ("invalid json", lambda m: (m / "model_index.json").write_text("{"), ["is not valid JSON"]),
    ("not utf-8", lambda m: (m / "model_index.json").write_bytes(b"\xff\xff"), ["is not valid JSON"]),
    ("cfg nan in scheduler", lambda m: _edit_json(m / "model_index.json", _set(["scheduler", "default_cfg"], "nan")),
     ["default_cfg must be a finite number"]),
    ("truncated DiT weights", lambda m: _truncate(m / "transformer/model.safetensors"),
     ["is not a readable safetensors file"]),
    ("missing refiner weights", lambda m: (m / "refiner/model.safetensors").unlink(),
     ["refiner/model.safetensors is missing", "restore the model folder"]),
    ("DiT weights are a link out", lambda m: ((m / "transformer/model.safetensors").unlink(),
                                             (m / "transformer/model.safetensors").symlink_to("/etc/hostname")),
     ["resolves outside"]),
    ("pickle-only LLM", lambda m: [f.rename(f.with_name("pytorch_model.bin")) for f in (m / "llm_0").glob("*.safetensors")],
     ["no .safetensors weights", "never pickles"]),
    ("LLM config disagrees", lambda m: _edit_json(m / "llm_0/config.json", _set(["num_hidden_layers"], 7)),
     ["has 7 blocks", "do not match"]),
    ("LLM config missing", lambda m: (m / "llm_0/config.json").unlink(), ["config.json cannot be read"]),
    ("tokenizer missing", lambda m: (m / "llm_1/tokenizer.json").unlink(), ["tokenizer.json is missing"]),
    ("index is a link out", lambda m: (shutil.copy(m / "model_index.json", m.parent / "outside.json"),
                                       (m / "model_index.json").unlink(),
                                       (m / "model_index.json").symlink_to(m.parent / "outside.json")),
     ["model index model_index.json resolves outside"]),
]


@pytest.mark.parametrize("damage,needles", [(d, n) for _, d, n in MODEL_DAMAGE], ids=[c[0] for c in MODEL_DAMAGE])
def test_damaged_model_folders_are_refused_with_one_line(tiny_folder, tmp_path, capsys, damage, needles):
    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    damage(model)
    code, _, err = run_cli(capsys, "generate", "--model", model, "--prompt", "x", "--out", tmp_path / "x.png",
                           "--steps", "1", "--quiet")
    assert_refused(code, err, needles)


# ---------------------------------------------------------------------------------------------------
# 4. damaged build folders (the runtime must treat every build folder as untrusted)

def _manifest(build, change):
    _edit_json(build / "manifest.json", change)


def _component(name, key, value):
    return lambda b: _manifest(b, _set(["components", name, key], value))


def _rehash(build, name):
    """Make the manifest agree with a changed graph (a build that is consistent but wrong)."""
    path = build / json.loads((build / "manifest.json").read_text())["components"][name]["file"]
    _manifest(build, _set(["components", name, "sha256"], file_sha256(path)))


def _swap_tokenizers(build):
    data = json.loads((build / "manifest.json").read_text())
    a, b = data["encoders"][0], data["encoders"][1]
    a["tokenizer_file"], b["tokenizer_file"] = b["tokenizer_file"], a["tokenizer_file"]
    a["tokenizer_sha256"], b["tokenizer_sha256"] = b["tokenizer_sha256"], a["tokenizer_sha256"]
    (build / "manifest.json").write_text(json.dumps(data))


def _replace_tokenizer_keep_hash(build):
    data = json.loads((build / "manifest.json").read_text())
    first, second = (build / e["tokenizer_file"] for e in data["encoders"])
    first.write_bytes(second.read_bytes())


def _fifo_graph(build):
    data = json.loads((build / "manifest.json").read_text())
    (build / data["components"]["dit"]["file"]).unlink()
    os.mkfifo(build / data["components"]["dit"]["file"])


def _link_graph_out(build, target="/etc/passwd"):
    data = json.loads((build / "manifest.json").read_text())
    (build / data["components"]["dit"]["file"]).unlink()
    (build / data["components"]["dit"]["file"]).symlink_to(target)


def _fake_engine(build, digest_ok=False, name="dit"):
    data = json.loads((build / "manifest.json").read_text())
    engine = build / "engines" / "dit.trt.engine"
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"not really an engine")
    data["engines"] = {name: {"name": name, "file": "engines/dit.trt.engine",
                              "sha256": file_sha256(engine) if digest_ok else "0" * 64, "key": "k", "target": "trt",
                              "tensorrt_version": "10.0", "compute_capability": "8.9", "precision": "fp32",
                              "onnx_sha256": data["components"]["dit"]["sha256"], "dims": {}}}
    (build / "manifest.json").write_text(json.dumps(data))


def _truncate_graph(build):
    data = json.loads((build / "manifest.json").read_text())
    _truncate(build / data["components"]["dit"]["file"])


BUILD_DAMAGE = [
    ("manifest is a list", lambda b: _manifest(b, lambda d: [d]), ["holds a JSON list, not an object"]),
    ("manifest misses components", lambda b: _manifest(b, lambda d: {k: v for k, v in d.items() if k != "components"}),
     ["missing required fields ['components']"]),
    ("latent channels a string", lambda b: _manifest(b, _set(["latent_channels"], "16")),
     ["manifest.latent_channels must be an integer, got '16'"]),
    ("vae scale factor 0", lambda b: _manifest(b, _set(["vae_scale_factor"], 0)), ["vae_scale_factor=0 must be >= 1"]),
    ("old format", lambda b: _manifest(b, _set(["format"], "lidit-build/1")), ["has format 'lidit-build/1'"]),
    ("unknown field", lambda b: _manifest(b, _set(["turbo"], 1)), ["unknown fields ['turbo']"]),
    ("truncated manifest", lambda b: _truncate(b / "manifest.json"), ["is not valid JSON"]),
    ("manifest not utf-8", lambda b: (b / "manifest.json").write_bytes(b"\xff" * 10), ["is not valid JSON"]),
    ("manifest 17 MB", lambda b: (b / "manifest.json").write_bytes(b" " * (17 << 20)), ["over the 16777216"]),
    ("graph path escapes", _component("dit", "file", "../../../../etc/passwd"), ["'../../../../etc/passwd'", "is not a path inside"]),
    ("graph path absolute", _component("dit", "file", "/etc/passwd"), ["'/etc/passwd'", "is not a path inside"]),
    ("graph is a link out", _link_graph_out, ["resolves outside", "refusing to read it"]),
    ("graph is a FIFO", _fifo_graph, ["is not a regular file"]),
    ("graph is a link to /dev/zero", lambda b: _link_graph_out(b, "/dev/zero"), ["resolves outside"]),
    ("tokenizer is /dev/zero", lambda b: _manifest(b, _set(["encoders", 0, "tokenizer_file"], "/dev/zero")),
     ["tokenizer of encoder 0 path '/dev/zero'", "not a path inside"]),
    ("truncated graph", _truncate_graph, ["graph dit", "does not match its manifest hash"]),
    ("tokenizer replaced, hash kept", _replace_tokenizer_keep_hash, ["tokenizer of encoder 0", "does not match its manifest hash"]),
    ("tokenizers swapped, hashes swapped", _swap_tokenizers, ["prefix tokens", "not the tokenizer of this build"]),
    ("DiT missing", lambda b: _manifest(b, lambda d: {**d, "components": {k: v for k, v in d["components"].items()
                                                                         if k != "dit"}}),
     ["must be exactly"]),
    ("encoders empty", lambda b: _manifest(b, _set(["encoders"], [])), ["encoders is empty"]),
    ("dims inverted", lambda b: _manifest(b, _set(["components", "dit", "dims", "batch"], [8, 2, 1])),
     ["components.dit.dims.batch=[8, 2, 1] must be [min, opt, max]"]),
    ("latent dims missing", _component("dit", "dims", {"batch": [1, 2, 8]}),
     ["components.dit.dims lacks ['latent_height', 'latent_width']"]),
    ("unknown ORT level", _component("dit", "ort_optimization", "turbo"), ["ort_optimization='turbo'"]),
    ("sha256 not hex", _component("dit", "sha256", "x" * 64), ["components.dit.sha256 is not a sha256 hex digest"]),
    ("scheduler unknown sampler", lambda b: _manifest(b, _set(["scheduler", "sampler"], "magic")),
     ["scheduler.sampler='magic' is unknown"]),
    ("tampered engine, no TensorRT here", _fake_engine, ["engine dit", "does not match its manifest hash"]),
    ("engine of no component", lambda b: _fake_engine(b, True, "unet"), ["engines.unet names no component"]),
    ("graph I/O renamed", _component("dit", "inputs", [{"name": "x", "dtype": "float32", "shape": [1]}]),
     ["has inputs/outputs", "inconsistent"]),
]


@pytest.mark.parametrize("damage,needles", [(d, n) for _, d, n in BUILD_DAMAGE], ids=[c[0] for c in BUILD_DAMAGE])
def test_damaged_build_folders_are_refused_within_a_second(tiny_build, tmp_path, capsys, damage, needles):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    damage(build)
    t0 = time.perf_counter()
    with pytest.raises(LiditError) as raised:
        Pipeline.load(build)
    assert time.perf_counter() - t0 < 1.0  # nothing hangs on a FIFO or device file
    message = str(raised.value)
    assert "\n" not in message and all(n in message for n in needles), message
    code, _, err = run_cli(capsys, *_generate(build, tmp_path))
    assert_refused(code, err, needles)


def test_a_link_out_of_the_build_beside_the_graphs_is_refused(tiny_build, tmp_path):
    """A graph names its external data itself: a link planted beside the graphs could lead ONNX Runtime out."""
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "onnx" / "dit.onnx.data").symlink_to("/etc/passwd")
    with pytest.raises(LiditError, match="is a link out of the build folder"):
        Pipeline.load(build)


def test_a_nan_weight_fails_at_the_denoising_stage_not_as_a_black_image(tiny_build, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    path = build / json.loads((build / "manifest.json").read_text())["components"]["dit"]["file"]
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 2)
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    _rehash(build, "dit")
    code, _, err = run_cli(capsys, *_generate(build, tmp_path, "--quiet"))  # the steps ran: no bar before the error
    assert_refused(code, err, ["the denoising loop (refiner + DiT) produced NaN or infinite values"])
    assert not (tmp_path / "x.png").exists()


def test_a_model_folder_prompt_file_linking_out_is_refused(tiny_folder, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    (tmp_path / "secret.txt").write_text("not a caption\n")
    (model / "prompts.jsonl").symlink_to(tmp_path / "secret.txt")
    code, _, err = run_cli(capsys, "build", "--model", model, "--out", tmp_path / "b", "--precision", "fp8", "--num", "1",
                           "--steps", "1", "--target", "none")
    assert_refused(code, err, ["prompt file prompts.jsonl resolves outside"])


def test_a_damaged_calibration_cache_is_recalibrated_not_a_traceback(tiny_folder, tmp_path, capsys):
    args = ["build", "--model", tiny_folder, "--out", tmp_path / "b", "--precision", "int8", "--num", "1", "--steps", "1",
            "--target", "none"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    (cache,) = (tmp_path / "b" / "calibration").iterdir()
    _truncate(cache / "dit.safetensors")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "the cache is damaged" in out and "calibrating again" in out


# ---------------------------------------------------------------------------------------------------
# 5. the Python API: every request is checked before anything is allocated

API_REQUESTS = [
    (dict(prompt=[]), "no prompt given"),
    (dict(prompt=123), "prompts must be a list of strings, got int"),
    (dict(prompt=["a", 5]), "each prompt must be a string, got int"),
    (dict(negative_prompt=5), "each negative prompt must be a string"),
    (dict(steps=0), "steps=0 must be an integer between 1 and 1000"),
    (dict(steps=True), "steps=True must be an integer"),
    (dict(steps=2.5), "steps=2.5 must be an integer"),
    (dict(steps=10_000), "steps=10000 must be an integer between 1 and 1000"),
    (dict(cfg=float("nan")), "cfg=nan must be a finite number"),
    (dict(cfg=math.inf), "cfg=inf must be a finite number"),
    (dict(cfg="5"), "cfg='5' must be a finite number"),
    (dict(cfg=1e38), "cfg=1e+38 must be a finite number between 0 and 100"),
    (dict(seed=-1), "seed=-1 must be an integer between 0 and 2**64 - 1"),
    (dict(seed=2**64), "seed=18446744073709551616 must be an integer"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
    (dict(height=0), "resolution 0x64 is not supported"),
    (dict(height="64"), "height='64' must be an integer"),
    (dict(height=100_000, width=100_000), "over the largest side this build was exported for"),
    (dict(prompt=["a cat"] * 5), "5 prompts in one call; this build takes at most 4"),
    (dict(prompt="x" * 20_001), "prompt of 20001 characters is over the 20000 allowed"),
]


@pytest.fixture(scope="module")
def tiny_runtime(tiny_build):
    return Pipeline.load(tiny_build)


@pytest.mark.parametrize("kwargs,needle", API_REQUESTS, ids=[n[:40] for _, n in API_REQUESTS])
def test_api_refuses_bad_requests_with_our_error(tiny_runtime, kwargs, needle):
    kwargs = {"prompt": "a cat", "steps": 1, **kwargs}
    t0 = time.perf_counter()
    with pytest.raises(LiditError) as raised:
        tiny_runtime.generate(kwargs.pop("prompt"), **kwargs)
    assert time.perf_counter() - t0 < 1.0
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_api_none_means_default_and_a_size_below_the_profile_warns(tiny_runtime, caplog):
    result = tiny_runtime.generate("a cat", steps=1, height=None, width=None, negative_prompt=None, cfg=None)
    assert result.images.shape == (1, 64, 64, 3)
    small = tiny_runtime.generate("a cat", steps=1, height=32, width=32)
    assert small.images.shape == (1, 32, 32, 3)
    assert "below this build's smallest validated side of 64 px" in caplog.text


LOAD_OPTIONS = [
    (dict(backend="magic"), "backend='magic' is unknown"),
    (dict(providers=["CUDAExecutionProvider"]), "execution provider CUDAExecutionProvider is not in this ONNX Runtime"),
    (dict(optimization="turbo"), "optimization='turbo' is unknown"),
    (dict(threads=-2), "threads=-2 must be an integer >= 0"),
    (dict(spinning="yes"), "spinning='yes' must be true or false"),
]


@pytest.mark.parametrize("kwargs,needle", LOAD_OPTIONS, ids=[n[:30] for _, n in LOAD_OPTIONS])
def test_api_refuses_bad_load_options(tiny_build, kwargs, needle):
    with pytest.raises(LiditError, match=None) as raised:
        Pipeline.load(tiny_build, **kwargs)
    assert needle in str(raised.value)


def test_unexpected_errors_are_one_line_and_keep_their_traceback_behind_v(tiny_build, tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Pipeline, "generate", boom)
    code, _, err = run_cli(capsys, *_generate(tiny_build, tmp_path))
    assert_refused(code, err, ["unexpected ZeroDivisionError: division by zero", "rerun with -v"], expected_code=1)
    code, _, err = run_cli(capsys, "-v", *_generate(tiny_build, tmp_path))
    assert code == 1 and "Traceback" in err
