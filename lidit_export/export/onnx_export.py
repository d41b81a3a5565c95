"""Export each component to its own ONNX graph.

Exporter: the TorchScript exporter (`dynamo=False`) at opset 19 for every component. Measured here
on CPU: a 135M LLM exports in ~13 s this way vs ~125 s with dynamo; and only this path turns
ModelOpt's INT8/FP8 fake-quant into Q/DQ nodes, which the quantized graphs will need. Opset 19 is
exported directly, because raising the opset afterwards breaks ReduceMean.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lidit_runtime.manifest import file_sha256
from lidit_runtime.precision import Precision

from ..components import encoder
from ..errors import ArtifactError
from .graph_passes import (convert_to_half, fold_weight_quantization, fusable_tanh_gelu, quantize_weights_only,
                           standardize_fp8_qdq, strip_activation_qdq)
from .graph_spec import GraphSpec, refiner_input_names

OPSET = 19
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes; protobuf cannot hold more than 2 GB


class RefinerGraph(nn.Module):
    """Flat signature (timestep, hidden_0, attention_mask_0, pooled_0, hidden_1, ...) for export."""

    def __init__(self, refiner: nn.Module, num_llms: int):
        super().__init__()
        self.refiner = refiner
        self.num_llms = num_llms

    def forward(self, timestep, *flat):
        hidden, masks, pooled = list(flat[0::3]), list(flat[1::3]), list(flat[2::3])
        context, mask = self.refiner(hidden, masks, pooled, timestep)
        return context.float(), mask  # graph I/O stays float32 whatever the refiner computes in


def component_modules(pipe, prefix_cache: bool = False, replace: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    """The module each graph is traced from; prefix_cache bakes each LLM's prefix states in, `replace`
    swaps in other versions of the refiner / DiT (e.g. ModelOpt-quantized copies)."""
    from ..model.llm_encoder import PrefixCachedEncoder

    replace = replace or {}
    modules = {encoder(i).name: PrefixCachedEncoder(enc, tok.prefix_ids) if prefix_cache else enc
               for i, (enc, tok) in enumerate(zip(pipe.encoders, pipe.tokenizers))}
    modules["refiner"] = RefinerGraph(replace.get("refiner", pipe.refiner), len(pipe.encoders))
    modules["dit"] = replace.get("dit", pipe.transformer)
    modules["vae_decoder"] = pipe.vae_decoder
    return modules


CAPTIONS = ["a red circle to the left of a blue square on a wooden table",
            "two small cats", "a photo of a yellow bus next to a tall tree under a cloudy sky", ""]


@torch.inference_mode()
def component_inputs(pipe, batch: int, text_lengths: list[int] | None, latent_hw: tuple[int, int],
                     seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Realistic inputs for every graph at one shape: real prompts through the reference encoders.

    text_lengths pads each LLM's tokens to that length (None: the longest prompt's length).
    """
    rng = np.random.default_rng(seed)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    out: dict[str, dict[str, np.ndarray]] = {}
    refiner_feeds = {"timestep": rng.uniform(0, 999, size=batch).astype(np.float32)}
    pooled_all = []
    for i, (enc, tok) in enumerate(zip(pipe.encoders, pipe.tokenizers)):
        t = tok(captions, pad_to=None if text_lengths is None else text_lengths[i])
        out[encoder(i).name] = {"input_ids": t.input_ids, "attention_mask": t.attention_mask}
        hidden, pooled = enc(torch.from_numpy(t.input_ids), torch.from_numpy(t.attention_mask))
        h, m, p = refiner_input_names(i)
        refiner_feeds.update({h: hidden.float().numpy(), m: t.attention_mask, p: pooled.float().numpy()})
        pooled_all.append(pooled.float().numpy())
    out["refiner"] = refiner_feeds
    n = len(pipe.encoders)
    context, context_mask = pipe.refiner([torch.from_numpy(refiner_feeds[refiner_input_names(i)[0]]) for i in range(n)],
                                         [torch.from_numpy(refiner_feeds[refiner_input_names(i)[1]]) for i in range(n)],
                                         [torch.from_numpy(refiner_feeds[refiner_input_names(i)[2]]) for i in range(n)],
                                         torch.from_numpy(refiner_feeds["timestep"]))
    C = pipe.config.vae.latent_channels
    latents = rng.standard_normal((batch, C, *latent_hw), dtype=np.float32)
    out["dit"] = {"latents": latents, "timestep": refiner_feeds["timestep"], "context": context.float().numpy(),
                  "context_mask": context_mask.numpy(), "pooled": np.concatenate(pooled_all, axis=-1)}
    out["vae_decoder"] = {"latents": rng.standard_normal((min(batch, 2), C, *latent_hw), dtype=np.float32)}
    return out


