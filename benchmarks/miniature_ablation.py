"""The miniature LI-DiT and the paper's ablations, trained on the procedural world and scored.

    python benchmarks/miniature_ablation.py --work runs/mini --device cuda --parallel

Trains `full`, `no-instruction`, `no-refiner`, `causal-refiner` with one recipe (shared VAE and
LLM features), scores each on the 200 held-out captions, and writes to --results:
    miniature_ablation.json   scores per variant (overall, per attribute kind, per caption third),
                              chance levels, training steps/time, hardware and versions
    miniature_ablation.md     the table for the README
    miniature_loss.png        training loss of every variant (and the VAE)
    miniature_samples.png     held-out captions: ground truth + samples of the full model
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from environment import describe_environment  # noqa: E402

from lidit_export.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from lidit_export.model.pipeline import resolve_device  # noqa: E402
from lidit_export.toy import train  # noqa: E402
from lidit_export.toy.plots import loss_curves, prompt_grid  # noqa: E402
from lidit_export.toy.scorer import KINDS, score_images  # noqa: E402

SETTINGS = {"scenes": int, "steps": int, "batch": int, "vae_steps": int, "vae_batch": int, "width": int, "depth": int,
            "heads": int, "pe_depth": int, "seed": int, "lr": float, "warmup": int, "schedule": str, "init": str}
ANALYTIC_CHANCE = {"color": 1 / 6, "shape": 1 / 3, "size": 1 / 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--llm", default=None, help="frozen LLM folder (default SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(train.VARIANTS))
    ap.add_argument("--parallel", action="store_true", help="train the variants as concurrent processes")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per training process")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--package", default=None, help="also write the full model's trained weights (fp16) here")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. _continued for a follow-up run)")
    for name, kind in SETTINGS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    args = ap.parse_args()

    from lidit_export.smollm2 import smollm2_folder

    work, results = Path(args.work), Path(args.results)
    llm = Path(args.llm) if args.llm else smollm2_folder()
    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    settings = train.TrainSettings(**given, max_minutes=args.max_minutes).validate()
    device = resolve_device(args.device)
    variants = args.variants.split(",")
    if set(variants) - set(train.VARIANTS):
        raise SystemExit(f"unknown variant(s) {sorted(set(variants) - set(train.VARIANTS))}; choose from {list(train.VARIANTS)}")

    t0 = time.time()
    todo = [v for v in variants if not train.is_trained(work, v)]
    if todo:  # scoring alone needs no training features
        train.prepare(work, llm, settings, device, instructions={train.VARIANTS[v].instruction for v in todo})
    prepare_seconds = time.time() - t0
    cli = [sys.executable, "-m", "lidit_export.cli", "-v", "train", "--work", str(work), "--llm", str(llm),
           "--device", args.device, "--no-eval"] + [f"--{k.replace('_', '-')}={v}" for k, v in given.items()]
    if args.max_minutes:
        cli += ["--max-minutes", str(args.max_minutes)]
    if args.threads:
        cli += ["--threads", str(args.threads)]
    t0 = time.time()
    procs = [subprocess.Popen(cli + ["--variant", v]) for v in todo] if args.parallel else []
    for v, p in zip(todo, procs):
        if p.wait() != 0:
            raise SystemExit(f"training {v} failed (exit {p.returncode})")
    if not args.parallel:
        for v in todo:
            subprocess.run(cli + ["--variant", v], check=True)
    train_seconds = time.time() - t0

    scenes, heldout = train.prepare_scenes(work, settings)
    truth = train.ground_truth(heldout)
    shuffled = list(range(len(heldout)))
    random.Random(0).shuffle(shuffled)
    training_captions = {s.caption for s in scenes}
    report = {"environment": describe_environment(), "settings": asdict(settings), "device": str(device),
              "parallel_training": args.parallel, "prepare_seconds": prepare_seconds,
              "train_seconds_wall": train_seconds, "heldout_captions": len(heldout),
              "training_scenes": len(scenes), "distinct_training_captions": len(training_captions),
              "heldout_in_training": sum(s.caption in training_captions for s in heldout),
              "vae": {k: v for k, v in json.loads((work / "vae" / "training.json").read_text()).items() if k != "loss"},
              "ground_truth": score_images(truth, heldout),
              "chance_mismatched_images": score_images(truth[shuffled], heldout),
              "chance_analytic": ANALYTIC_CHANCE, "variants": {}}
    samples = None
    logs = {v: json.loads((train.run_folder(work, v) / "training.json").read_text()) for v in variants}
    for v in variants:
        t0 = time.time()
        images, summary = train.evaluate(train.run_folder(work, v) / "model", heldout, args.device)
        report["variants"][v] = {"scores": summary, "eval_seconds": time.time() - t0,
                                 **{k: logs[v].get(k) for k in ("steps_done", "seconds", "parameters", "resumed_at",
                                                            "device", "threads", "hardware")}}
        if v == "full":
            samples = images
    atomic_write_json(results / f"miniature_ablation{args.tag}.json", report)
    atomic_write_text(results / f"miniature_ablation{args.tag}.md", table(report))
    curves = {v: [(s, sm) for s, _, sm in logs[v]["loss"]] for v in variants}
    atomic_write_bytes(results / f"miniature_loss{args.tag}.png", loss_curves(curves, "flow-matching loss (EMA 0.9 of logged steps)"))
    if samples is not None:
        model_dir = train.run_folder(work, "full") / "model"
        rows = heldout[:8]
        extra = [train.generate_images(model_dir, [s.caption for s in rows], args.device, seed=1000 * k)
                 for k in range(1, 4)]
        grid = [(s.caption, [truth[i], samples[i]] + [e[i] for e in extra]) for i, s in enumerate(rows)]
        atomic_write_bytes(results / f"miniature_samples{args.tag}.png", prompt_grid(grid))
        if args.package:
            train.package_weights(model_dir, Path(args.package))
    print(table(report))
    return 0


def _pct(summary: dict, key: str) -> str:
    return f"{summary[key]['accuracy']:.1%}" if key in summary else "-"


def table(report: dict) -> str:
    cols = ["all"] + [k for k in KINDS] + ["third:first", "third:last", "all_correct_images"]
    head = ["variant", "overall", *KINDS, "first third", "last third", "images all correct", "steps done"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(v, r["scores"], str(r["steps_done"])) for v, r in report["variants"].items()]
    rows += [("ground-truth renders", report["ground_truth"], "-"),
             ("chance (images of other captions)", report["chance_mismatched_images"], "-")]
    for name, s, steps in rows:
        lines.append("| " + " | ".join([name] + [_pct(s, c) for c in cols] + [steps]) + " |")
    st = report["settings"]
    here = (report["environment"].get("gpu") or {}).get("name", "cpu") if report["device"] == "cuda" else "cpu"
    trained_on = sorted({r.get("hardware") or here for r in report["variants"].values()})  # older runs: trained here
    lines.append("")
    lines.append(f"{report['heldout_captions']} held-out captions (none in training), batch {st['batch']}, at most "
                 f"{st['steps']} steps or {st['max_minutes']} min per variant, learning rate {st['lr']} "
                 f"({st.get('schedule', 'constant')}), positional-embedding ResBlocks {st.get('pe_depth', 1)}; "
                 f"trained on {', '.join(trained_on)}, scored on {report['device']}; analytic chance: "
                 "colour 1/6, shape 1/3, size 1/2." + (f" Training started from the weights of {st['init']}."
                                                       if st.get("init") else ""))
    return "\n".join(lines) + "\n"


def rewrite_table(path: str) -> None:
    """Re-render the markdown table of an existing results JSON."""
    report = json.loads(Path(path).read_text())
    atomic_write_text(Path(path).with_suffix(".md"), table(report))


if __name__ == "__main__":
    sys.exit(main())
