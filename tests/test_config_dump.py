from __future__ import annotations

import json

import yaml
from pydantic import BaseModel

from megaset.config import Config
from megaset.config_dump import defaults_yaml, json_schema, resolved_yaml


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key path of the model's sections (fields holding a model are descended into)."""
    out = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        out.add(key)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= _keys(field.annotation, f"{key}.")
    return out


def _paths(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, dict) and f"{prefix}{key}" != "inputs.channels":
            out |= _paths(value, f"{prefix}{key}.")
    return out


def test_defaults_load_back_to_the_defaults_and_name_every_key():
    text = defaults_yaml()
    data = yaml.safe_load(text)
    assert Config.model_validate(data) == Config()
    missing = _keys(Config) - _paths(data)
    assert not missing


def test_defaults_carry_each_description_as_a_comment():
    lines = defaults_yaml().splitlines()
    at = lines.index("  # Integrated luminosity in fb^-1.")
    assert lines[at + 1] == "  lumi_ifb: 139.0"
    at = next(i for i, line in enumerate(lines) if line.strip() == "chunk_len: 16384")
    assert lines[at - 1].strip().startswith("# Events per chunk in every group")
    assert all(len(line) <= 100 for line in lines if line.lstrip().startswith("#"))


def test_resolved_yaml_round_trips():
    cfg = Config().replace(training={"epochs": 3}, store={"url": "s3://bucket/store.zarr"})
    assert Config.model_validate(yaml.safe_load(resolved_yaml(cfg))) == cfg


def test_json_schema_describes_the_file():
    schema = json.loads(json_schema())
    assert schema["title"] == "megaset configuration" and schema["additionalProperties"] is False
    assert "schema" in schema["properties"] and "schema_" not in schema["properties"]
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["epochs"]["minimum"] == 1 and training["epochs"]["default"] == 40
    assert "ae-shallow" in training["model"]["enum"]
