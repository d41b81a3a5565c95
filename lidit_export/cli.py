"""`lidit-export`: a thin command line over the library; every command is a library call."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lidit_runtime.cli import POSITIVE, SEED, Parser, add_request_flags, draw, finite, flag_for, int_in, run_command
from lidit_runtime.precision import ENCODER_WEIGHTS, INT8_KERNELS, Precision

from .errors import LiditError


def _cmd_init(args) -> None:
    from .presets import create_preset

    out = create_preset(args.preset, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote model folder {out} (preset {args.preset})")


def _cmd_generate(args) -> None:
    from tqdm import tqdm

    if args.backend == "torch":
        if not args.model:
            raise LiditError("--backend torch needs --model DIR (a model folder)")
        from .families.reference import load_reference

        pipe = load_reference(args.model, device=args.device, dtype=args.dtype)
    else:
        if not args.build:
            raise LiditError(f"--backend {args.backend} needs --build DIR (from `lidit-export export`)")
        from lidit_runtime.pipeline import Pipeline

        pipe = Pipeline.load(args.build, backend=args.backend)
    bars = []  # the bar starts with the first step, so a refused request prints its error alone

    def on_step(i, n):
        if not bars:
            bars.append(tqdm(total=n, desc="denoising", unit="step", disable=args.quiet))
        bars[0].update(1)

    try:
        draw(pipe, args, args.backend, on_step)
    finally:
        for bar in bars:
            bar.close()


def _is_checkpoint(folder: Path) -> bool:
    """A diffusers pipeline folder (its index names a pipeline class) rather than lidit-export's own."""
    from .families.build import read_index

    return folder.is_dir() and (folder / "model_index.json").exists() and read_index(folder) is not None


def _cmd_export(args) -> None:
    from .export.export_build import export_model
    from .export.graph_spec import ShapeProfile

    profile = ShapeProfile(max_batch=args.max_batch, max_image=args.max_image)
    if _is_checkpoint(Path(args.model)):  # the FP32 stages of `build`
        from .stages import BuildOptions, build_pipeline

        manifest = build_pipeline(args.model, args.out, BuildOptions(profile=profile, engines=None))
    else:
        manifest = export_model(args.model, args.out, profile, prefix_cache=not args.no_prefix_cache)
    print(f"wrote {Path(args.out) / 'manifest.json'}: {', '.join(manifest.components)}")


def _cmd_build(args) -> None:
    from .stages import BuildOptions, build_pipeline
    from .engine.builder import EngineOptions
    from .export.graph_spec import ShapeProfile

    engines = None if args.target == "none" else EngineOptions(
        target=args.target, opt_level=args.opt_level, workspace_gib=args.workspace_gib,
        compute_capability=args.compute_capability, profiles=_parse_profiles(args.profile), refit=args.refit,
        strip_weights=args.strip_weights).validate()
    options = BuildOptions(precision=args.precision, prompts_file=args.prompts, num_prompts=args.num, steps=args.steps,
                           seed=args.seed, smoothquant_alpha=args.alpha, exclude=args.exclude or [],
                           prefix_cache=not args.no_prefix_cache, encoder_weights=args.encoder_weights,
                           int8_kernels=args.int8_kernels, calibration_dir=args.calibration_cache,
                           profile=ShapeProfile(max_batch=args.max_batch, max_image=args.max_image), engines=engines)
    manifest = build_pipeline(args.model, args.out, options)
    parts = ", ".join(f"{n} {r.precision}" + (f" with {r.weights} weights" if r.weights else "")
                      for n, r in manifest.components.items())
    print(f"built {args.out} ({parts}); report: {Path(args.out) / 'build_report.json'}")
    if manifest.engines:
        rec = next(iter(manifest.engines.values()))
        print(f"engines: {rec.target} {rec.tensorrt_version}, sm{rec.compute_capability}, in {Path(args.out) / 'engines'}")
    print(f"run it: lidit-export generate --backend onnxruntime --build {args.out} --prompt \"a red cat\"")


def _parse_profiles(items: list[str] | None) -> dict:
    """["dit.latent_height=8,16,32", ...] -> {"dit": {"latent_height": [8, 16, 32]}}."""
    out: dict = {}
    for item in items or []:
        try:
            where, values = item.split("=")
            component, dim = where.split(".")
            lo, opt, hi = (int(v) for v in values.split(","))
        except ValueError:
            raise LiditError(f"--profile {item!r}: write COMPONENT.DIM=MIN,OPT,MAX, e.g. dit.latent_height=8,32,64") from None
        out.setdefault(component, {})[dim] = [lo, opt, hi]
    return out


