"""The one configuration file that drives every stage, validated with pydantic.

The field defaults below are the only source of defaults: ``load_config(None)`` is the
built-in demo configuration (simulated ntuples under ``./megaset-demo/``). Unknown or
mistyped keys are errors that name the key, the file, and the closest valid spelling.
Types are strict (``workers: true`` is not 1, ``chunk_len: "5"`` is not 5), numbers finite
(``.inf`` and ``.nan`` are refused), a key given twice in one mapping of the file is an error
naming the key and both lines, and a URL whose scheme no filesystem knows is refused here,
before any cluster starts.

>>> cfg = load_config(None)
>>> cfg.rmm.size
23
>>> cfg.selection.mode
'2lep'
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from megaset.errors import ConfigError

__all__ = [
    "Config",
    "PoolConfig",
    "load_config",
    "demo_config",
    "DEMOS",
    "OBJECT_SOURCES",
    "ChannelInput",
    "InputsConfig",
    "RemoteConfig",
    "WeightsConfig",
    "CollectionSchema",
    "QualityField",
    "PASS_ROLES",
    "MetSchema",
    "SchemaConfig",
    "JetSchemaConfig",
    "JetSelection",
    "LeptonSelection",
    "ElectronSelection",
    "MuonSelection",
    "PhotonSelection",
    "SelectionConfig",
    "RMMObject",
    "RMMConfig",
    "charged_rmm_objects",
    "SEARCH_SECTIONS",
    "CompressorConfig",
    "SplitsConfig",
    "ContaminationConfig",
    "StoreConfig",
    "AdaptConfig",
    "KubernetesConfig",
    "HTCondorConfig",
    "TLSConfig",
    "ClusterConfig",
    "SimulateConfig",
    "JET_SAMPLES",
    "JetSelectionConfig",
    "JetImageConfig",
    "JetSimulateConfig",
    "JetsConfig",
    "AdversaryConfig",
    "ArchitectureConfig",
    "EarlyStoppingConfig",
    "LoaderConfig",
    "DDPConfig",
    "TrainingConfig",
    "CombineConfig",
    "ScoringConfig",
    "ReportConfig",
]


def _known_scheme(url: str) -> str:
    """Refuse a URL whose scheme no fsspec filesystem knows (``foo://``, ``s4://``) when the
    configuration loads, instead of after a cluster has started; keep the text as written."""
    import fsspec
    from fsspec.core import split_protocol

    known = fsspec.available_protocols()
    for part in url.split("::"):  # fsspec chains: simplecache::s3://bucket/key
        scheme = split_protocol(part)[0]
        if scheme is not None and scheme not in known:
            close = difflib.get_close_matches(scheme, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = (f"unknown URL scheme {scheme!r} in {url!r}; {hint}give a local path or a URL of a known "
                   "filesystem (s3://, root://, http(s)://, file://, ...)")
            raise ValueError(msg)
    return url


#: A path or URL: its scheme checked when the configuration loads.
Url = Annotated[str, AfterValidator(_known_scheme)]


class _Section(BaseModel):
    # strict: YAML's true is not the integer 1, nor "5" the integer 5; no infinity or NaN
    # in any number (none has a meaning here that null or a bound does not say better).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- inputs


class ChannelInput(_Section):
    """One physics channel (a background process, a signal sample or collision data)."""

    files: list[Url] = Field(min_length=1, description="Paths, globs or fsspec URLs of ROOT files.")
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
            msg = "a channel cannot be both signal: true and data: true"
            raise ValueError(msg)
        return self


class RemoteConfig(_Section):
    """How inputs on remote storage (root://, http(s)://, s3://) are read; see docs/pipeline.md.
    Credentials never go here: the clients take them from their usual environment."""

    timeout: float = Field(
        60.0, gt=0, description="Seconds a server may take to answer a request before it counts as failed.",
    )
    retries: int = Field(
        3, ge=0, description="Retries of a file check or chunk that failed for a transient reason (no "
        "answer, refused or lost connection, a busy server); a wrong path or credentials are not retried.",
    )
    backoff: float = Field(1.0, ge=0, description="Seconds before the first retry, doubled before each next one.")
    max_range_gap: str = Field(
        "32 KiB", description="uproot merges byte ranges of one read this close into one range "
        "(one XRootD vector read or HTTP multi-range request carries the merged ranges).",
    )
    max_request_bytes: str = Field("10 MiB", description="Bytes of one merged request at most.")
    max_request_ranges: int = Field(1024, gt=0, description="Byte ranges of one merged request at most.")

    @field_validator("max_range_gap", "max_request_bytes")
    @classmethod
    def _bytes(cls, value: str) -> str:
        return _size(value)


class WeightsConfig(_Section):
    """Event weights that cannot be right (pipeline/weights.py): counted per file at ingest."""

    max_abs: float | None = Field(
        1e9, gt=0, description="A stored weight (after the cross-section scale) larger than this in size, or "
        "not finite, is absurd; null: no bound.",
    )
    outlier_orders: float | None = Field(
        6.0, gt=0, description="A weight this many orders of magnitude above the median |w| of its channel "
        "(to a quarter decade) is absurd; null: no such check.",
    )
    on_absurd: Literal["warn", "fail"] = Field(
        "warn", description="warn: count them in the ingest summary and say so; fail: stop the ingest.",
    )


class InputsConfig(_Section):
    kind: Literal["events", "jets"] = Field(
        "events", description="events: ntuples of events, selected and turned into RMMs; jets: one "
        "boosted jet per entry, its constituents turned into images, constituent lists and "
        "N-subjettiness (the jets section).",
    )
    tree: str = "mini"
    lumi_ifb: float = Field(139.0, gt=0, description="Integrated luminosity in fb^-1.")
    chunksize: int = Field(200_000, gt=0, description="Input entries per processing chunk.")
    on_bad_file: Literal["fail", "skip"] = "fail"
    channels: dict[str, ChannelInput] = Field(
        default_factory=dict,
        description="Channel name -> sample. Empty: the simulated demo sample is used.",
    )
    remote: RemoteConfig = RemoteConfig()
    weights: WeightsConfig = WeightsConfig()


# ---------------------------------------------------------------------------- schema


#: Per-object roles that say whether an object passes a quality requirement (``selection.*.require_*``).
PASS_ROLES = ("tight", "iso")


class QualityField(_Section):
    """A continuous quality variable and its cut, e.g. ``{branch: Muon_pfRelIso04_all, max: 0.15}``:
    an object passes when its value lies within the bounds given (both ends included), compared
    with the values as stored in the file."""

    branch: str
    max: float | None = Field(None, description="Passes at or below this (isolation: a cone sum, 0 = best).")
    min: float | None = Field(None, description="Passes at or above this (an ID level, a score).")
    relative: bool = Field(
        False, description="iso only: the branch is an absolute cone sum in the file's units; it is divided by "
        "the object's pT (both in GeV after schema.units) and the cut applies to that ratio.")

    @model_validator(mode="after")
    def _bounded(self) -> QualityField:
        if self.max is None and self.min is None:
            msg = (f"give the cut of {self.branch!r} as max (passes at or below) or min (passes at or above); "
                   "a pass flag (0 fails, 1 passes) is given as the branch name alone")
            raise ValueError(msg)
        return self


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
    fields: dict[str, str | QualityField] = Field(
        default_factory=dict,
        description="Extra per-object branches by role, e.g. btag, flavor, charge, tight, iso, d0sig. tight "
        "and iso given as a branch name are pass flags (0 or 1); a continuous variable takes its cut: "
        "{branch: Muon_pfRelIso04_all, max: 0.15}. d0sig is the signed significance, cut by selection.",
    )

    @field_validator("fields")
    @classmethod
    def _cuts_on_pass_roles(cls, fields: dict[str, str | QualityField]) -> dict[str, str | QualityField]:
        for role, spec in fields.items():
            if isinstance(spec, QualityField) and spec.relative and role != "iso":
                msg = (f"fields.{role}: relative: true divides an isolation cone sum by pT; it applies to iso only, "
                       f"remove it from {role}")
                raise ValueError(msg)
            if isinstance(spec, QualityField) and role not in PASS_ROLES:
                where = ("selection.electrons / muons.d0sig_max" if role == "d0sig"
                         else "the selection key that reads it")
                msg = (f"fields.{role}: only {' and '.join(PASS_ROLES)} take {{branch, max | min}}; map {role} to "
                       f"the branch name ({spec.branch}) and set its cut in {where}")
                raise ValueError(msg)
        return fields

    def field_branches(self) -> dict[str, str]:
        """Role -> branch of every extra field."""
        return {role: spec if isinstance(spec, str) else spec.branch for role, spec in self.fields.items()}

    @model_validator(mode="after")
    def _one_form(self) -> CollectionSchema:
        polar = (self.pt, self.eta, self.phi)
        cart = (self.px, self.py, self.pz, self.energy)
        if all(polar) and (self.mass or self.energy) and not any((self.px, self.py, self.pz)):
            return self
        if all(cart) and not any((*polar, self.mass)):
            return self
        msg = "give either pt, eta, phi and one of mass / energy, or px, py, pz and energy"
        raise ValueError(msg)

    @property
    def cartesian(self) -> bool:
        return self.px is not None

    def branches(self) -> list[str]:
        kin = (self.px, self.py, self.pz, self.energy) if self.cartesian else (
            self.pt, self.eta, self.phi, self.mass or self.energy)
        return [*kin, *self.field_branches().values()]


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
            msg = "give MET either as et and phi, or as px and py"
            raise ValueError(msg)
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

    collections: dict[str, CollectionSchema] = Field(
        default_factory=_default_collections,
        description="Collection name -> its branches; a mapping given here replaces the default one whole.",
    )
    met: MetSchema | None = Field(MetSchema(), description="null for inputs without MET (jet inputs).")
    weight: str | None = Field("wgt", description="Per-event weight branch; null for weight 1.")
    units: Literal["GeV", "MeV"] = Field(
        "GeV", description="Units of the momenta, energies, masses and MET in the files: MeV values are divided "
        "by 1000 once, where they are read; eta, phi and the other fields are kept as stored.",
    )
    check_units: bool = Field(
        True, description="Stop when the first entries of an input file do not look like `units` says "
        "(docs/pipeline.md).",
    )
    run: str | None = Field("runNumber", description="Run-number branch; null for files without one (stored as 0).")
    event: str | None = Field(
        "eventNumber", description="Event-number branch; null for files without one (stored as 0: the file "
        "index and entry in event_id still tell events apart).",
    )

    def branches(self) -> list[str]:
        out = [b for c in self.collections.values() for b in c.branches()]
        out += self.met.branches() if self.met is not None else []
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
            msg = f"light_max ({self.light_max}) must not exceed b_min ({self.b_min})"
            raise ValueError(msg)
        return self


class LeptonSelection(_Section):
    """Signal leptons of one type. The keys without a default here take those of
    :class:`ElectronSelection` or :class:`MuonSelection`, the only place they are set."""

    collection: str = "lepton"
    flavor: int | None = Field(description="Value of the 'flavor' field; null: all objects.")
    pt_min: float = 10.0
    abs_eta_max: float
    require_tight: bool = Field(description="Keep only objects that pass the 'tight' field (see docs/pipeline.md).")
    require_iso: bool = Field(True, description="Keep only objects that pass the 'iso' field (see docs/pipeline.md).")
    d0sig_max: float | None = Field(description="|'d0sig' field| at most this; null: no d0 cut.")


class ElectronSelection(LeptonSelection):
    flavor: int | None = 1
    abs_eta_max: float = 2.47
    require_tight: bool = True
    d0sig_max: float | None = 5.0


class MuonSelection(LeptonSelection):
    flavor: int | None = 2
    abs_eta_max: float = 2.7
    require_tight: bool = False
    d0sig_max: float | None = 3.0


class PhotonSelection(_Section):
    collection: str = "photon"
    pt_min: float = 20.0
    abs_eta_max: float = 2.37


#: Per selection mode, the lepton keys it sets unless the configuration gives them.
_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Soft leptons of compressed spectra: down to the simulated reconstruction's 7 GeV.
    "soft2lep": {"electrons": {"pt_min": 7.0}, "muons": {"pt_min": 7.0}},
}


class SelectionConfig(_Section):
    """The event selection; ``mode`` picks the preset (docs/pipeline.md): ``2lep`` the thesis'
    (m_ll > 70 GeV, two leptons above 25 GeV), ``3lep``, ``soft2lep`` (leptons from 7 GeV, no
    m_ll floor, one lepton above 10 GeV) and ``ss2lep`` (the two leading leptons of one sign)."""

    mode: Literal["2lep", "3lep", "soft2lep", "ss2lep"] = "2lep"
    jets: JetSelection = JetSelection()
    electrons: ElectronSelection = ElectronSelection()
    muons: MuonSelection = MuonSelection()
    photons: PhotonSelection | None = None
    mll_min: float = Field(70.0, description="2lep: m_ll of the two leading leptons above this.")
    trigger_pt_2lep: float = Field(25.0, description="2lep: at least two leptons above this pT.")
    trigger_pt_3lep: float = Field(20.0, description="3lep: at least two leptons above this pT.")
    trigger_pt_soft2lep: float = Field(10.0, description="soft2lep: at least one lepton above this pT.")
    on_nonfinite: Literal["drop", "fail"] = Field(
        "drop", description="Events with NaN/inf in any read branch: counted, then dropped or fatal."
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("mode") not in _MODE_DEFAULTS:
            return data
        out = dict(data)
        for key, defaults in _MODE_DEFAULTS[data["mode"]].items():
            given = out.get(key)
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            out[key] = {**defaults, **(given or {})}
        return out


# ---------------------------------------------------------------------------- rmm

OBJECT_SOURCES = ("light_jets", "b_jets", "jets", "electrons", "muons", "photons")


class RMMObject(_Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    source: Literal["light_jets", "b_jets", "jets", "electrons", "muons", "photons"]
    count: int = Field(gt=0, le=50)
    charge: Literal["any", "positive", "negative"] = Field(
        "any", description="Only the source's objects of this charge sign (its 'charge' field): two types "
        "'positive' and 'negative' of one lepton source let the RMM see charge (docs/pipeline.md).",
    )


def charged_rmm_objects(count: int = 3) -> list[RMMObject]:
    """The charge-aware object types: jets as by default, electrons and muons each split into
    a positive and a negative type of ``count`` slots (``ep``, ``em``, ``mp``, ``mm``).

    >>> [(o.name, o.count) for o in charged_rmm_objects()]
    [('ljet', 6), ('bjet', 6), ('ep', 3), ('em', 3), ('mp', 3), ('mm', 3)]
    """
    leptons = [RMMObject.model_validate({"name": f"{short}{suffix}", "source": source, "count": count,
                                         "charge": sign})
               for short, source in (("e", "electrons"), ("m", "muons"))
               for suffix, sign in (("p", "positive"), ("m", "negative"))]
    return [*_default_rmm_objects()[:2], *leptons]


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
    objects: list[RMMObject] = Field(
        default_factory=_default_rmm_objects, min_length=1,
        description="Object types, in row order; the word 'charged' stands for the charge-aware list "
        "(jets as by default, e+, e-, mu+, mu- with 3 slots each: docs/pipeline.md).",
    )

    @field_validator("objects", mode="before")
    @classmethod
    def _preset(cls, objects: Any) -> Any:
        return charged_rmm_objects() if objects == "charged" else objects

    @field_validator("objects")
    @classmethod
    def _unique(cls, objects: list[RMMObject]) -> list[RMMObject]:
        names = [o.name for o in objects]
        if len(set(names)) != len(names):
            msg = f"object names must be unique, got {names}"
            raise ValueError(msg)
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
            msg = f"train + val + test must be 1, got {total:.6g}"
            raise ValueError(msg)
        return self


class ContaminationConfig(_Section):
    signal: str
    fraction: float = Field(
        gt=0, le=1, description="Injected signal events / background train events (see docs/store.md)."
    )


class StoreConfig(_Section):
    url: Url = "megaset-demo/store.zarr"
    staging_url: Url | None = Field(
        None, description="Where ingest writes per-channel staging arrays; default <url>.staging"
    )
    chunk_len: int = Field(
        16384, gt=0, description="Events per chunk in every group (docs/store.md says why 16384)."
    )
    compressor: CompressorConfig = CompressorConfig()
    form: Literal["dense", "csr"] = Field(
        "dense", description="How the store keeps its feature column (rmm): dense rows, or csr, the non-zero cells "
        "of each chunk (a third fewer bytes, read several times faster; docs/store.md). Every reader sees dense "
        "rows either way.",
    )
    staging_compressor: CompressorConfig = CompressorConfig()
    splits: SplitsConfig = SplitsConfig()
    seed: int = 42
    contamination: ContaminationConfig | None = None
    background: list[str] | None = Field(
        None, min_length=1, description="Channels mixed into train / val / test instead of those staged as "
        "background (every other channel becomes a signal): one staging area serves a study that trains on "
        "each sample in turn.",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Seconds an object store (store.url, store.staging_url on s3://...) has to answer "
        "the first request of a command before it stops with one line naming the endpoint and the cause.",
    )
    lock_lease_s: float = Field(
        60.0, gt=0, description="Lease of the lock object that a command writing to an object store holds (renewed "
        "every third of it): a lock without renewal for this long is taken over (docs/store.md, locks).",
    )

    @property
    def staging(self) -> str:
        if self.staging_url:
            return self.staging_url
        base = self.url.rstrip("/")
        return base.removesuffix(".zarr") + ".staging.zarr"


# ---------------------------------------------------------------------------- cluster


class AdaptConfig(_Section):
    minimum: int = Field(1, ge=0)
    maximum: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptConfig:
        if self.minimum > self.maximum:
            msg = f"adapt.minimum ({self.minimum}) exceeds adapt.maximum ({self.maximum})"
            raise ValueError(msg)
        return self


def _size(value: str | None) -> str | None:
    """Check that a human size such as '4 GiB' parses; keep the text as written."""
    from dask.utils import parse_bytes

    if value is None:
        return value
    try:
        parse_bytes(value)
    except ValueError as err:
        msg = f"cannot read {value!r} as a size (e.g. '4 GiB')"
        raise ValueError(msg) from err
    return value


class KubernetesConfig(_Section):
    """Pods of ``kind: kubernetes``: the ``DaskCluster`` resource the driver creates."""

    name: str = Field(
        "megaset",
        pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$",
        description="DaskCluster name; the scheduler service is <name>-scheduler.",
    )
    namespace: str | None = Field(None, description="Namespace; null: the current one.")
    image: str = "ghcr.io/megaset/megaset:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    env: dict[str, str] = Field(default_factory=dict, description="Environment of scheduler and workers.")
    secret: str | None = Field(
        None,
        description="Secret whose keys become environment variables of the workers "
        "(object-store credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).",
    )
    service_account: str | None = Field(None, description="ServiceAccount of scheduler and workers.")
    run_as_user: int = Field(1000, ge=1, description="Non-root uid (and gid) of the containers.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Worker node labels.")
    tolerations: list[dict[str, str | int]] = Field(
        default_factory=list, description="Worker tolerations, e.g. of GPU node taints."
    )
    scheduler_cores: float = Field(1.0, gt=0)
    scheduler_memory: str = "2 GiB"
    startup_timeout: int = Field(
        300, gt=0, description="Seconds to wait for the scheduler pod before giving up."
    )

    @field_validator("scheduler_memory")
    @classmethod
    def _bytes(cls, value: str) -> str:
        return _size(value)


class HTCondorConfig(_Section):
    """Worker jobs of ``kind: htcondor``; keys left null fall back to dask's jobqueue.yaml."""

    disk: str | None = Field(None, description="Scratch disk per worker job, e.g. '10 GiB'.")
    python: str | None = Field(
        None,
        description="Python on the execute nodes; null: jobqueue.yaml's, else the driver's "
        "own interpreter (right when it lives on a shared filesystem).",
    )
    job_script_prologue: list[str] | None = Field(
        None, description="Shell lines run before the worker starts (environment setup)."
    )
    job_extra_directives: dict[str, str | int | float] = Field(
        default_factory=dict, description="Extra submit-file lines, merged over jobqueue.yaml's."
    )
    log_directory: str | None = None
    local_directory: str | None = Field(None, description="Worker spill directory on the node.")
    interface: str | None = Field(None, description="Network interface, e.g. eth0 or ib0.")

    @field_validator("disk")
    @classmethod
    def _bytes(cls, value: str | None) -> str | None:
        return _size(value)

    @field_validator("job_extra_directives", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        # YAML reads YES / NO / true as booleans, which HTCondor would not understand back.
        items = value.items() if isinstance(value, dict) else ()
        flags = [str(key) for key, v in items if isinstance(v, bool)]
        if flags:
            msg = f"{', '.join(flags)}: write HTCondor values as quoted strings, e.g. 'YES' or 'True'"
            raise ValueError(msg)
        return value


class TLSConfig(_Section):
    """Dask's TLS between driver, scheduler and workers (``cluster.tls``); see docs/deploy.md."""

    enabled: bool | None = Field(
        None, description="null: on for kubernetes and htcondor clusters and for a tls:// address, off for a local "
        "cluster (it listens on loopback alone) and a tcp:// address.",
    )
    ca_file: str | None = Field(
        None, min_length=1, description="PEM file of the cluster's certificate authority; with cert_file and "
        "key_file. null: kubernetes reads the Secret mounted at /etc/dask-tls, htcondor and local clusters "
        "make a certificate of their own.",
    )
    cert_file: str | None = Field(None, min_length=1, description="PEM certificate signed by that authority.")
    key_file: str | None = Field(None, min_length=1, description="PEM private key of cert_file.")
    secret: str = Field(
        "megaset-dask-tls", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$",
        description="kind: kubernetes: the Secret (keys ca.crt, tls.crt, tls.key) mounted at /etc/dask-tls in "
        "scheduler and workers; `python -m megaset.deploy.tls NAME NAMESPACE` prints a new one.",
    )

    @model_validator(mode="after")
    def _all_three(self) -> TLSConfig:
        given = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        missing = [key for key, value in given.items() if value is None]
        if 0 < len(missing) < 3:
            msg = f"give ca_file, cert_file and key_file together: {', '.join(missing)} missing"
            raise ValueError(msg)
        if self.enabled is False and not missing:
            msg = "enabled: false with certificate files: drop the files, or set enabled: true"
            raise ValueError(msg)
        return self


class PoolConfig(_Section):
    """One pool of identical workers (``cluster.pools``): a pool without GPUs ingests and mixes, a pool with
    GPUs trains and scores; see docs/deploy.md."""

    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="Threads (and cores asked for) per worker.")
    memory: str = "4 GiB"
    gpus: int = Field(0, ge=0, description="GPUs per worker, declared as the Dask resource GPU.")

    @field_validator("memory")
    @classmethod
    def _bytes(cls, value: str) -> str:
        return _size(value)


#: The keys that size a single pool; ``pools`` sizes each pool instead.
_SINGLE_POOL_KEYS = ("workers", "adapt", "threads_per_worker", "memory_per_worker", "gpus_per_worker")


class ClusterConfig(_Section):
    """Where the Dask workers run and how many; see docs/deploy.md."""

    kind: Literal["local", "kubernetes", "htcondor", "address"] = "local"
    workers: int | None = Field(2, ge=1)
    adapt: AdaptConfig | None = None
    threads_per_worker: int = Field(1, ge=1)
    memory_per_worker: str = "4 GiB"
    gpus_per_worker: int = Field(0, ge=0)
    pools: dict[str, PoolConfig] | None = Field(
        None, description="Pools of workers of their own size, e.g. {cpu: {workers: 14}, gpu: {workers: 1, gpus: 1}}, "
        "instead of workers / threads_per_worker / memory_per_worker / gpus_per_worker: ingest and mix run on the "
        "pools without GPUs, training and scoring on the GPU pools (on any worker where there are none).",
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Further Dask resources every worker declares (the pools add CPU or GPU).")
    address: str | None = None
    dashboard: bool = False
    warm_workers: bool = Field(
        True, description="Each worker imports the stages' modules and loads the numba kernels as it starts, "
        "before its first task (megaset.warmup); `megaset warmup` fills numba's cache ahead of time.",
    )
    host: str = Field(
        "127.0.0.1", min_length=1, description="kind: local: the interface scheduler, workers and dashboard listen "
        "on; the default, loopback, keeps them from the network (0.0.0.0: every interface, for workers "
        "started elsewhere by hand).",
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to reach an existing scheduler (kind: address)."
    )
    kubernetes: KubernetesConfig = KubernetesConfig()
    htcondor: HTCondorConfig = HTCondorConfig()
    tls: TLSConfig = TLSConfig()

    @field_validator("memory_per_worker")
    @classmethod
    def _bytes(cls, value: str) -> str:
        return _size(value)

    @model_validator(mode="after")
    def _kind_needs(self) -> ClusterConfig:
        if self.kind == "address" and not self.address:
            msg = "kind: address needs address: tcp://host:port (or tls://host:port)"
            raise ValueError(msg)
        if self.kind == "address":
            self._address_tls()
        if self.kind != "address" and self.workers is None and self.adapt is None and not self.pools:
            msg = f"kind: {self.kind} needs workers: N, adapt: {{minimum, maximum}} or pools"
            raise ValueError(msg)
        if self.pools is not None:
            # Compared with the defaults, not with the keys given: a dumped configuration holds them all.
            fields = type(self).model_fields
            both = [key for key in _SINGLE_POOL_KEYS if getattr(self, key) not in (fields[key].default, None)]
            if both:
                msg = (f"pools sizes each pool itself: drop {', '.join(both)} (or drop pools for one pool of "
                       "workers); adaptive scaling is for a single pool")
                raise ValueError(msg)
            if not self.pools:
                msg = "pools is empty: name at least one pool, e.g. pools: {cpu: {workers: 4}}"
                raise ValueError(msg)
        return self

    def _address_tls(self) -> None:
        """An existing scheduler's scheme decides: tls:// speaks TLS (certificates from tls or from the dask
        configuration, checked on connecting), tcp:// takes no certificates."""
        tls, scheme = self.tls, str(self.address).partition("://")[0]
        if scheme == "tls" and tls.enabled is False:
            msg = f"address {self.address} is a TLS scheduler: drop tls.enabled: false"
            raise ValueError(msg)
        if scheme != "tls" and (tls.enabled or tls.ca_file is not None):
            msg = (f"tls is set but address {self.address} is not tls://: write the scheduler's address as "
                   "tls://host:port, or drop the tls settings")
            raise ValueError(msg)


# ---------------------------------------------------------------------------- simulate


class SimulateConfig(_Section):
    output: str = "megaset-demo/ntuples"
    events: int = Field(1_000_000, gt=0, description="Background events in all, split by cross-section.")
    signal_events: int = Field(20_000, ge=0, description="Events per signal sample.")
    events_per_file: int = Field(100_000, gt=0)
    seed: int = 1
    channels: list[str] | None = Field(None, description="Subset of channels; null: all.")


# ---------------------------------------------------------------------------- jets

#: The simulated jet samples (pipeline/jets_simulate.py says what each approximates).
JET_SAMPLES = ("qcd", "gluon", "top", "w", "gluino", "hbb", "dark", "zprime40")


class JetSchemaConfig(SchemaConfig):
    """The schema of jet inputs (``jets.schema``): constituents, no MET, unit weights, no run number."""

    collections: dict[str, CollectionSchema] = Field(default_factory=lambda: {
        "constituent": CollectionSchema(pt="constPt", eta="constEta", phi="constPhi", energy="constE")})
    met: MetSchema | None = None
    weight: str | None = None
    run: str | None = None
    event: str | None = "eventNumber"
    units: Literal["GeV", "MeV"] = Field("GeV", description="The simulated jets are in GeV.")


class JetSelectionConfig(_Section):
    """Jet-level selection on the jet made of all its constituents (Farina et al.: 800-900 GeV, |eta| < 1)."""

    pt_min: float = Field(800.0, ge=0)
    pt_max: float = Field(900.0, gt=0)
    abs_eta_max: float = Field(1.0, gt=0)
    min_constituents: int = Field(2, ge=1, description="Fewer constituents: the jet is dropped.")
    on_nonfinite: Literal["drop", "fail"] = "drop"

    @model_validator(mode="after")
    def _ordered(self) -> JetSelectionConfig:
        if self.pt_min >= self.pt_max:
            msg = f"pt_min ({self.pt_min}) must be below pt_max ({self.pt_max})"
            raise ValueError(msg)
        return self


class JetImageConfig(_Section):
    """Farina et al.'s (Macaluso and Shih's) jet images: centre, rotate, flip, normalise, pixelise."""

    pixels: int = Field(37, ge=3, description="Pixels per side of the image.")
    padded: int = Field(40, ge=3, description="Side after zero padding (the CNN's input).")
    extent: float = Field(3.2, gt=0, description="Width in eta and phi covered by the pixels.")
    center: Literal["centroid", "leading_subjet"] = "centroid"

    @model_validator(mode="after")
    def _fits(self) -> JetImageConfig:
        if self.padded < self.pixels:
            msg = f"padded ({self.padded}) must be at least pixels ({self.pixels})"
            raise ValueError(msg)
        return self


class JetSimulateConfig(_Section):
    """``megaset simulate`` for ``inputs.kind: jets``: the built-in boosted-jet samples."""

    output: str = "megaset-demo/jets"
    jets: int = Field(20_000, gt=0, description="Jets written per background sample (after the pT window).")
    signal_jets: int = Field(5_000, gt=0, description="Jets written per other sample.")
    jets_per_file: int = Field(10_000, gt=0)
    seed: int = 1
    background: str = Field("qcd", description="The sample that is the background; the others are signals.")
    samples: list[str] | None = Field(None, description=f"Subset of {', '.join(JET_SAMPLES)}; null: all.")

    @model_validator(mode="after")
    def _known(self) -> JetSimulateConfig:
        unknown = [s for s in [self.background, *(self.samples or [])] if s not in JET_SAMPLES]
        if unknown:
            msg = f"unknown jet samples {unknown}; choose from {', '.join(JET_SAMPLES)}"
            raise ValueError(msg)
        if self.samples is not None and self.background not in self.samples:
            msg = f"samples must include the background {self.background!r}"
            raise ValueError(msg)
        return self


class JetsConfig(_Section):
    """Jet-level inputs (``inputs.kind: jets``): constituents -> images, constituent lists, N-subjettiness."""

    schema_: JetSchemaConfig = Field(default_factory=JetSchemaConfig, alias="schema",
                                  description="Branches of the constituents (flat or jagged, polar or Cartesian).")
    collection: str = Field("constituent", description="The collection of schema.collections holding the constituents.")
    selection: JetSelectionConfig = JetSelectionConfig()
    image: JetImageConfig = JetImageConfig()
    constituents: int = Field(30, ge=2, le=200, description="Leading constituents kept (zero padded) for graphs.")
    subjettiness: int = Field(5, ge=3, le=8, description="tau_1 .. tau_N with beta = 1 on exclusive-kT axes.")
    feature: Literal["image", "constituents", "tau"] = Field(
        "image", description="The store's feature column: its names and train statistics are recorded.")
    models: list[str] = Field(
        default_factory=lambda: ["pca", "jet-dense", "jet-cnn", "graph-ae", "oneoff", "tau32", "tau21"],
        description="Models `megaset run` trains and scores in turn.",
    )
    pairwise_models: list[str] = Field(
        default_factory=lambda: ["jet-dense", "graph-ae", "oneoff", "tau32"],
        description="Models of the train-on-each-sample pairwise matrix in the report (empty: none).",
    )
    decorrelate: list[str] = Field(
        default_factory=lambda: ["jet-dense"],
        description="Models `megaset run` trains a second time with training.adversary (its defaults when "
        "unset), scored as <model>-adv: the mass sculpting with and without decorrelation.",
    )
    pairwise_epochs: int = Field(3, ge=1, description="Epochs of each pairwise training.")
    contamination: list[float] = Field(
        default_factory=list, description="Fractions of the contamination study run by `megaset run` (empty: none).")
    contamination_signal: str = "top"
    contamination_model: str = "jet-dense"
    simulate: JetSimulateConfig = JetSimulateConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True)

    @property
    def schema(self) -> SchemaConfig:  # type: ignore[override]  # the field "schema" shadows BaseModel.schema
        return self.schema_

    @model_validator(mode="after")
    def _collection_mapped(self) -> JetsConfig:
        if self.collection not in self.schema_.collections:
            msg = (f"collection {self.collection!r} is not in schema.collections "
                   f"({', '.join(self.schema_.collections)})")
            raise ValueError(msg)
        return self


# ---------------------------------------------------------------------------- training

class ArchitectureConfig(_Section):
    """Shape of the model; null keys take the thesis' (sec. 3.6) or Farina et al.'s choice."""

    latent: int | None = Field(
        None, gt=0, description="Latent size; null: 150 (thesis) for the RMM networks, 6 (Farina et "
        "al.) for the jet networks, the scree-plot suggestion (pca_variance) for pca, 32 for deep-svdd's "
        "embedding (Ruff et al.).",
    )
    hidden: list[int] | None = Field(
        None, description="Encoder hidden widths, input side first; the decoder mirrors them. deep-svdd "
        "(no decoder): null is [128].",
    )
    activations: list[Literal["tanh", "relu", "leaky_relu", "sigmoid", "linear"]] | None = Field(
        None, description="One per dense layer from the first encoder layer to the output; deep-svdd: null is "
        "leaky_relu on the hidden layers and a linear embedding (unbounded, as Ruff et al. require).",
    )
    ensemble_members: int = Field(
        5, ge=2, description="ae-ensemble: shallow autoencoders trained together, each from its own start.",
    )
    flow_layers: int = Field(6, ge=1, description="flow: affine coupling layers (RealNVP).")
    flow_hidden: int = Field(256, gt=0, description="flow: width of the two hidden layers of each coupling's network.")
    flow_noise: float = Field(
        0.05, gt=0, description="flow: width of the Gaussian smearing of the scaled inputs in training (the "
        "RMM's empty cells would otherwise draw an unbounded density); validation and scoring read them as is. "
        "On a demo-like store 0.05 separated the signals better than 0.002, 0.01 or 0.1.",
    )
    leaky_slope: float = Field(0.3, ge=0, description="Negative slope of leaky_relu (thesis: 0.3).")
    kl_weight: float = Field(1.0, ge=0, description="VAE: weight of the KL term per feature.")
    cnn_channels: list[int] = Field(
        default_factory=lambda: [32, 32, 32], min_length=1,
        description="CNN: channels of each conv layer, a 2x2 max-pool between two.",
    )
    cnn_dense: int = Field(256, gt=0, description="CNN: dense layer between convolutions and latent.")
    jet_cnn_channels: list[int] = Field(
        default_factory=lambda: [128, 128, 128], min_length=1,
        description="jet-cnn: channels of each conv layer (Farina et al.: 128, 128, 128).",
    )
    jet_cnn_dense: int = Field(32, gt=0, description="jet-cnn: dense layer before the latent (Farina et al.: 32).")
    graph_hidden: int = Field(32, gt=0, description="graph-ae, oneoff: width of the graph convolutions.")
    graph_normalise: bool = Field(
        True, description="graph-ae, oneoff: divide constituent positions by the jet width (grapa).")
    pca_variance: float = Field(
        0.99, gt=0, le=1, description="pca: fraction of variance the suggested latent size explains."
    )
    pca_max_events: int = Field(
        1_000_000, gt=0, description="pca: fit on the first train chunks up to this many events "
        "(every chunk is a faithful sample); they are held in cluster memory during the fit.",
    )


class AdversaryConfig(_Section):
    """Adversarial decorrelation: a small network regresses the jet mass from the model's latent
    (or its score) through a gradient-reversal layer, so the model learns to hide the mass."""

    weight: float = Field(1.0, gt=0, description="Strength alpha of the reversed gradient (L = L_ae - alpha L_adv).")
    on: Literal["latent", "score"] = "latent"
    column: str = Field("jet_mass", description="The store column regressed.")
    scale: float = Field(500.0, gt=0, description="The column is divided by this before the regression.")
    hidden: int = Field(32, gt=0)


class EarlyStoppingConfig(_Section):
    patience: int = Field(5, ge=1, description="Epochs without improvement of the val loss.")
    min_delta: float = Field(0.0, ge=0, description="Smallest decrease that counts as improvement.")


class LoaderConfig(_Section):
    read_ahead: int = Field(2, ge=1, description="Chunks read ahead of the one in use.")
    threads: int = Field(2, ge=1, description="Reader threads (threads, never fork: zarr's async I/O).")
    shuffle_chunks: int = Field(4, ge=1, description="Chunks shuffled together in one buffer.")
    cache_mib: float = Field(
        256.0, ge=0, description="Memory per rank, for each of the train and val loaders, for chunks "
        "kept after their first read, as their scaled non-zero cells (about 90 bytes an RMM event: "
        "256 MiB hold some 3 M events): later epochs skip reading and decoding them. 0 keeps none.",
    )


class DDPConfig(_Section):
    world_size: int | None = Field(
        None, ge=1, description="Ranks; null: one per worker (per GPU worker) with a cluster, "
        "else 1 (or torchrun's WORLD_SIZE).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on GPU, else gloo.")
    timeout_s: float = Field(
        300.0, gt=0, description="Process-group timeout: a rank waiting longer on a dead peer fails."
    )


class TrainingConfig(_Section):
    model: Literal["ae-shallow", "ae-deep", "vae-shallow", "vae-deep", "cnn", "pca", "deep-svdd", "ae-ensemble",
                   "flow", "jet-dense", "jet-cnn", "graph-ae", "oneoff", "tau32", "tau21"] = "ae-shallow"
    output: Url = Field("megaset-demo/models", description="Checkpoints go to <output>/<model>/.")
    epochs: int = Field(40, ge=1, description="At most this many epochs; early stopping ends most runs before.")
    batch_size: int = Field(
        1024, gt=0, description="Events per step and rank (thesis: 8192, for millions of events; the demo's "
        "21 k training events need smaller steps to converge).",
    )
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    seed: int = 0
    scaling: Literal["minmax", "standard", "none"] = Field(
        "minmax", description="none: features as stored (jet images, normalised to unit pT sum).")
    adversary: AdversaryConfig | None = Field(
        None, description="Mass decorrelation: a regressor of the jet mass behind a gradient reversal.")
    weighted: bool = Field(True, description="Weight each event's loss by its event weight.")
    negative_weights: Literal["keep", "abs", "zero"] = Field(
        "keep", description="Events of negative weight in the loss: keep (they lower it by being reconstructed "
        "badly), abs (|w|) or zero (left out). Early stopping follows the validation loss weighted by |w| "
        "whatever the policy.",
    )
    architecture: ArchitectureConfig = ArchitectureConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    loader: LoaderConfig = LoaderConfig()
    ddp: DDPConfig = DDPConfig()


# ---------------------------------------------------------------------------- scoring and report


class CombineConfig(_Section):
    """One combination of scored models, written as ``score/<name>`` (``megaset score --combine NAME``)."""

    models: list[str] = Field(
        min_length=2, description="The models combined; each must be scored in the store (score/<model>). "
        "<model>.<block> names one block of a model's error (met, mass, rapidity or energy: score/<model>.<block>, "
        "written with scoring.blocks by the models that reconstruct the RMM).",
    )
    method: Literal["rank-mean", "min-p"] = Field(
        "rank-mean", description="How the models' background p-values p = 1 - F (F: each score's background "
        "CDF on the val group) become one. rank-mean: -log10 of their mean, for events every model finds "
        "unusual. min-p: -log10 of the smallest, Šidák-corrected for the number of models (1 - (1 - min p)^M), "
        "a background p-value that keeps one model's far tail.",
    )
    points: int = Field(
        2001, ge=3, description="Points of each model's quantile table of val background scores (kept in the "
        "column's attributes); a val group with fewer events keeps every one of them.",
    )


class ScoringConfig(_Section):
    """``megaset score``: per-event reconstruction errors written next to the features."""

    blocks: bool = Field(
        True, description="Also write the error of each RMM block (met, mass, rapidity, energy) "
        "as score/<model>.<block>; needs a square number of features. Skipped for the models that "
        "reconstruct no rows (deep-svdd, ae-ensemble, flow).",
    )
    batch_size: int = Field(65_536, gt=0, description="Events per forward pass inside a chunk, on a CPU.")
    gpu_batch_size: int = Field(
        1_048_576, gt=0, description="Events per forward pass on a GPU: whole chunks, the device is fed "
        "in as few copies and launches as memory allows.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: on a cluster, the workers declaring the Dask resource GPU when there are "
        "any (cluster.gpus_per_worker), else the CPU workers, which never touch CUDA; in one process, CUDA "
        "when torch sees a device. cuda: refuse to run where there is none.",
    )
    retries: int = Field(3, ge=0, description="Dask retries of a chunk whose worker died.")
    combine: dict[str, CombineConfig] = Field(
        default_factory=lambda: {"ae-svdd": CombineConfig(models=["ae-shallow", "deep-svdd"])},
        description="Combinations of scored models by name: each is written as score/<name> by `megaset score "
        "--combine NAME`, and by `megaset run`, which trains and scores every model they name (besides "
        "training.model) and reports the combinations first, as the headline scores. The default, ae-svdd, "
        "separated a signal zoo best: median AUC 0.996 and E100 0.94 (ae-shallow alone 0.980 / 0.38, "
        "deep-svdd 0.988 / 0.87). {}: train and report training.model alone. Not run for jet inputs.",
    )


class ReportConfig(_Section):
    """``megaset report``: plots, tables and significances from the scored store."""

    output: Url = Field("megaset-demo/report", description="Folder of the PNGs, report.md and report.json.")
    models: list[str] | None = Field(None, description="Scored models to report; null: every one scored.")
    bins: int = Field(50, ge=5, description="Bins of the error, MET and mass histograms.")
    axis: Literal["log10", "linear"] = Field(
        "log10", description="Axis of the error plots and of the signal-region cuts m + i |m| step.",
    )
    regions: int = Field(3, ge=1, description="Signal regions i = 1 .. regions.")
    region_step: float = Field(0.2, gt=0, description="Cut i sits at m + i * region_step * |m| (thesis: 1/5).")
    met_max: float = Field(1000.0, gt=0, description="Upper edge (GeV) of the MET plots and threshold scan.")
    mass_max: float = Field(1000.0, gt=0, description="Upper edge (GeV) of the m_ll / m_lll plots.")
    pt_factors: list[float] = Field(
        default_factory=lambda: [1.5, 3.0, 5.0, 7.0, 10.0], min_length=1,
        description="pT-altering test: factors of the leading electron and muon pT.",
    )
    pt_group: Literal["val", "test"] = Field("val", description="pT-altering test: the events altered.")
    pt_events: int = Field(100_000, gt=0, description="pT-altering test: at most this many events.")
    min_background_events: int = Field(
        10, ge=1, description="Threshold scans refuse cuts whose background rests on fewer effective MC events "
        "(N_eff = (sum w)^2 / sum w^2; the events themselves for unit weights, fewer where weights of both signs "
        "cancel) than this, and the working points (E10, E100, E1000) that keep fewer background MC events are "
        "marked as not enough background MC.",
    )
    background_systematic: float = Field(
        0.0, ge=0, description="Flat relative uncertainty of the background, added in quadrature to its MC "
        "statistical one in the significances (0.1: 10 %).",
    )
    auc_replicas: int = Field(200, ge=2, description="Bootstrap replicas of the AUC uncertainty.")
    experiment: str = Field("ATLAS-style", description="Experiment label of the figures (bold).")
    label: str = Field("Simulation", description="Text after the experiment label.")
    sqrt_s_tev: float = Field(13.0, gt=0, description="Centre-of-mass energy in the figure label, TeV.")
    colors: dict[str, str] = Field(
        default_factory=dict, description="Colour of a process by name (any matplotlib colour); the others "
        "take colour i of a fixed 20-colour palette for channel id i.",
    )


# ---------------------------------------------------------------------------- root


#: The sections a search of ``searches`` may set; the inputs, schema, cluster and simulation
#: are shared, and the store, checkpoints and report get the search's own paths. A search's
#: store may need another chunk length: a same-sign selection keeps a few per cent of the events.
SEARCH_SECTIONS = ("selection", "rmm", "store", "training", "scoring", "report")


def _suffixed(url: str, name: str) -> str:
    """``url`` with ``-<name>`` after the stem of its last component.

    >>> _suffixed("megaset-demo/store.zarr", "soft"), _suffixed("s3://b/models/", "ss")
    ('megaset-demo/store-soft.zarr', 's3://b/models-ss')
    """
    head, sep, last = url.rstrip("/").rpartition("/")
    stem, dot, ext = last.partition(".")
    return f"{head}{sep}{stem}-{name}{dot}{ext}"


class Config(_Section):
    inputs: InputsConfig = InputsConfig()
    schema_: SchemaConfig = Field(SchemaConfig(), alias="schema")
    selection: SelectionConfig = SelectionConfig()
    rmm: RMMConfig = RMMConfig()
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()
    simulate: SimulateConfig = SimulateConfig()
    jets: JetsConfig = JetsConfig()
    training: TrainingConfig = TrainingConfig()
    scoring: ScoringConfig = ScoringConfig()
    report: ReportConfig = ReportConfig()
    searches: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")], dict[str, Any]] = Field(
        default_factory=dict, description="Further searches on the same inputs, run by `megaset run` after this "
        "one: name -> the sections it changes (selection, rmm, store, training, scoring, report), e.g. "
        "{soft: {selection: {mode: soft2lep}}}; each gets its own store, checkpoints and report "
        "(<path>-<name>).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _searches_valid(self) -> Config:
        for name, sections in self.searches.items():
            other = sorted(set(sections) - set(SEARCH_SECTIONS))
            if other:
                msg = (f"searches.{name} sets {', '.join(other)}; a search may set only {', '.join(SEARCH_SECTIONS)} "
                       "(the inputs, schema, cluster and simulation are shared; its paths are derived)")
                raise ValueError(msg)
            self.search(name)  # its sections validated now, not when it runs
        return self

    def search(self, name: str) -> Config:
        """The configuration of the search ``name`` of ``searches``: this one with the search's
        sections merged in, its store, staging area, checkpoints and report at ``<path>-<name>``
        (unless it sets them), and no searches of its own.

        >>> cfg = Config.model_validate({"searches": {"ss": {"selection": {"mode": "ss2lep"}}}})
        >>> ss = cfg.search("ss")
        >>> ss.selection.mode, ss.store.url, ss.report.output
        ('ss2lep', 'megaset-demo/store-ss.zarr', 'megaset-demo/report-ss')
        """
        if name not in self.searches:
            close = difflib.get_close_matches(name, list(self.searches), n=1)
            msg = (f"no search {name!r} in searches (searches: {', '.join(self.searches) or 'none'})"
                   + (f"; did you mean {close[0]!r}?" if close else ""))
            raise ConfigError(msg)
        # What was set, not every default: a selection mode's own defaults must still apply.
        data = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        data["searches"] = {}
        paths = {("store", "url"): self.store.url, ("store", "staging_url"): self.store.staging_url,
                 ("training", "output"): self.training.output, ("report", "output"): self.report.output}
        for (section, key), url in paths.items():
            if url:
                data.setdefault(section, {})[key] = _suffixed(url, name)
        for key, value in self.searches[name].items():
            data[key] = _merge(data.get(key) or {}, value) if isinstance(value, dict) else value
        return _validate(data, f"searches.{name}")

    @property
    def schema(self) -> SchemaConfig:  # type: ignore[override]  # the field "schema" shadows BaseModel.schema
        return self.schema_

    @property
    def input_schema(self) -> SchemaConfig:
        """The schema the ingest reads with: ``schema``, or ``jets.schema`` for jet inputs."""
        return self.jets.schema if self.inputs.kind == "jets" else self.schema_

    def resolved(self) -> dict[str, Any]:
        """The whole configuration with every default filled in, as plain JSON types."""
        return self.model_dump(mode="json", by_alias=True)

    def persisted(self) -> dict[str, Any]:
        """:meth:`resolved` as it is written beside results (staging and store attributes,
        checkpoints, the report): values that may carry credentials redacted
        (:mod:`megaset.redaction`)."""
        from megaset.redaction import redact

        return redact(self.resolved())

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced or updated from nested dicts; an empty dict
        replaces what it names (``scoring={"combine": {}}`` leaves no combination), as
        ``key: {}`` in YAML does."""
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
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
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


#: Built-in demo configurations: ``events`` (the defaults) and ``jets`` (``demo_jets.yaml``).
DEMOS = ("events", "jets")


def demo_config(name: str) -> Config:
    """The built-in demo ``name``: the default (event-level) configuration, or the jet demo.

    >>> demo_config("jets").inputs.kind
    'jets'
    """
    if name not in DEMOS:
        msg = f"unknown demo {name!r}; choose one of {', '.join(DEMOS)}"
        raise ConfigError(msg)
    if name == "events":
        return Config()
    from importlib.resources import files

    return _validate(_read_yaml(files("megaset").joinpath(f"demo_{name}.yaml").read_text()),
                     f"the built-in {name} demo")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently, so a setting written twice would lose one of its values unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                msg = f"key {key!r} is given twice in one mapping, on lines {seen[key]} and {line}; keep one"
                raise yaml.constructor.ConstructorError(None, None, msg, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


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
        data = _read_yaml(text)
    except yaml.YAMLError as err:
        msg = f"configuration file {str(path)!r} is not valid YAML: {err}"
        raise ConfigError(msg) from None
    return _validate(data, repr(str(path)))
