"""ONNX export: graphs per component, the LLM cut at the third-to-last block, the prefix baked in,
manifest contents, and rebuilds that redo only what changed."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from lidit_export.export.export_build import export_model
from lidit_export.export.graph_spec import graph_specs
from lidit_runtime.errors import ArtifactError
from lidit_runtime.manifest import load_manifest

GRAPHS = ["encoder_0", "encoder_1", "refiner", "dit", "vae_decoder"]
quiet = dict(progress=lambda *_: None)


def _float_elements(path):
    model = onnx.load(str(path))
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)


def test_every_component_has_a_checked_graph_with_the_spec_io(tiny_build, tiny_pipe):
    manifest = load_manifest(tiny_build, verify=True)
    assert list(manifest.components) == GRAPHS
    specs = graph_specs(tiny_pipe.config, prefix_cache=True)
    for name in GRAPHS:
        model = onnx.load(str(tiny_build / manifest.components[name].file))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == [t.name for t in specs[name].inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in specs[name].outputs]
        assert model.opset_import[0].version == 19
        dims = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        assert "batch" in dims  # dynamic batch everywhere


def test_every_tanh_gelu_is_exported_in_the_form_onnx_runtime_fuses(tiny_build, tiny_pipe, tmp_path):
    """graph_passes.fusable_tanh_gelu: every MLP's GELU becomes one FastGelu kernel at ONNX Runtime's ALL level
    (the exporter's own order of the same ops is not recognised: 9 elementwise passes per MLP); the graphs'
    values are checked against PyTorch by the parity tests."""
    import onnxruntime as ort

    manifest = load_manifest(tiny_build)
    mlps = {"refiner": sum(1 for m in tiny_pipe.refiner.modules() if type(m).__name__ == "Mlp"),
            "dit": sum(1 for m in tiny_pipe.transformer.modules() if type(m).__name__ == "Mlp")}
    for name, count in mlps.items():
        file = tiny_build / manifest.components[name].file
        ops = [n.op_type for n in onnx.load(str(file)).graph.node]
        assert ops.count("Tanh") == ops.count("Pow") - _rms_pows(file) == count > 0, name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert fused.count("FastGelu") == count and "Tanh" not in fused, name


def _rms_pows(file) -> int:
    """Pow nodes that are not a GELU's cube (RMSNorm's square, if its normalization is not fused yet)."""
    model = onnx.load(str(file))
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    inits = {i.name: i for i in model.graph.initializer}

    def value(name):
        t = inits.get(name) or (consts[name].attribute[0].t if name in consts else None)
        return None if t is None else float(onnx.numpy_helper.to_array(t).reshape(-1)[0])

    return sum(1 for n in model.graph.node if n.op_type == "Pow" and value(n.input[1]) != 3.0)


def test_encoder_graph_stops_at_the_third_to_last_block(tiny_build, tiny_pipe):
    # The graph's weights are those of the blocks it runs (+ the baked prefix), not of the full LLM.
    for i, encoder in enumerate(tiny_pipe.encoders):
        block = sum(p.numel() for p in encoder.model.layers[0].parameters())
        kept = sum(p.numel() for p in encoder.model.parameters())
        in_graph = _float_elements(tiny_build / load_manifest(tiny_build).components[f"encoder_{i}"].file)
        assert kept <= in_graph < kept + block  # two more blocks would add 2 x `block`


def test_prefix_cached_encoder_equals_the_uncached_reference(tiny_build, tiny_pipe):
    from lidit_runtime.pipeline import Pipeline

    runtime = Pipeline.load(tiny_build)
    for i, (encoder, tok, record) in enumerate(zip(tiny_pipe.encoders, tiny_pipe.tokenizers, runtime.manifest.encoders)):
        assert record.prefix_cached and record.prefix_length == tiny_pipe.config.refiner.prefix_lengths[i]
        for captions in (["a red cat"], ["", "a very long caption about many small wooden chairs and tables " * 3]):
            t = tok(captions)
            hidden, pooled = runtime.backend.encode_prompt(i, t.input_ids, t.attention_mask)
            with torch.no_grad():
                ref_h, ref_p = encoder(torch.from_numpy(t.input_ids), torch.from_numpy(t.attention_mask))
            valid = t.attention_mask.astype(bool)
            rel = np.linalg.norm(hidden[valid] - ref_h.numpy()[valid]) / np.linalg.norm(ref_h.numpy()[valid])
            assert rel < 1e-5
            np.testing.assert_allclose(pooled, ref_p.numpy(), rtol=1e-5, atol=1e-6)


def test_manifest_holds_what_the_runtime_needs(tiny_build, tiny_pipe):
    data = json.loads((tiny_build / "manifest.json").read_text())
    assert data["format"] == "lidit-build/2"
    assert data["latent_channels"] == 16 and data["vae_scale_factor"] == 8 and data["patch_size"] == 2
    assert data["scheduler"]["sampler"] == "dpmpp_2m"
    for i, enc in enumerate(data["encoders"]):
        assert (tiny_build / enc["tokenizer_file"]).exists()
        assert enc["prefix_length"] == tiny_pipe.config.refiner.prefix_lengths[i]
        assert enc["prefix_text"] == tiny_pipe.config.encoders[i].prefix_text
    for name, comp in data["components"].items():
        assert len(comp["sha256"]) == 64 and comp["input_key"]
        assert comp["inputs"] and comp["outputs"] and comp["dims"]["batch"] == [1, 2, 8] or name == "vae_decoder"
    assert {"torch", "onnx", "onnxruntime", "transformers", "lidit-export"} <= set(data["tool_versions"])


def test_second_export_is_a_no_op_and_a_changed_dit_re_exports_only_the_dit(tiny_folder, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    build = tmp_path / "build"
    export_model(model, build, **quiet)
    files = {n: build / r.file for n, r in load_manifest(build).components.items()}
    before = {n: f.stat().st_mtime_ns for n, f in files.items()}
    lines = []
    export_model(model, build, progress=lines.append)
    assert all("up to date" in line for line in lines) and len(lines) == 5
    assert before == {n: f.stat().st_mtime_ns for n, f in files.items()}

    from safetensors.torch import load_file, save_file

    weights = model / "transformer/model.safetensors"
    state = load_file(str(weights))
    state["final_layer.linear.bias"] += 0.5
    save_file(state, str(weights))
    lines.clear()
    export_model(model, build, progress=lines.append)
    redone = [line.split()[0] for line in lines if "exporting" in line]
    assert redone == ["dit"]


def test_a_missing_graph_is_re_exported_and_tampering_is_detected(tiny_folder, tmp_path):
    build = tmp_path / "build"
    export_model(tiny_folder, build, **quiet)
    (build / load_manifest(build).components["refiner"].file).unlink()  # as if killed before writing it
    (build / "onnx/.stale.tmp").write_text("left by a killed run")
    lines = []
    export_model(tiny_folder, build, progress=lines.append)
    assert [line.split()[0] for line in lines if "exporting" in line] == ["refiner"]
    load_manifest(build, verify=True)

    with open(build / load_manifest(build).components["dit"].file, "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    with pytest.raises(ArtifactError, match="does not match its manifest hash.*lidit-export export"):
        load_manifest(build, verify=True)


def test_missing_build_folder_names_the_command_to_run(tmp_path):
    with pytest.raises(ArtifactError, match="lidit-export export"):
        load_manifest(tmp_path / "nothing")


def test_large_graphs_keep_their_weights_in_external_data(tiny_pipe, tmp_path):
    import onnxruntime as ort

    from lidit_export.export.onnx_export import component_inputs, component_modules, export_graph

    spec = graph_specs(tiny_pipe.config)["dit"]
    feeds = component_inputs(tiny_pipe, 2, None, (8, 8))["dit"]
    out = tmp_path / "onnx" / "dit.onnx"
    export_graph(component_modules(tiny_pipe)["dit"], spec, feeds, out, external_data_threshold=0)
    assert (tmp_path / "onnx" / "dit.onnx.data").stat().st_size > out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["dit.onnx", "dit.onnx.data"]
    (result,) = ort.InferenceSession(str(out)).run(None, feeds)
    with torch.no_grad():
        expected = tiny_pipe.transformer(*(torch.from_numpy(v) for v in feeds.values()))
    np.testing.assert_allclose(result, expected.numpy(), rtol=1e-4, atol=1e-5)