def _cmd_calibrate(args) -> None:
    from .families.reference import load_reference
    from .quant.calibrate import CalibrationSettings, calibrate
    from .quant.prompts import load_prompts
    from .quant.recipes import QuantRecipe

    pipe = load_reference(args.model)
    default_steps, cfg, height, width = pipe.defaults
    prompts = load_prompts(args.prompts, split="calibration", model_dir=args.model)[: args.num]
    steps = default_steps if args.steps is None else args.steps
    settings = CalibrationSettings(prompts, steps=steps, cfg=cfg, seed=args.seed, height=height, width=width)
    result = calibrate(pipe, args.model, QuantRecipe(args.precision, smoothquant_alpha=args.alpha), settings,
                       Path(args.out) / "calibration")
    for c, q in result.items():
        print(f"{c}: {len(q.plan.quantized)} layers calibrated ({len(q.amax)} values), key {q.key}"
              f"{' (from cache)' if q.from_cache else ''}")


def _cmd_report(args) -> None:
    from .check.quality import quality_report

    report = quality_report(args.model, args.build, num_eval=args.num_eval, steps=args.steps)
    im = report["images"]
    print(f"{report['precision']}: held-out mean PSNR {im['mean_psnr_db']:.2f} dB (min {im['min_psnr_db']:.2f}), "
          f"SSIM {im['mean_ssim']:.4f}; report in {Path(args.build) / 'report'}")


def _cmd_parity(args) -> None:
    from .check.parity import run_parity

    report = run_parity(args.model, args.build, args.report_dir, prompt=args.prompt, steps=args.steps, seed=args.seed)
    comp_worst = max(r["rel_l2"] for r in report.components)
    print(f"components: worst rel L2 {comp_worst:.2e} over {len(report.components)} checks; "
          f"trajectory min cosine {report.trajectory['min_cosine']:.7f}; "
          f"image PSNR {report.image['psnr_db']:.1f} dB, SSIM {report.image['ssim']:.4f}")
    if not report.passed:
        raise LiditError("parity failed: " + "; ".join(report.failures))
    print("parity passed")
    if args.polygraphy:
        from .check.parity import dump_polygraphy

        print("polygraphy inputs and reference outputs written; compare each graph with:")
        for command in dump_polygraphy(args.model, args.build):
            print(f"  {command}")


def _cmd_train(args) -> None:
    import torch

    from .artifacts import atomic_write_json
    from .model.pipeline import resolve_device
    from .toy import train

    settings = train.TrainSettings(**{k: v for k, v in vars(args).items()
                                      if k in train.TrainSettings.__dataclass_fields__ and v is not None}).validate()
    llm = Path(args.llm) if args.llm else _smollm2()
    work = Path(args.work)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = train.train_variant(work, llm, args.variant, settings, resolve_device(args.device))
    print(f"trained {args.variant}: model folder {model_dir}")
    if not args.no_eval:
        from .toy.scorer import KINDS

        _, heldout = train.prepare_scenes(work, settings)
        _, summary = train.evaluate(model_dir, heldout, args.device)
        atomic_write_json(model_dir.parent / "scores.json", summary)
        kinds = ", ".join(f"{k} {summary[k]['accuracy']:.1%}" for k in KINDS if k in summary)
        print(f"held-out attribute accuracy {summary['all']['accuracy']:.1%} ({kinds})")


def _smollm2() -> Path:
    from .smollm2 import smollm2_folder

    return smollm2_folder()


