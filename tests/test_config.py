from __future__ import annotations

import pytest

from megaset.config import CollectionSchema, Config, MetSchema, load_config
from megaset.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "megaset.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    cfg = load_config(None)
    assert cfg.rmm.size == 23
    assert [o.name for o in cfg.rmm.objects] == ["ljet", "bjet", "ele", "muo"]
    assert cfg.selection.jets.light_max == 0.665 and cfg.selection.jets.b_min == 2.195
    assert cfg.selection.electrons.abs_eta_max == 2.47 and cfg.selection.electrons.d0sig_max == 5.0
    assert cfg.selection.muons.abs_eta_max == 2.7 and cfg.selection.muons.d0sig_max == 3.0
    assert cfg.store.staging == "megaset-demo/store.staging.zarr"
    assert cfg.cluster.kind == "local"


def test_file_overrides_and_keeps_other_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "store:\n  chunk_len: 4096\nselection:\n  mode: 3lep\n"))
    assert cfg.store.chunk_len == 4096
    assert cfg.selection.mode == "3lep"
    assert cfg.store.splits.train == 0.6


def test_unknown_key_names_key_file_and_closest_spelling(tmp_path):
    path = write(tmp_path, "store:\n  chunk_lenn: 5\n")
    with pytest.raises(ConfigError,
                       match=r"megaset\.yaml.*\n.*store\.chunk_lenn: unknown key; did you mean 'chunk_len'"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"selektion: unknown key; did you mean 'selection'"):
        load_config(write(tmp_path, "selektion: {}\n"))


def test_every_bad_key_is_reported(tmp_path):
    path = write(tmp_path, "rmm:\n  convention: foo\nselection:\n  jets: {pt_mn: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "rmm.convention: Input should be 'chekanov' or 'thesis' (got 'foo')" in text
    assert "selection.jets.pt_mn: unknown key; did you mean 'pt_min'" in text


def test_mistyped_value_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"store\.chunk_len: .*integer.*got 'many'"):
        load_config(write(tmp_path, "store: {chunk_len: many}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file '.*nope\.yaml'"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(write(tmp_path, "store: [unclosed\n"))


def test_splits_must_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match=r"train \+ val \+ test must be 1, got 1\.1"):
        load_config(write(tmp_path, "store: {splits: {train: 0.7, val: 0.2, test: 0.2}}\n"))


def test_collection_forms():
    assert CollectionSchema(px="a", py="b", pz="c", energy="d").cartesian
    assert CollectionSchema(pt="a", eta="b", phi="c", energy="d").branches() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="give either pt, eta, phi and one of mass / energy"):
        CollectionSchema(pt="a", eta="b", phi="c")
    with pytest.raises(ValueError, match="give either"):
        CollectionSchema(pt="a", eta="b", phi="c", mass="m", px="x", py="y", pz="z", energy="e")


def test_met_as_px_py_replaces_polar_defaults():
    met = MetSchema(px="mpx", py="mpy")
    assert met.branches() == ["mpx", "mpy"]
    with pytest.raises(ValueError, match="give MET either as et and phi, or as px and py"):
        MetSchema(et=None, phi="p")


def test_resolved_round_trips_and_replace_validates():
    cfg = Config()
    again = Config.model_validate(cfg.resolved())
    assert again == cfg
    assert cfg.replace(store={"chunk_len": 10}).store.chunk_len == 10
    with pytest.raises(ConfigError, match=r"store\.chunk_len"):
        cfg.replace(store={"chunk_len": -1})


def test_address_cluster_needs_address(tmp_path):
    with pytest.raises(ConfigError, match=r"kind: address needs address"):
        load_config(write(tmp_path, "cluster: {kind: address}\n"))


def test_remote_input_settings_are_validated(tmp_path):
    cfg = load_config(write(tmp_path, "inputs:\n  remote: {timeout: 5, retries: 0, max_range_gap: 1 MiB}\n"))
    assert (cfg.inputs.remote.timeout, cfg.inputs.remote.retries, cfg.inputs.remote.max_range_gap) == (5, 0, "1 MiB")
    assert cfg.inputs.remote.backoff == 1.0 and cfg.inputs.remote.max_request_bytes == "10 MiB"
    path = write(tmp_path, "inputs:\n  remote: {timeout: 0, max_request_bytes: lots, retry: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "inputs.remote.timeout: Input should be greater than 0" in text
    assert "inputs.remote.max_request_bytes: Value error, cannot read 'lots' as a size" in text
    assert "inputs.remote.retry: unknown key; did you mean 'retries'" in text
