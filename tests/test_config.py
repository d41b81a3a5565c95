"""Configs are dataclasses that round-trip through JSON and fail with the field named."""
import json

import pytest

from lidit_export.config import PipelineConfig
from lidit_export.errors import ConfigError
from lidit_export.model.pipeline import INDEX


def test_pipeline_config_round_trips_through_json(tiny_folder):
    config = PipelineConfig.from_json_file(tiny_folder / INDEX)
    again = PipelineConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    assert len(config.encoders) == 2 and config.encoders[0].feature_layer == -3
    assert config.refiner.depth == 2  # [paper]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["transformer"].update(bogus=1), r"transformer has unknown fields \['bogus'\]"),
    (lambda d: d["encoders"][0].pop("hidden_size"), r"encoders\[0\] is missing required fields \['hidden_size'\]"),
    (lambda d: d["transformer"].update(context_dim=65), "transformer.context_dim=65 must equal refiner.width"),
    (lambda d: d["refiner"].update(llm_hidden_sizes=[64, 64]), "refiner.llm_hidden_sizes"),
    (lambda d: d["encoders"][1].update(feature_layer=-9), r"encoders\[1\].feature_layer=-9"),
    (lambda d: d["scheduler"].update(sampler="plms"), "scheduler.sampler='plms'"),
    (lambda d: d["vae"].update(norm_num_groups=5), "vae.norm_num_groups=5"),
])
def test_invalid_fields_are_named_in_the_error(tiny_folder, edit, message):
    data = json.loads((tiny_folder / INDEX).read_text())
    edit(data)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict(data)


def test_unreadable_index_names_the_fix(tmp_path):
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PipelineConfig.from_json_file(tmp_path / INDEX)