def _cmd_info(args) -> None:
    from .model.info import describe
    from .model.pipeline import load_model_config

    folder = Path(args.model)
    if not folder.is_dir():
        raise LiditError(f"info takes a model folder; {folder} is {'a file' if folder.exists() else 'not there'} "
                         "(create one with `lidit-export init --preset tiny --out DIR`)")
    if _is_checkpoint(folder):
        from .families.build import describe_checkpoint

        summary = describe_checkpoint(folder)
        if args.json:
            print(json.dumps(summary, indent=2))
            return
        print(f"{summary['pipeline']} ({summary['family']}): encoder {summary['encoder']}, {summary['tapped_state']}")
        for slot, c in summary["components"].items():
            print(f"  {slot}: {c['class']}, {c['params'] / 1e6:.2f}M params")
        return
    config = load_model_config(folder)
    summary = describe(config, folder, args.height, args.width, args.text_tokens)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['name']}: {summary['resolution'][0]}x{summary['resolution'][1]} -> latent {summary['latent']}, "
          f"{summary['image_tokens']} image tokens")
    for llm in summary["llms"]:
        print(f"  encoder {llm['path']}: {llm['params'] / 1e6:.1f}M params, runs {llm['blocks_run']}/{llm['blocks']} "
              f"blocks ({llm['params_run'] / 1e6:.1f}M), width {llm['hidden_size']}, {llm['prefix_tokens']} prefix tokens")
    print(f"  refiner: {summary['refiner']['params'] / 1e6:.2f}M params")
    t = summary["transformer"]
    print(f"  transformer: {t['params'] / 1e6:.2f}M params ({t['depth']} x {t['width']}, {t['heads']} heads of {t['head_dim']})")
    print(f"  vae: {summary['vae']['params'] / 1e6:.2f}M params ({summary['vae']['decoder_params'] / 1e6:.2f}M decoder)")
    g = summary["gflops_per_step"]
    print(f"  GFLOPs per denoising step (batch 1, {args.text_tokens} text tokens per LLM): refiner {g['refiner']:.2f}, "
          f"transformer {g['transformer']:.2f} (x2 with CFG)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lidit-export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a model folder from a preset (seeded random weights + real LLMs)")
    p.add_argument("--preset", required=True, help="mini (trained, SmolLM2) | tiny | smol | li-dit-1b | li-dit-10b | "
                   "z-image-tiny | lumina2-tiny (diffusers folders with random weights)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("generate", help="text -> PNG")
    p.add_argument("--model", help="model folder (--backend torch)")
    p.add_argument("--build", help="build folder from `lidit-export export` (--backend onnxruntime)")
    add_request_flags(p)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("export", help="model folder -> one ONNX graph per component + manifest.json")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="build folder")
    p.add_argument("--max-batch", type=POSITIVE, default=4, help="prompts per call (CFG doubles it)")
    p.add_argument("--max-image", type=POSITIVE, default=None, help="largest image side (default 2x the model's)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="export encoders that run the whole prompt (default: the constant prefix is baked in)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("build", help="every stage that is not up to date: calibrate -> export (Q/DQ graphs for "
                       "quantized precisions) -> TensorRT engines")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="build folder")
    p.add_argument("--precision", default="fp32", choices=[p.value for p in Precision],
                   help="of the refiner and DiT (the VAE stays fp32, encoders follow --encoder-weights); int8-wo: INT8 "
                   "weights only")
    p.add_argument("--encoder-weights", default="fp32", choices=list(ENCODER_WEIGHTS),
                   help="the LLM encoders' weights: int8 / int4 blocks for ONNX Runtime (3.5x / 6x smaller graphs; "
                   "no TensorRT engines), or fp16 / bf16 for the whole encoder graph (GPU targets; 2x smaller)")
    p.add_argument("--int8-kernels", default="qdq", choices=list(INT8_KERNELS),
                   help="--precision int8: qdq (exact Q/DQ, dequantized weights on CPU; TensorRT's form) or integer "
                   "(weights on 63 levels, run by ONNX Runtime's fused integer kernels: faster on CPU)")
    p.add_argument("--calibration-cache", default=None, metavar="DIR",
                   help="calibration cache shared between build folders (default: OUT/calibration); entries are "
                   "keyed by the weights, recipe and settings")
    p.add_argument("--target", default="auto", choices=["auto", "trt", "trt-rtx", "none"],
                   help="TensorRT engines: full TensorRT, TensorRT for RTX, whichever is installed, or none")
    p.add_argument("--compute-capability", default=None, help="engine GPU, e.g. 8.9 (default: this GPU; 8.9 for trt-rtx)")
    p.add_argument("--opt-level", type=int_in(0, 5), default=3, help="TensorRT builder optimization level 0-5")
    p.add_argument("--workspace-gib", type=finite, default=4.0)
    p.add_argument("--profile", action="append", help="engine profile override COMPONENT.DIM=MIN,OPT,MAX (repeatable)")
    p.add_argument("--refit", action="store_true", help="refittable engines")
    p.add_argument("--strip-weights", action="store_true", help="weightless engines (with --refit)")
    p.add_argument("--prompts", default=None, help="calibration prompts (.jsonl or one per line); default: the "
                   "model folder's prompts.jsonl, else the shipped set")
    p.add_argument("--num", type=POSITIVE, default=None, help="calibration prompts (default 128 for fp8, 64 for int8)")
    p.add_argument("--steps", type=POSITIVE, default=None, help="sampler steps while calibrating (default: production)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--alpha", type=finite, default=0.5, help="SmoothQuant alpha (int8)")
    p.add_argument("--exclude", action="append", help="also keep these layers in high precision: fnmatch pattern "
                   "on refiner/DiT layer names, e.g. 'blocks.0.mlp.*' (repeatable; see the report's sensitivity table)")
    p.add_argument("--max-batch", type=POSITIVE, default=4)
    p.add_argument("--max-image", type=POSITIVE, default=None)
    p.add_argument("--no-prefix-cache", action="store_true")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("calibrate", help="run the reference sampler over prompts; cache quantizer ranges")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="build folder (the cache goes to OUT/calibration)")
    p.add_argument("--precision", default="fp8", choices=[p.value for p in Precision.calibrated_ones()])
    p.add_argument("--prompts", default=None)
    p.add_argument("--num", type=POSITIVE, default=128)
    p.add_argument("--steps", type=POSITIVE, default=None)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--alpha", type=finite, default=0.5)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("parity", help="exported graphs vs the PyTorch reference: components, trajectory, image")
    p.add_argument("--model", required=True)
    p.add_argument("--build", required=True)
    p.add_argument("--report-dir", default=None, help="default: BUILD/parity")
    p.add_argument("--prompt", default="a red circle to the left of a blue square")
    p.add_argument("--steps", type=POSITIVE, default=8)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--polygraphy", action="store_true",
                   help="also write per-graph inputs + reference outputs for `polygraphy run` (printed)")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("report", help="quality of a build: component errors, DiT layer sensitivity, held-out images")
    p.add_argument("--model", required=True)
    p.add_argument("--build", required=True)
    p.add_argument("--num-eval", type=POSITIVE, default=8, help="held-out evaluation prompts")
    p.add_argument("--steps", type=POSITIVE, default=None)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("train", help="train the miniature LI-DiT on the procedural world (or one ablation)")
    p.add_argument("--work", required=True, help="work folder: data, VAE, LLM features, runs/<variant>/model")
    p.add_argument("--variant", default="full", help="full | no-instruction | no-refiner | causal-refiner")
    p.add_argument("--llm", default=None, help="HF folder of the frozen LLM (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=POSITIVE, default=None)
    for name in ("scenes", "steps", "batch", "vae_steps", "vae_batch", "width", "depth", "heads", "pe_depth"):
        p.add_argument(f"--{name.replace('_', '-')}", type=POSITIVE, default=None)
    p.add_argument("--seed", type=SEED, default=None)
    p.add_argument("--lr", type=finite, default=None)
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="learning rate after warm-up (default cosine: decays to 10%% at --steps)")
    p.add_argument("--init", default=None, help="start from this model folder's refiner + DiT (e.g. models/mini)")
    p.add_argument("--max-minutes", type=finite, default=None, help="stop training after this long (steps done are recorded)")
    p.add_argument("--checkpoint-minutes", type=finite, default=None,
                   help="write runs/<variant>/checkpoint.pt this often (default 5; 0: never); a rerun resumes from it")
    p.add_argument("--no-eval", action="store_true", help="skip scoring the 200 held-out captions")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="components, parameter counts, FLOPs per denoising step")
    p.add_argument("model", help="model folder")
    p.add_argument("--height", type=POSITIVE, default=None)
    p.add_argument("--width", type=POSITIVE, default=None)
    p.add_argument("--text-tokens", type=POSITIVE, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    return parser


FIELD_FLAGS = {"num_prompts": "num", "smoothquant_alpha": "alpha", "prompts_file": "prompts", "profiles": "profile",
               "prompts": "prompt", "calibration_dir": "calibration_cache"}


def main(argv: list[str] | None = None) -> int:
    """Exit codes and one-line errors as every lidit command line has them (lidit_runtime.cli.run_command)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser, args, lambda field: flag_for(parser, args.command, field, FIELD_FLAGS),
                       "interrupted; a rerun resumes what was finished")


if __name__ == "__main__":
    sys.exit(main())
