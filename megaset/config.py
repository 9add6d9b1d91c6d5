"""The one configuration file that drives every stage, validated with pydantic.

The field defaults below are the only source of defaults: ``load_config(None)`` is the
built-in demo configuration (simulated ntuples under ``./megaset-demo/``). Unknown or
mistyped keys are errors that name the key, the file, and the closest valid spelling.

>>> cfg = load_config(None)
>>> cfg.rmm.size
23
>>> cfg.selection.mode
'2lep'
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from megaset.errors import ConfigError

__all__ = [
    "Config",
    "load_config",
    "ChannelInput",
    "InputsConfig",
    "CollectionSchema",
    "SchemaConfig",
    "SelectionConfig",
    "RMMConfig",
    "RMMObject",
    "StoreConfig",
    "ClusterConfig",
    "SimulateConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- inputs


class ChannelInput(_Section):
    """One physics channel (a background process, a signal sample or collision data)."""

    files: list[str] = Field(min_length=1, description="Paths, globs or fsspec URLs of ROOT files.")
    tree: str | None = Field(None, description="Tree name; defaults to inputs.tree.")
    xsec_pb: float | None = Field(
        None,
        description="Cross-section in pb. When set, weights are scaled by "
        "xsec * lumi / (sum of the weight branch over all input entries).",
    )
    signal: bool = False
    data: bool = False

    @model_validator(mode="after")
    def _not_both(self) -> ChannelInput:
        if self.signal and self.data:
            raise ValueError("a channel cannot be both signal: true and data: true")
        return self


class InputsConfig(_Section):
    tree: str = "mini"
    lumi_ifb: float = Field(139.0, gt=0, description="Integrated luminosity in fb^-1.")
    chunksize: int = Field(200_000, gt=0, description="Input entries per processing chunk.")
    on_bad_file: Literal["fail", "skip"] = "fail"
    channels: dict[str, ChannelInput] = Field(
        default_factory=dict,
        description="Channel name -> sample. Empty: the simulated demo sample is used.",
    )


# ---------------------------------------------------------------------------- schema


class CollectionSchema(_Section):
    """Branches of one object collection, in (pt, eta, phi, mass|energy) or Cartesian form."""

    pt: str | None = None
    eta: str | None = None
    phi: str | None = None
    mass: str | None = None
    energy: str | None = None
    px: str | None = None
    py: str | None = None
    pz: str | None = None
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Extra per-object branches by role, e.g. btag, flavor, charge, tight, iso, d0sig.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> CollectionSchema:
        polar = (self.pt, self.eta, self.phi)
        cart = (self.px, self.py, self.pz, self.energy)
        if all(polar) and (self.mass or self.energy) and not any((self.px, self.py, self.pz)):
            return self
        if all(cart) and not any((*polar, self.mass)):
            return self
        raise ValueError(
            "give either pt, eta, phi and one of mass / energy, or px, py, pz and energy"
        )

    @property
    def cartesian(self) -> bool:
        return self.px is not None

    def branches(self) -> list[str]:
        kin = (self.px, self.py, self.pz, self.energy) if self.cartesian else (
            self.pt, self.eta, self.phi, self.mass or self.energy)
        return [*kin, *self.fields.values()]


class MetSchema(_Section):
    et: str | None = "met_Et"
    phi: str | None = "met_phi"
    px: str | None = None
    py: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _cartesian_replaces_polar(cls, data: Any) -> Any:
        # Giving px and py means MET is Cartesian: the polar defaults no longer apply.
        if isinstance(data, dict) and data.get("px") and data.get("py"):
            data = {"et": None, "phi": None, **data}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> MetSchema:
        cartesian = bool(self.px and self.py) and not (self.et or self.phi)
        polar = bool(self.et and self.phi) and not (self.px or self.py)
        if not (cartesian or polar):
            raise ValueError("give MET either as et and phi, or as px and py")
        return self

    def branches(self) -> list[str]:
        return [self.px, self.py] if self.px else [self.et, self.phi]


def _default_collections() -> dict[str, CollectionSchema]:
    return {
        "jet": CollectionSchema(
            pt="jetPt", eta="jetEta", phi="jetPhi", mass="jetM", fields={"btag": "jetdl1r"}
        ),
        "lepton": CollectionSchema(
            pt="lepPt",
            eta="lepEta",
            phi="lepPhi",
            mass="lepM",
            fields={
                "flavor": "lepFlavor",
                "charge": "lepCharge",
                "tight": "lepTight",
                "iso": "lepIsoLoose_VarRad",
                "d0sig": "lepD0Sig",
            },
        ),
    }


class SchemaConfig(_Section):
    """Maps the input branches onto object collections, MET, weight and event id."""

    collections: dict[str, CollectionSchema] = Field(default_factory=_default_collections)
    met: MetSchema = MetSchema()
    weight: str | None = Field("wgt", description="Per-event weight branch; null for weight 1.")
    run: str | None = "runNumber"
    event: str | None = "eventNumber"

    def branches(self) -> list[str]:
        out = [b for c in self.collections.values() for b in c.branches()]
        out += self.met.branches()
        out += [b for b in (self.weight, self.run, self.event) if b]
        return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------- selection


class JetSelection(_Section):
    collection: str = "jet"
    pt_min: float = 20.0
    abs_eta_max: float = 2.8
    btag_field: str = "btag"
    light_max: float = Field(0.665, description="Light jets: b-tag score below this.")
    b_min: float = Field(2.195, description="b-jets: b-tag score at or above this.")

    @model_validator(mode="after")
    def _ordered(self) -> JetSelection:
        if self.light_max > self.b_min:
            raise ValueError(f"light_max ({self.light_max}) must not exceed b_min ({self.b_min})")
        return self


class LeptonSelection(_Section):
    collection: str = "lepton"
    flavor: int | None = Field(None, description="Value of the 'flavor' field; null: all objects.")
    pt_min: float = 10.0
    abs_eta_max: float = 2.47
    require_tight: bool = False
    require_iso: bool = True
    d0sig_max: float | None = None


class PhotonSelection(_Section):
    collection: str = "photon"
    pt_min: float = 20.0
    abs_eta_max: float = 2.37


class SelectionConfig(_Section):
    mode: Literal["2lep", "3lep"] = "2lep"
    jets: JetSelection = JetSelection()
    electrons: LeptonSelection = LeptonSelection(
        flavor=1, abs_eta_max=2.47, require_tight=True, d0sig_max=5.0
    )
    muons: LeptonSelection = LeptonSelection(flavor=2, abs_eta_max=2.7, d0sig_max=3.0)
    photons: PhotonSelection | None = None
    mll_min: float = Field(70.0, description="2lep: m_ll of the two leading leptons above this.")
    trigger_pt_2lep: float = Field(25.0, description="2lep: at least two leptons above this pT.")
    trigger_pt_3lep: float = Field(20.0, description="3lep: at least two leptons above this pT.")
    on_nonfinite: Literal["drop", "fail"] = Field(
        "drop", description="Events with NaN/inf in any read branch: counted, then dropped or fatal."
    )


# ---------------------------------------------------------------------------- rmm

OBJECT_SOURCES = ("light_jets", "b_jets", "jets", "electrons", "muons", "photons")


class RMMObject(_Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    source: Literal["light_jets", "b_jets", "jets", "electrons", "muons", "photons"]
    count: int = Field(gt=0, le=50)


def _default_rmm_objects() -> list[RMMObject]:
    return [
        RMMObject(name="ljet", source="light_jets", count=6),
        RMMObject(name="bjet", source="b_jets", count=6),
        RMMObject(name="ele", source="electrons", count=5),
        RMMObject(name="muo", source="muons", count=5),
    ]


class RMMConfig(_Section):
    convention: Literal["chekanov", "thesis"] = "chekanov"
    normalize: Literal["none", "sqrt_s"] = "none"
    sqrt_s_gev: float = 13000.0
    C: float = 0.15
    objects: list[RMMObject] = Field(default_factory=_default_rmm_objects, min_length=1)

    @field_validator("objects")
    @classmethod
    def _unique(cls, objects: list[RMMObject]) -> list[RMMObject]:
        names = [o.name for o in objects]
        if len(set(names)) != len(names):
            raise ValueError(f"object names must be unique, got {names}")
        return objects

    @property
    def size(self) -> int:
        """Rows (= columns) of the matrix: MET plus every object slot."""
        return 1 + sum(o.count for o in self.objects)


# ---------------------------------------------------------------------------- store


class CompressorConfig(_Section):
    codec: Literal["zstd", "blosc-lz4", "blosc-zstd", "none"] = "zstd"
    level: int = Field(1, ge=0, le=22)


class SplitsConfig(_Section):
    train: float = Field(0.6, ge=0)
    val: float = Field(0.2, ge=0)
    test: float = Field(0.2, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitsConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {total:.6g}")
        return self


class ContaminationConfig(_Section):
    signal: str
    fraction: float = Field(gt=0, le=1, description="Injected signal events / train events.")


class StoreConfig(_Section):
    url: str = "megaset-demo/store.zarr"
    staging_url: str | None = Field(
        None, description="Where ingest writes per-channel staging arrays; default <url>.staging"
    )
    chunk_len: int = Field(8192, gt=0, description="Events per chunk in every group.")
    compressor: CompressorConfig = CompressorConfig()
    staging_compressor: CompressorConfig = CompressorConfig(codec="blosc-lz4", level=5)
    splits: SplitsConfig = SplitsConfig()
    seed: int = 42
    contamination: ContaminationConfig | None = None

    @property
    def staging(self) -> str:
        if self.staging_url:
            return self.staging_url
        base = self.url.rstrip("/")
        return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + ".staging.zarr"


# ---------------------------------------------------------------------------- cluster


class AdaptConfig(_Section):
    minimum: int = Field(1, ge=0)
    maximum: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"adapt.minimum ({self.minimum}) exceeds adapt.maximum ({self.maximum})")
        return self


class ClusterConfig(_Section):
    kind: Literal["local", "kubernetes", "htcondor", "address"] = "local"
    workers: int | None = Field(2, ge=1)
    adapt: AdaptConfig | None = None
    threads_per_worker: int = Field(1, ge=1)
    memory_per_worker: str = "4 GiB"
    gpus_per_worker: int = Field(0, ge=0)
    address: str | None = None
    dashboard: bool = False

    @field_validator("memory_per_worker")
    @classmethod
    def _bytes(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            parse_bytes(value)
        except ValueError as err:
            raise ValueError(f"cannot read {value!r} as a size (e.g. '4 GiB')") from err
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> ClusterConfig:
        if self.kind == "address" and not self.address:
            raise ValueError("kind: address needs address: tcp://host:port")
        return self


# ---------------------------------------------------------------------------- simulate


class SimulateConfig(_Section):
    output: str = "megaset-demo/ntuples"
    events: int = Field(200_000, gt=0, description="Background events in all, split by cross-section.")
    signal_events: int = Field(20_000, ge=0, description="Events per signal sample.")
    events_per_file: int = Field(100_000, gt=0)
    seed: int = 1
    channels: list[str] | None = Field(None, description="Subset of channels; null: all.")


# ---------------------------------------------------------------------------- root


class Config(_Section):
    inputs: InputsConfig = InputsConfig()
    schema_: SchemaConfig = Field(SchemaConfig(), alias="schema")
    selection: SelectionConfig = SelectionConfig()
    rmm: RMMConfig = RMMConfig()
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()
    simulate: SimulateConfig = SimulateConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def schema(self) -> SchemaConfig:  # noqa: D401 - a field named "schema" shadows BaseModel.schema
        return self.schema_

    def resolved(self) -> dict[str, Any]:
        """The whole configuration with every default filled in, as plain JSON types."""
        return self.model_dump(mode="json", by_alias=True)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced or updated from nested dicts."""
        data = self.resolved()
        for key, value in sections.items():
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", by_alias=True)
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = _merge(data[key], value)
            else:
                data[key] = value
        return _validate(data, "<replace>")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names at ``loc`` (the parent of a bad key), for the did-you-mean hint."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", ())
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            current = models[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<top level>"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(Config, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {key}: unknown key{hint} (valid here: {', '.join(valid)})")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def _validate(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"invalid configuration in {source}: expected a mapping of sections, got {type(data).__name__}"
        raise ConfigError(msg)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML configuration; ``None`` gives the built-in defaults.

    Raises
    ------
    ConfigError
        Naming the file and every bad key, with the closest valid spelling.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        msg = f"cannot read configuration file {str(path)!r}: {err.strerror or err}"
        raise ConfigError(msg) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        msg = f"configuration file {str(path)!r} is not valid YAML: {err}"
        raise ConfigError(msg) from None
    return _validate(data, repr(str(path)))
