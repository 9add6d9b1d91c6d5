from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from megaset.config import CollectionSchema, Config, LeptonSelection, MetSchema, SelectionConfig, load_config
from megaset.errors import ConfigError
from megaset.pipeline.selection import cutflow_steps

DOCS = Path(__file__).parents[1] / "docs"


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


def test_replace_with_an_empty_dict_clears_what_it_names():
    cfg = Config()
    assert cfg.scoring.combine, "the default search combines models"
    cleared = cfg.replace(scoring={"combine": {}})
    assert cleared.scoring.combine == {} and cleared.scoring.device == cfg.scoring.device
    assert cfg.replace(scoring={"batch_size": 8}).scoring.combine == cfg.scoring.combine


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


def _optional_section(annotation) -> type[BaseModel] | None:
    """The section class of a field typed ``Section | None``, when it can be built from defaults alone."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _sections(section: BaseModel, path: tuple[tuple[str, str], ...] = ()):
    """(path, documented default) of every section under ``section``: each step of a path is (yaml key,
    attribute); sections that default to null are walked with their own defaults (e.g. selection.photons)."""
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if value is None and (cls := _optional_section(field.annotation)) is not None:
            if any(f.is_required() for f in cls.model_fields.values()):
                continue  # no default to keep (store.contamination needs its signal)
            value = cls()
        if isinstance(value, BaseModel):
            here = (*path, (field.alias or name, name))
            yield here, value
            yield from _sections(value, here)


SECTIONS = dict(_sections(Config()))


def _nested(path, leaf: dict) -> dict:
    for key, _ in reversed(path):
        leaf = {key: leaf}
    return leaf


def _section_of(cfg: Config, path) -> BaseModel:
    for _, attribute in path:
        cfg = getattr(cfg, attribute)
    return cfg


@pytest.mark.parametrize("path", list(SECTIONS), ids=[".".join(k for k, _ in p) for p in SECTIONS])
def test_every_default_survives_a_partial_override_of_its_section(path):
    """Overriding one key of a section, with any value, must leave each other key at its documented
    default: a sub-section built from other defaults than the documented ones fails here."""
    default = SECTIONS[path]
    assert len(SECTIONS) >= 33  # the walk reaches every section, nested ones and those off by default
    dumped = default.model_dump(mode="json", by_alias=True)
    for key, value in dumped.items():
        cfg = Config.model_validate(_nested(path, {key: value}))
        assert _section_of(cfg, path) == default, f"{'.'.join(k for k, _ in path)}: override of {key} only"


def test_partial_lepton_overrides_keep_the_documented_cuts():
    """The override of the NanoAOD recipe: a separate muon collection, no flavour field."""
    cfg = Config.model_validate({"selection": {"muons": {"collection": "muon", "flavor": None},
                                               "electrons": {"collection": "electron", "flavor": None}}})
    muons, electrons = cfg.selection.muons, cfg.selection.electrons
    assert (muons.abs_eta_max, muons.d0sig_max, muons.require_tight, muons.require_iso) == (2.7, 3.0, False, True)
    assert (electrons.abs_eta_max, electrons.d0sig_max, electrons.require_tight) == (2.47, 5.0, True)
    jets = Config.model_validate({"jets": {"schema": {"event": None}}}).jets.schema
    assert (jets.met, jets.weight, jets.run, list(jets.collections)) == (None, None, None, ["constituent"])
    with pytest.raises(ValueError, match="abs_eta_max"):
        LeptonSelection(flavor=None, require_tight=False, d0sig_max=None)  # no defaults of its own to drift


def _selection_table(cfg: SelectionConfig) -> list[str]:
    """The object table of docs/pipeline.md, from the model."""
    jets = cfg.jets

    def leptons(sel) -> str:
        cuts = [f"flavour {sel.flavor}", f"pT ≥ {sel.pt_min:g} GeV", f"\\|η\\| ≤ {sel.abs_eta_max:g}"]
        cuts += ["tight"] * sel.require_tight + ["isolated"] * sel.require_iso
        cuts += [f"\\|d0/σ\\| ≤ {sel.d0sig_max:g}"] if sel.d0sig_max is not None else []
        return ", ".join(cuts)

    return [
        f"| jets | pT ≥ {jets.pt_min:g} GeV, \\|η\\| ≤ {jets.abs_eta_max:g} |",
        f"| light jets | jets with DL1r < {jets.light_max:g} |",
        f"| b-jets | jets with DL1r ≥ {jets.b_min:g} (jets in between are in neither, but count in HT) |",
        f"| electrons | {leptons(cfg.electrons)} |",
        f"| muons | {leptons(cfg.muons)} |",
    ]


def test_docs_state_the_models_selection_defaults():
    text = (DOCS / "pipeline.md").read_text()
    lines = text.splitlines()
    start = lines.index("| object | definition (defaults, all configurable) |") + 2
    assert lines[start:start + 5] == _selection_table(SelectionConfig())
    for mode in ("2lep", "3lep"):
        for step in cutflow_steps(SelectionConfig(mode=mode))[2:]:
            assert f"`{step}`" in text, step


@pytest.mark.parametrize(("text", "error"), [
    ("cluster: {workers: true}\n", r"cluster\.workers: Input should be a valid integer \(got True\)"),
    ("store: {chunk_len: '4096'}\n", r"store\.chunk_len: Input should be a valid integer \(got '4096'\)"),
    ("inputs: {lumi_ifb: .inf}\n", r"inputs\.lumi_ifb: Input should be a finite number \(got inf\)"),
    ("training: {learning_rate: .nan}\n", r"training\.learning_rate: Input should be a finite number"),
    ("selection: {on_nonfinite: true}\n", r"selection\.on_nonfinite: Input should be 'drop' or 'fail'"),
])
def test_types_are_strict_and_numbers_finite(tmp_path, text, error):
    with pytest.raises(ConfigError, match=error):
        load_config(write(tmp_path, text))


def test_an_integer_is_still_a_float(tmp_path):
    assert load_config(write(tmp_path, "inputs: {lumi_ifb: 140}\n")).inputs.lumi_ifb == 140.0


def test_duplicate_yaml_key_names_key_and_lines(tmp_path):
    path = write(tmp_path, "store:\n  seed: 1\n  chunk_len: 5\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"megaset\.yaml' is not valid YAML: key 'seed' is given twice in one "
                                          r"mapping, on lines 2 and 4; keep one"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"key 'store' is given twice.*lines 1 and 2"):
        load_config(write(tmp_path, "store: {}\nstore: {seed: 3}\n"))
    # The same key in two different mappings is fine.
    assert load_config(write(tmp_path, "store: {seed: 3}\ntraining: {seed: 4}\n")).training.seed == 4


@pytest.mark.parametrize(("key", "text"), [
    ("store.url", "store: {url: 'foo://bucket/store.zarr'}\n"),
    ("store.staging_url", "store: {staging_url: 's4://bucket/staging.zarr'}\n"),
    ("inputs.channels.ttbar.files.0", "inputs: {channels: {ttbar: {files: ['xroot://eos//a.root']}}}\n"),
    ("training.output", "training: {output: 'simplecache::foo://m'}\n"),
])
def test_unknown_url_scheme_is_refused_when_the_config_loads(tmp_path, key, text):
    with pytest.raises(ConfigError, match=rf"{key}: Value error, unknown URL scheme '\w+' in .*give a local path"):
        load_config(write(tmp_path, text))


def test_known_url_schemes_load(tmp_path):
    cfg = load_config(write(tmp_path, "store: {url: 's3://bucket/store.zarr'}\n"
                                      "inputs: {channels: {a: {files: ['root://eos//a.root', 'data/*.root']}}}\n"))
    assert cfg.store.url == "s3://bucket/store.zarr"


def test_searches_derive_their_own_paths_and_keep_the_presets_defaults():
    cfg = Config.model_validate({
        "store": {"url": "out/store.zarr", "staging_url": "out/staging"},
        "selection": {"muons": {"abs_eta_max": 2.5}},
        "searches": {"soft": {"selection": {"mode": "soft2lep"}},
                     "ss": {"selection": {"mode": "ss2lep"}, "rmm": {"objects": "charged"},
                            "report": {"output": "elsewhere"}}},
    })
    soft, ss = cfg.search("soft"), cfg.search("ss")
    assert (soft.store.url, soft.store.staging_url, soft.training.output, soft.report.output) == (
        "out/store-soft.zarr", "out/staging-soft", "megaset-demo/models-soft", "megaset-demo/report-soft")
    # The soft preset's lepton thresholds apply; what the configuration set stays.
    assert soft.selection.muons.pt_min == 7.0 and soft.selection.muons.abs_eta_max == 2.5
    assert soft.searches == {} and soft.rmm == cfg.rmm and cfg.selection.mode == "2lep"
    assert ss.report.output == "elsewhere" and ss.rmm.size == 25 and ss.selection.mode == "ss2lep"
    with pytest.raises(ConfigError, match=r"no search 'sof' in searches \(searches: soft, ss\); did you mean 'soft'"):
        cfg.search("sof")


def test_a_search_may_not_change_the_shared_sections():
    with pytest.raises(ValueError, match=r"searches\.x sets cluster, inputs; a search may set only selection, rmm, "
                                         r"store, training, scoring, report"):
        Config.model_validate({"searches": {"x": {"inputs": {}, "cluster": {}}}})
    with pytest.raises(ValueError, match=r"mode"):
        Config.model_validate({"searches": {"x": {"selection": {"mode": "4lep"}}}})
