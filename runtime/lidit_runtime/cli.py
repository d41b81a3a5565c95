"""`lidit-runtime`: run a build folder without the toolchain (no torch, transformers or diffusers).

    lidit-runtime generate --build DIR --prompt "a red cat" --out image.png
    lidit-runtime serve --build DIR                 # Triton Inference Server (PyTriton), model "lidit"
    lidit-runtime triton-repo --build DIR --out REPO   # a model repository for a Triton container

The command-line pieces every entry point shares (one-line errors, typed flags, the request flags, image
output) live here; `lidit-export` uses them too.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from .errors import LiditError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # what --out may end in


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what was wrong, where to look) and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        return value
    parse.__name__ = "integer"
    return parse


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


finite.__name__ = "number"
POSITIVE, SEED = int_in(1), int_in(0, 2**64 - 1)


def prepare_output(out: Path) -> str:
    """Check where an image goes before any work is done: the format from the extension, a folder that
    exists (created if missing) and takes a file. Returns the PIL format name."""
    if out.is_dir():
        raise LiditError(f"--out {out} is a folder; give a file name such as {out / 'image.png'}")
    fmt = IMAGE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise LiditError(f"--out {out}: the extension {out.suffix or '(none)'!r} names no image format we write; "
                         f"use one of {', '.join(IMAGE_FORMATS)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise LiditError(f"--out {out}: cannot write into {out.parent} ({e.strerror}); choose a writable "
                         "folder") from None
    return fmt


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file beside `path`, renamed over it: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image, out: Path, fmt: str) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    write_atomically(out, buf.getvalue())


def add_request_flags(p: argparse.ArgumentParser) -> None:
    """The flags of one generate request (None: the model's default)."""
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", default="image.png")
    p.add_argument("--steps", type=POSITIVE, default=None, help="default: the scheduler config's")
    p.add_argument("--cfg", type=finite, default=None, help="guidance scale in the model's own convention (1 "
                   "disables guidance; 0 for models whose formula is cond + cfg (cond - uncond))")
    p.add_argument("--cfg-truncation", type=finite, default=None,
                   help="no guidance past this progress, 0..1 (models whose chain truncates; default: the model's)")
    p.add_argument("--cfg-normalization", type=finite, default=None,
                   help="renormalise the guided output to this multiple of the conditional's norm (0: off)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--height", type=POSITIVE, default=None)
    p.add_argument("--width", type=POSITIVE, default=None)
    p.add_argument("--quiet", action="store_true")


def draw(pipe, args, backend: str, progress: Callable[[int, int], None] | None = None) -> None:
    """Generate the request the flags describe with `pipe`, write --out and print what was drawn."""
    from .pipeline import GenerateRequest

    fmt = prepare_output(Path(args.out))
    request = GenerateRequest([args.prompt], negative_prompt=args.negative_prompt, steps=args.steps, cfg=args.cfg,
                              seed=args.seed, height=args.height, width=args.width, cfg_truncation=args.cfg_truncation,
                              cfg_normalization=args.cfg_normalization)
    if progress is None and not args.quiet:
        def progress(i, n):
            print(f"step {i}/{n}", file=sys.stderr, flush=True)
    result = pipe.generate(request, on_step=progress)
    save_image(result.images[0], Path(args.out), fmt)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    drawn = result.request
    print(f"wrote {args.out} ({drawn.width}x{drawn.height}, {drawn.steps} steps, cfg {drawn.cfg}, {backend}): {timings}")


def run_command(parser: argparse.ArgumentParser, args, flag_of: Callable[[str | None], str | None],
                interrupted: str = "interrupted") -> int:
    """Exit 0 on success; 2 with one line for anything the user can fix (bad flags, files, requests, an
    unwritable disk); 130 on Ctrl-C; 1 with one line for the unexpected (-v prints its traceback). A library
    error about a field is shown with the flag that sets it (flag_of)."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    try:
        args.func(args)
    except LiditError as e:
        flag = flag_of(e.field)
        print(f"error: {flag + ': ' if flag else ''}{e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a path under a file: the environment, not a bug
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot read or write{where}: {e.strerror or e}; check the path, its permissions and free disk "
              "space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (a bug: rerun with -v "
              "for the traceback and report it)", file=sys.stderr)
        return 1
    return 0


def flag_for(parser: argparse.ArgumentParser, command: str, field: str | None, renamed: dict | None = None) -> str | None:
    """The flag of `command` that sets a library field (most share its name; `renamed` lists the others)."""
    if field is None:
        return None
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dest = (renamed or {}).get(field, field)
    return next((a.option_strings[-1] for a in subparsers.choices[command]._actions
                 if a.dest == dest and a.option_strings), None)


# --- lidit-runtime's own commands ----------------------------------------------------------------------------

def _cmd_generate(args) -> None:
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.build, backend=args.backend, providers=args.provider or None)
    draw(pipe, args, args.backend)


def _cmd_serve(args) -> None:
    from .serve import ServeOptions, serve

    code = serve(args.build, ServeOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                                   metrics_port=args.metrics_port, instances=args.instances, max_batch=args.max_batch,
                                   queue_delay_us=args.queue_delay_us, backend=args.backend, exact=args.exact,
                                   threads=args.threads))
    if code != 0:
        raise LiditError(f"the Triton server stopped with exit code {code}")


def _cmd_triton_repo(args) -> None:
    from .serve import ServeOptions, write_model_repository

    folder = write_model_repository(args.build, args.out, ServeOptions(instances=args.instances,
                                                                       max_batch=args.max_batch,
                                                                       queue_delay_us=args.queue_delay_us,
                                                                       exact=args.exact, threads=args.threads),
                                    copy_build=args.copy_build)
    print(f"wrote Triton model repository {args.out} (model {folder.name}); start it with "
          f"`tritonserver --model-repository {args.out}`")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lidit-runtime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="text -> image with a build folder")
    p.add_argument("--build", required=True, help="build folder (from `lidit-export build`)")
    add_request_flags(p)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--provider", action="append", help="ONNX Runtime execution provider (repeatable; default CPU)")
    p.set_defaults(func=_cmd_generate)

    def serving_flags(p):
        p.add_argument("--instances", type=POSITIVE, default=1, help="model instances (each loads the build)")
        p.add_argument("--max-batch", type=POSITIVE, default=4, help="prompts Triton may batch into one call")
        p.add_argument("--queue-delay-us", type=int_in(0, 10_000_000), default=2000,
                       help="how long Triton waits to fill a batch (microseconds)")
        p.add_argument("--threads", type=int_in(0, 1024), default=0,
                       help="ONNX Runtime threads per instance (0: its choice; keep instances x threads <= cores)")
        p.add_argument("--exact", action="store_true",
                       help="draw each request alone: images bit-identical to a one-request call (batched ones may "
                       "differ by rounding: ONNX Runtime's kernels are not batch-invariant)")

    p = sub.add_parser("serve", help="serve a build through Triton Inference Server (PyTriton) as model `lidit`")
    p.add_argument("--build", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int_in(1, 65535), default=8000)
    p.add_argument("--grpc-port", type=int_in(1, 65535), default=8001)
    p.add_argument("--metrics-port", type=int_in(1, 65535), default=8002)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    serving_flags(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("triton-repo", help="write a Triton model repository (config.pbtxt + Python backend)")
    p.add_argument("--build", required=True)
    p.add_argument("--out", required=True, help="repository folder to write")
    p.add_argument("--copy-build", action="store_true", help="copy the build into the repository (default: its path)")
    serving_flags(p)
    p.set_defaults(func=_cmd_triton_repo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser, args, lambda field: flag_for(parser, args.command, field))


if __name__ == "__main__":
    sys.exit(main())
