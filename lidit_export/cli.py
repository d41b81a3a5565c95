"""`lidit-export`: a thin command line over the library; every command is a library call."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import LiditError


def _cmd_init(args) -> None:
    from .presets import create_preset

    out = create_preset(args.preset, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote model folder {out} (preset {args.preset})")


def _cmd_generate(args) -> None:
    from PIL import Image
    from tqdm import tqdm

    from lidit_runtime.pipeline import GenerateRequest

    if args.backend != "torch":
        raise LiditError(f"--backend {args.backend} is not available yet; use --backend torch")
    from .model.pipeline import LiDiTPipeline

    pipe = LiDiTPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    cfg = pipe.config
    request = GenerateRequest(prompts=[args.prompt], negative_prompt=args.negative_prompt,
                              steps=args.steps or cfg.scheduler.default_steps,
                              cfg=cfg.scheduler.default_cfg if args.cfg is None else args.cfg, seed=args.seed,
                              height=args.height or cfg.default_height, width=args.width or cfg.default_width)
    with tqdm(total=request.steps, desc="denoising", unit="step", disable=args.quiet) as bar:
        result = pipe.generate(request, on_step=lambda i, n: bar.update(1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    Image.fromarray(result.images[0]).save(tmp)
    os.replace(tmp, out)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"wrote {out} ({request.width}x{request.height}, {request.steps} steps, cfg {request.cfg}): {timings}")


def _cmd_info(args) -> None:
    from .config import PipelineConfig
    from .model.info import describe
    from .model.pipeline import INDEX

    folder = Path(args.model)
    config = PipelineConfig.from_json_file(folder / INDEX)
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
    parser = argparse.ArgumentParser(prog="lidit-export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a model folder from a preset (seeded random weights + real LLMs)")
    p.add_argument("--preset", required=True, help="tiny | smol | li-dit-1b | li-dit-10b")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("generate", help="text -> PNG")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", default="image.png")
    p.add_argument("--steps", type=int, default=None, help="default: the scheduler config's")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale; 1 disables CFG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("info", help="components, parameter counts, FLOPs per denoising step")
    p.add_argument("model", help="model folder")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    try:
        args.func(args)
    except LiditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
