from __future__ import annotations

import pytest

from megaset.config import Config
from megaset.config_overrides import apply_overrides, parse_override
from megaset.errors import ConfigError


def test_values_are_typed_by_the_field_they_set():
    cfg = apply_overrides(Config(), [
        "training.epochs=3",                      # int
        "training.learning_rate=1e-3",            # float, although YAML 1.1 reads 1e-3 as text
        "inputs.tree=123",                        # a string field keeps the text
        "store.staging_url=null",                 # null for an optional key
        "training.weighted=false",                # bool
        "training.architecture.hidden=[64, 32]",  # a list
        "report.label=Simulation Preliminary",    # spaces
        "schema.run=null",
    ])
    assert cfg.training.epochs == 3 and cfg.training.learning_rate == 1e-3
    assert cfg.inputs.tree == "123" and cfg.store.staging_url is None and cfg.training.weighted is False
    assert cfg.training.architecture.hidden == [64, 32] and cfg.report.label == "Simulation Preliminary"
    assert cfg.schema.run is None
    assert cfg.training.batch_size == Config().training.batch_size  # the rest untouched


def test_later_overrides_win_and_free_names_open_new_entries():
    cfg = apply_overrides(Config(), [
        "training.epochs=3", "training.epochs=4",
        "inputs.channels.ttbar.files=[a.root, b.root]", "inputs.channels.ttbar.xsec_pb=831.8",
    ])
    assert cfg.training.epochs == 4
    assert cfg.inputs.channels["ttbar"].files == ["a.root", "b.root"] and cfg.inputs.channels["ttbar"].xsec_pb == 831.8


def test_a_null_section_can_be_filled():
    cfg = apply_overrides(Config(), ["cluster.adapt.maximum=8"])
    assert cfg.cluster.adapt is not None and (cfg.cluster.adapt.minimum, cfg.cluster.adapt.maximum) == (1, 8)


def test_the_alias_schema_is_a_key():
    assert parse_override("schema.weight=mcWeight") == (["schema", "weight"], "mcWeight")
    assert parse_override("jets.schema.event=null") == (["jets", "schema", "event"], None)


@pytest.mark.parametrize(("item", "message"), [
    ("trainig.epochs=3", r"--set trainig\.epochs=3: unknown key 'trainig' in the top level; did you mean 'training'\?"),
    ("training.epoch=3", r"unknown key 'epoch' in training; did you mean 'epochs'\? \(valid there: model, output"),
    ("store.url.scheme=s3", r"--set store\.url\.scheme=s3: store\.url is a value, it has no key 'scheme'"),
    ("rmm.objects.name=x", r"rmm\.objects is a list: set it whole"),
    ("training.epochs", r"--set 'training\.epochs': write key\.path=value"),
    ("=3", r"write key\.path=value"),
    ("training.epochs=many", r"--set training\.epochs=many: Input should be a valid integer.*\(got 'many'\)"),
    ("training.model=ae-wide", r"--set training\.model=ae-wide: Input should be 'ae-shallow'"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [item])


def test_constraints_are_checked_as_in_a_file():
    with pytest.raises(ConfigError, match=r"invalid configuration in 'c\.yaml' with --set training\.epochs=0:\n"
                                          r"  training\.epochs: Input should be greater than or equal to 1"):
        apply_overrides(Config(), ["training.epochs=0"], "'c.yaml'")
