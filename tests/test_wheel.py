"""A wheel of the repository, installed non-editable outside the source tree, runs the main job: the
package carries its data (the miniature's weights, the shipped calibration prompts)."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from helpers import needs_smollm2

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, env):
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@needs_smollm2
def test_a_wheel_installed_elsewhere_builds_fp8_without_prompts(tmp_path):
    for project in (REPO / "runtime", REPO):  # two distributions: lidit-export depends on lidit-runtime
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
              project], tmp_path, os.environ)
    wheels = sorted((tmp_path / "dist").glob("lidit_*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["lidit_export", "lidit_runtime"]
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, os.environ)
    # The dependencies come from this environment's site-packages, named by a path line: Python adds the
    # folder to sys.path but runs none of its .pth files, so the editable install of the source tree stays out.
    site = Path(_run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path, os.environ).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", *wheels], tmp_path, os.environ)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    where = _run([venv / "bin/python", "-c", "import lidit_export, lidit_runtime; print(lidit_export.__file__); "
                  "print(lidit_runtime.__file__)"], work, env).split()
    assert all(path.startswith(str(site)) for path in where), where  # the wheel's copies, not the source tree

    cli = venv / "bin/lidit-export"
    _run([cli, "init", "--preset", "mini", "--out", "mini"], work, env)
    out = _run([cli, "build", "--model", "mini", "--out", "mini-fp8", "--precision", "fp8", "--num", "4", "--steps", "2",
                "--target", "none"], work, env)
    assert "calibrated on 4/4 prompts" in out and "dit (fp8): exporting" in out
    # tiny has no prompts of its own: the calibration prompts come from the package data
    _run([cli, "init", "--preset", "tiny", "--out", "tiny"], work, env)
    out = _run([cli, "build", "--model", "tiny", "--out", "tiny-fp8", "--precision", "fp8", "--num", "2", "--steps", "1",
                "--target", "none"], work, env)
    assert "calibrated on 2/2 prompts" in out
    _run([cli, "generate", "--backend", "onnxruntime", "--build", "mini-fp8", "--prompt", "a red circle", "--out",
          "image.png", "--quiet"], work, env)
    assert (work / "image.png").read_bytes().startswith(b"\x89PNG")
