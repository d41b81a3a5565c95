"""Encoder latency with and without the constant prefix baked into the graph (ONNX Runtime).

    python benchmarks/encoder_prefix_cache.py --model models/smol --out benchmarks/results/encoder_prefix_cache_smol_cpu.json

Exports the model twice (prefix cached / whole prompt), then times each encoder graph on captions of
several lengths at batch 1 and 2. Expected: time drops roughly like (prefix + caption) / caption.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, percentiles  # noqa: E402

CAPTIONS = {
    "short": "a red cat",
    "medium": "a red circle to the left of a blue square, with a small yellow star above them on a gray background",
    "long": ("a photo of a crowded street market at dusk: three wooden stalls with striped awnings, baskets of "
             "oranges, green apples and purple grapes, a woman in a yellow raincoat holding a black umbrella, "
             "a small white dog under the middle table, string lights above, and a blue sign reading OPEN on the "
             "right"),
}


def time_graph(backend, name, feeds, warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        backend.run(name, feeds)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        backend.run(name, feeds)
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    from lidit_export.artifacts import atomic_write_text
    from lidit_export.export.export_build import export_model
    from lidit_export.model.pipeline import LiDiTPipeline
    from lidit_runtime.pipeline import Pipeline

    pipe = LiDiTPipeline.from_pretrained(args.model)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {}
        for cached in (False, True):
            build = Path(tmp) / ("cached" if cached else "full")
            export_model(args.model, build, prefix_cache=cached, pipe=pipe, progress=lambda *_: None)
            runtimes[cached] = Pipeline.load(build)
        for i, tok in enumerate(pipe.tokenizers):
            for label, caption in CAPTIONS.items():
                for batch in (1, 2):
                    t = tok([caption] * batch)
                    row = {"encoder": f"encoder_{i}", "caption": label, "batch": batch,
                           "prefix_tokens": t.prefix_length, "tokens": int(t.input_ids.shape[1])}
                    for cached, runtime in runtimes.items():
                        feeds = runtime.manifest.encoders[i].encoder_inputs(t.input_ids, t.attention_mask)
                        row["cached" if cached else "full"] = time_graph(runtime.backend, f"encoder_{i}", feeds,
                                                                         args.warmup, args.reps)
                    row["speedup_p50"] = row["full"]["p50_ms"] / row["cached"]["p50_ms"]
                    row["token_ratio"] = row["tokens"] / (row["tokens"] - row["prefix_tokens"])
                    results.append(row)
                    print(f"encoder_{i} {label:6s} b{batch}: {row['tokens']} tokens ({row['prefix_tokens']} prefix) "
                          f"full {row['full']['p50_ms']:.2f} ms -> cached {row['cached']['p50_ms']:.2f} ms "
                          f"(x{row['speedup_p50']:.2f}; token ratio x{row['token_ratio']:.2f})")
    report = {"benchmark": "encoder_prefix_cache", "model": pipe.config.name, "backend": "onnxruntime CPU",
              "timing": "session run of the encoder graph alone, wall clock, after warm-up",
              "environment": describe_environment(), "results": results}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
