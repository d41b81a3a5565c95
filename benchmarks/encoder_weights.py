"""The LLM encoder graphs with FP32, INT8, INT4, FP16 and BF16 weights (`--encoder-weights`): size, speed, fidelity.

    python benchmarks/encoder_weights.py --model models/mini --builds build

Builds the model's FP32 graphs five times, once per encoder weight format (reusing up-to-date builds under
the folders environment.build_folder names, shared with the other benchmarks), then per encoder graph:
- bytes on disk (graph + external data) of every artifact of each build;
- the features' error against the FP32 graph (relative L2 of `hidden` over the caption rows and of `pooled`,
  per prompt: median and max) on the calibration prompts of the model folder, else the shipped prompts;
- the graph's run time in ONNX Runtime (CPU, the runtime's session settings) at batch 1 and 2 on short /
  medium / long captions, the three CPU formats timed in turn so that machine load hits each alike. FP16 and
  BF16 are GPU formats: on this CPU ONNX Runtime runs FP16 through inserted casts and BF16 only through the
  runtime's emulation, so they get sizes and fidelity, not timings.
Prompt following (the miniature's scorer) is measured by benchmarks/miniature_quantization.py.
Writes OUT/encoder_weights_<name>_cpu.json and a PNG made from it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_prefix_cache import CAPTIONS  # noqa: E402
from environment import artifact_bytes, build_folder, describe_environment, percentiles  # noqa: E402

FORMATS = ("fp32", "int8", "int4", "fp16", "bf16")
TIMED = FORMATS[:3]  # the CPU formats


def plot(report: dict) -> bytes:
    """One bar per format and shape: the encoder graph's p50 run time (the title carries the sizes)."""
    from lidit_export.toy.plots import stacked_bars

    sizes = ", ".join(f"{w} {sum(v for n, v in report['builds'][w]['bytes'].items() if n.startswith('encoder_')) / 1e6:.0f} MB"
                      for w in FORMATS)
    rows = {f"{r['encoder']} {r['caption']} b{r['batch']} {w}": {"encoder graph": r[w]["p50_ms"]}
            for r in report["timings"] for w in TIMED}
    return stacked_bars(rows, f"{report['model']} --encoder-weights, ONNX Runtime CPU p50 (graphs: {sizes})", "ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--prompts", type=int, default=100, help="prompts for the feature error")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per format and shape (after 3 warm-up)")
    args = parser.parse_args()

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json
    from lidit_export.config import PipelineConfig
    from lidit_export.model.pipeline import INDEX
    from lidit_export.quant.prompts import load_prompts
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_runtime.pipeline import Pipeline

    config = PipelineConfig.from_json_file(Path(args.model) / INDEX)
    runtimes, builds = {}, {}
    for w in FORMATS:
        build = build_folder(args.builds, config.name, "fp32", w)
        build_pipeline(args.model, build, BuildOptions(encoder_weights=w, engines=None), progress=lambda *_: None)
        runtimes[w] = Pipeline.load(build)
        builds[w] = {"folder": build.name, "bytes": artifact_bytes(build, runtimes[w].manifest)}
    ref = runtimes["fp32"]
    encoders = [n for n in ref.manifest.components if n.startswith("encoder_")]

    prompts = load_prompts(None, split="calibration", model_dir=args.model)[:args.prompts]
    fidelity = {}
    for i, name in enumerate(encoders):
        tok = ref.tokenizers[i]
        errors = {w: {"hidden": [], "pooled": []} for w in FORMATS[1:]}
        for prompt in prompts:
            t = tok([prompt])
            feeds = ref.manifest.encoders[i].encoder_inputs(t.input_ids, t.attention_mask)
            base = dict(zip(("hidden", "pooled"), ref.backend.run(name, feeds)))
            rows = t.attention_mask[0].astype(bool)[-base["hidden"].shape[1]:]  # the caption rows the graph returns
            for w in FORMATS[1:]:
                out = dict(zip(("hidden", "pooled"), runtimes[w].backend.run(name, feeds)))
                h, hb = out["hidden"][0][rows], base["hidden"][0][rows]
                errors[w]["hidden"].append(float(np.linalg.norm(h - hb) / np.linalg.norm(hb)))
                errors[w]["pooled"].append(float(np.linalg.norm(out["pooled"] - base["pooled"])
                                                 / np.linalg.norm(base["pooled"])))
        fidelity[name] = {w: {k: {"median": float(np.median(v)), "max": float(np.max(v))} for k, v in e.items()}
                          for w, e in errors.items()}
        for w, e in fidelity[name].items():
            print(f"{name} {w}: rel L2 hidden median {e['hidden']['median']:.2e} (max {e['hidden']['max']:.2e}), "
                  f"pooled median {e['pooled']['median']:.2e}", flush=True)

    timings = []
    for i, name in enumerate(encoders):
        for label, caption in CAPTIONS.items():
            for batch in (1, 2):
                t = ref.tokenizers[i]([caption] * batch)
                feeds = ref.manifest.encoders[i].encoder_inputs(t.input_ids, t.attention_mask)
                samples = {w: [] for w in TIMED}
                for rep in range(3 + args.reps):
                    order = TIMED if rep % 2 == 0 else TIMED[::-1]
                    for w in order:
                        t0 = time.perf_counter()
                        runtimes[w].backend.run(name, feeds)
                        if rep >= 3:
                            samples[w].append(time.perf_counter() - t0)
                row = {"encoder": name, "caption": label, "batch": batch, "tokens": int(feeds["input_ids"].shape[1]),
                       **{w: percentiles(s) for w, s in samples.items()}}
                timings.append(row)
                print(f"{name} {label} b{batch} ({row['tokens']} tokens): "
                      + ", ".join(f"{w} {row[w]['p50_ms']:.1f} ms" for w in TIMED), flush=True)

    report = {"benchmark": "encoder_weights", "model": config.name, "environment": describe_environment(),
              "settings": {"backend": "onnxruntime CPU (the runtime's sessions)", "prompts": len(prompts),
                           "reps": args.reps, "interleaved": True, "formats": {
                               "int8": "MatMulNBits 8-bit, symmetric, block 32, accuracy level 4; embedding INT8 "
                                       "rows, block 32",
                               "int4": "MatMulNBits 4-bit, symmetric, block 32, accuracy level 4; embedding "
                                       "GatherBlockQuantized 4-bit, block 32",
                               "fp16": "the whole graph in FP16 (FP32 inputs/outputs); not timed on CPU",
                               "bf16": "the whole graph in BF16 (FP32 inputs/outputs), run through the runtime's "
                                       "BF16 emulation; not timed on CPU"}},
              "builds": builds, "fidelity": fidelity, "timings": timings}
    out = Path(args.out)
    atomic_write_json(out / f"encoder_weights_{config.name}_cpu.json", report)
    atomic_write_bytes(out / f"encoder_weights_{config.name}_cpu.png", plot(report))
    for w in FORMATS:
        enc = sum(v for n, v in builds[w]["bytes"].items() if n.startswith("encoder_"))
        print(f"{w}: encoder graphs {enc / 1e6:.1f} MB, build {sum(builds[w]['bytes'].values()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
