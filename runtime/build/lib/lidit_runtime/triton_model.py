"""Triton Python-backend model of a lidit build (copied into a model repository as `model.py` by
`lidit_runtime.serve.write_model_repository`). Each request is checked on its own: a bad one gets a one-line
error and its neighbours in the batch are drawn; requests that can share one call (same negative prompt,
steps, cfg, size, guidance fields) are drawn together, each row with its own seed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# lidit_runtime is imported in initialize(), after the folders the model config names are on sys.path: Triton's
# Python stub neither reads PYTHONPATH nor runs the .pth files of an editable install.
LiditError = GenerateRequest = Pipeline = None

FIELDS = {"steps": int, "cfg": float, "seed": int, "height": int, "width": int, "cfg_truncation": float,
          "cfg_normalization": float}


def _text(tensor, name: str) -> str:
    if tensor is None:
        raise LiditError(f"the request has no {name} input (BYTES, one string per request)")
    value = tensor.as_numpy().reshape(-1)
    if value.size != 1:
        raise LiditError(f"{tensor.name()} must hold one string per request, got {value.size}")
    item = value[0]
    try:
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise LiditError(f"{tensor.name()} is not UTF-8 text") from None


def parse(request) -> GenerateRequest:
    """A GenerateRequest from one Triton request (missing optional inputs: the model's defaults)."""
    fields = {}
    for name, kind in FIELDS.items():
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            value = tensor.as_numpy().reshape(-1)
            if value.size != 1:
                raise LiditError(f"{name} must hold one value per request, got {value.size}")
            fields[name] = kind(value[0])
    negative = pb_utils.get_input_tensor_by_name(request, "negative_prompt")
    prompt = _text(pb_utils.get_input_tensor_by_name(request, "prompt"), "prompt")
    return GenerateRequest([prompt], negative_prompt=_text(negative, "negative_prompt") if negative is not None else "",
                           **fields)


def error_response(error: Exception):
    """One line; the request's own fault (LiditError) is a client error (HTTP 400), anything else a server one."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, LiditError):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    else:
        text, code = f"internal error ({type(error).__name__}): {text}", getattr(pb_utils.TritonError, "INTERNAL", None)
    error = pb_utils.TritonError(text) if code is None else pb_utils.TritonError(text, code)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel:
    def initialize(self, args):
        global LiditError, GenerateRequest, Pipeline
        config = json.loads(args["model_config"])
        extra = config["parameters"].get("python_path", {}).get("string_value", "")
        for folder in reversed([p for p in extra.split(":") if p]):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        from lidit_runtime.errors import LiditError
        from lidit_runtime.pipeline import GenerateRequest, Pipeline

        build = Path(config["parameters"]["build"]["string_value"])
        if not build.is_absolute():  # copied into the repository: relative to the version folder
            build = Path(args["model_repository"]) / args["model_version"] / build
        backend = config["parameters"]["backend"]["string_value"]
        self.exact = config["parameters"].get("exact", {}).get("string_value") == "true"
        threads = int(config["parameters"].get("threads", {}).get("string_value") or 0)
        self.pipe = Pipeline.load(build, backend=backend, **({"threads": threads} if threads else {}))

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict = {}
        for i, request in enumerate(requests):
            try:
                resolved = self.pipe.prepare(parse(request))
            except Exception as e:  # a bad request answers alone
                responses[i] = error_response(e)
                continue
            key = (i,) if self.exact else (resolved.negative_prompt, resolved.steps, resolved.cfg, resolved.height,
                                           resolved.width, resolved.cfg_truncation, resolved.cfg_normalization)
            groups.setdefault(key, []).append((i, resolved))
        for members in groups.values():
            first = members[0][1]
            batch = GenerateRequest([r.prompts[0] for _, r in members], negative_prompt=first.negative_prompt,
                                    steps=first.steps, cfg=first.cfg, height=first.height, width=first.width,
                                    cfg_truncation=first.cfg_truncation, cfg_normalization=first.cfg_normalization,
                                    seeds=[r.seed for _, r in members])
            try:
                result = self.pipe.generate(batch)
            except Exception as e:
                for i, _ in members:
                    responses[i] = error_response(e)
                continue
            timings = json.dumps({**result.timings, "batch": len(members)})
            for row, (i, _) in enumerate(members):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("image", result.images[row][None]),
                    pb_utils.Tensor("timings", np.array([[timings.encode()]], dtype=object))])
        return responses