def export_graph(module: nn.Module, spec: GraphSpec, sample: dict[str, np.ndarray], out_file: Path,
                 external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                 precision: Precision = Precision.FP32, weights: str | None = None) -> str:
    """Trace `module` on `sample`, check it, and move it to `out_file` atomically. Returns its sha256.
    Weights above `external_data_threshold` bytes go to `<file>.data` beside the graph. A half precision
    converts the traced FP32 graph; a weight-only one keeps only the weight quantization of its Q/DQ graph.
    weights: "int8" / "int4" quantizes the FP32 graph's weights for ONNX Runtime (graph_passes.quantize_weights_only)."""
    import onnx

    policy = Precision(precision).policy

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(sample[t.name]) for t in spec.inputs)
    with tempfile.TemporaryDirectory(dir=out_file.parent, prefix=f".{spec.name}.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about python ints of shapes
            torch.onnx.export(module.eval(), args, str(raw), dynamo=False, opset_version=OPSET,
                              input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs],
                              dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
        model = onnx.load(str(raw))  # pulls in any external data torch wrote beside it
        standardize_fp8_qdq(model)  # no-op unless ModelOpt FP8 quantizers were traced
        fold_weight_quantization(model)  # quantized weights stored as INT8 / FP8: ~4x smaller files
        if policy.weight_only:
            strip_activation_qdq(model)
        elif policy.half:
            model = convert_to_half(model, precision)
        if weights is not None:
            model = quantize_weights_only(model, weights)
        fusable_tanh_gelu(model)  # same ops, the order ONNX Runtime fuses into one FastGelu kernel
        size = sum(t.ByteSize() for t in model.graph.initializer)
        staged = Path(tmp) / out_file.name
        external = size > external_data_threshold
        data_name = out_file.name + ".data"
        onnx.save_model(model, str(staged), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data_name if external else None)
        onnx.checker.check_model(str(staged))
        onnx.shape_inference.infer_shapes_path(str(staged), str(staged))
        if external:
            os.replace(Path(tmp) / data_name, out_file.parent / data_name)
        os.replace(staged, out_file)
    return file_sha256(out_file)


# How far a half encoder graph's outputs may drift from the FP32 module on the export sample (relative L2):
# about 10x what a healthy graph shows (tiny: FP16 ~1e-3, BF16 ~1e-2; SmolLM2 in benchmarks/encoder_weights.py).
HALF_DRIFT = {Precision.FP16: 0.02, Precision.BF16: 0.1}


def check_half_drift(file: Path, spec: GraphSpec, module: nn.Module, sample: dict[str, np.ndarray],
                     precision: Precision) -> float:
    """A half precision graph computes what its FP32 module does on `sample`, within HALF_DRIFT; returns the
    worst relative error. FP16 stops at 65504 and some LLMs' activations pass it (outliers of a few thousand
    are common, tens of thousands are not rare): the converter clips the weights and a squared norm overflows
    to inf, and the features come out finite but wrong - so the check is against FP32, not for inf. Runs on
    ONNX Runtime's CPU provider (FP16 through its inserted casts, BF16 through bf16_emulation)."""
    import onnxruntime as ort

    from lidit_runtime.backends.bf16_emulation import emulated_session

    args = tuple(torch.from_numpy(sample[t.name]) for t in spec.inputs)
    with torch.inference_mode():
        want = module.eval()(*args)
    want = [w.float().numpy() for w in (want if isinstance(want, (tuple, list)) else (want,))]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    session = (emulated_session(file, options, providers) if precision is Precision.BF16
               else ort.InferenceSession(str(file), options, providers=providers))
    got = session.run(None, {t.name: sample[t.name] for t in spec.inputs})
    worst = 0.0
    for out, a, b in zip(spec.outputs, got, want):
        if a.dtype.kind != "f":
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) if np.isfinite(a).all() else float("inf")
        worst = max(worst, rel)
        if not rel <= HALF_DRIFT[precision]:
            fix = "use bf16 (FP32's range)" if precision is Precision.FP16 else "keep fp32"
            raise ArtifactError(f"{spec.name} in {precision} drifts from FP32 on the export sample ({out.name}: "
                                f"relative error {rel:.3g} > {HALF_DRIFT[precision]}; its activations leave the "
                                f"{precision} range); {fix}")
    return worst


def check_exported_io(file: Path, spec: GraphSpec) -> None:
    """The graph's inputs and outputs are the spec's, by name and rank."""
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    names = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    expected = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if names != expected:
        raise ArtifactError(f"{file} has I/O {names}, expected {expected}; re-run `lidit-export export`")


def copy_tokenizers(pipe, out_dir: Path) -> list[tuple[str, str]]:
    """Each LLM's tokenizer.json into BUILD/tokenizers under a name that carries its hash: (path, sha256)."""
    from lidit_runtime.manifest import build_file

    from ..artifacts import atomic_write_bytes

    files = []
    for i, enc in enumerate(pipe.config.encoders):
        source = build_file(pipe.path, f"{enc.path}/tokenizer.json", f"tokenizer of LLM {i}", "model_index.json",
                            "restore the model folder")
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        rel = f"tokenizers/llm_{i}-{digest[:16]}.json"
        if not (out_dir / rel).is_file() or file_sha256(out_dir / rel) != digest:
            atomic_write_bytes(out_dir / rel, data)
        files.append((rel, digest))
    return files
