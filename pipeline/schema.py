"""From input branches to physics objects: the schema section of the configuration at work.

``check_branches`` validates a tree's branch names and types against the schema before any
event is read; ``read_events`` turns the branches of one chunk (a coffea NanoEvents built with
``BaseSchema``, or the dict of uproot's ``tree.arrays(how=dict)``) into flat numpy buffers:
one :class:`~megaset.pipeline.objects.Jagged` per collection with ``pt``, ``eta``, ``phi``,
``mass`` and the collection's extra roles, plus MET, weight and event ids.
``nonfinite_events`` finds the events carrying NaN or inf, so that the selection can count
them and drop or reject them.

Polar kinematic columns keep the precision of the file (no copy when the file is in GeV); columns
computed from Cartesian branches are computed in float64 and keep the wider of the input types.
Momenta, energies, masses and MET leave in GeV: ``schema.units: MeV`` divides them by 1000 here,
once (:mod:`megaset.pipeline.units` checks on the first chunk of every file that the data look
like the units declared).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from megaset.config import PASS_ROLES, CollectionSchema, QualityField, SchemaConfig
from megaset.errors import BranchError, ConfigError
from megaset.pipeline.objects import EventArrays, Jagged

__all__ = ["required_branches", "check_branches", "read_events", "nonfinite_events"]

# C++ spellings of one number, as uproot reports them in ``typenames()`` (std:: stripped).
_NUMBER = re.compile(
    r"(bool|char|short|int|long|long long|float|double"
    r"|unsigned (char|short|int|long|long long)"
    r"|u?int(8|16|32|64)_t"
    r"|(U?(Char|Short|Int|Long|Long64)|Bool|Float|Float16|Double|Double32)_t)"
)
_VECTOR = re.compile(r"(vector|ROOT::VecOps::RVec|ROOT::RVec)<\s*(.+?)\s*>")


def _collection_roles(name: str, coll: CollectionSchema) -> list[tuple[str, str, str]]:
    """(config key, column, branch) for every branch of one collection."""
    if coll.cartesian:
        kin = {"px": coll.px, "py": coll.py, "pz": coll.pz, "energy": coll.energy}
    else:
        kin = {"pt": coll.pt, "eta": coll.eta, "phi": coll.phi}
        kin["mass" if coll.mass else "energy"] = coll.mass or coll.energy
    prefix = f"schema.collections.{name}"
    return [(f"{prefix}.{col}", col, branch) for col, branch in kin.items()] + [
        (f"{prefix}.fields.{role}", role, branch) for role, branch in coll.field_branches().items()
    ]


def _event_roles(schema: SchemaConfig) -> list[tuple[str, str, str]]:
    """(config key, role, branch) for every one-number-per-event branch."""
    met = schema.met
    if met is None:
        met_roles = {}
    else:
        met_roles = {"px": met.px, "py": met.py} if met.px else {"et": met.et, "phi": met.phi}
    ids = {role: getattr(schema, role) for role in ("weight", "run", "event")}
    return [(f"schema.met.{role}", role, branch) for role, branch in met_roles.items()] + [
        (f"schema.{role}", role, branch) for role, branch in ids.items() if branch
    ]


def _roles(schema: SchemaConfig) -> Iterator[tuple[str, str, bool]]:
    """(config key, branch, jagged?) for every branch the schema reads."""
    for name, coll in schema.collections.items():
        for key, _, branch in _collection_roles(name, coll):
            yield key, branch, True
    for key, _, branch in _event_roles(schema):
        yield key, branch, False


def required_branches(schema: SchemaConfig) -> list[str]:
    """Every branch the schema reads, each once, in schema order.

    >>> required_branches(SchemaConfig())[:5]
    ['jetPt', 'jetEta', 'jetPhi', 'jetM', 'jetdl1r']
    """
    return list(dict.fromkeys(branch for _, branch, _ in _roles(schema)))


def _shape_of(typename: str) -> str:
    """``"scalar"``, ``"jagged"`` or a description of what else the type is."""
    name = typename.strip().replace("std::", "")
    name = re.sub(r"\s+", " ", name)
    if _NUMBER.fullmatch(name):
        return "scalar"
    vector = _VECTOR.fullmatch(name)
    inner = vector.group(2) if vector else (name[:-2].strip() if name.endswith("[]") else None)
    if inner is not None:
        return "jagged" if _NUMBER.fullmatch(inner) else f"a list of non-numbers ({inner})"
    if re.fullmatch(r".+\[\d+\]", name):
        return "a fixed-size array per event"
    return "not a number"


def _not_found(branch: str, key: str, available: list[str], filename: str) -> BranchError:
    close = difflib.get_close_matches(branch, available, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"{len(available)} branches, none close"
    msg = f"branch {branch!r} ({key}) not found ({hint}); map {key} to an existing branch"
    return BranchError(filename, msg, branch)


def check_branches(available: Mapping[str, str], schema: SchemaConfig, filename: str) -> None:
    """Check that every branch the schema reads exists with a usable type.

    Parameters
    ----------
    available
        Branch name -> C++ type name, as uproot's ``tree.typenames()`` reports them.
    schema
        The schema section of the configuration.
    filename
        Named in the errors.

    Raises
    ------
    BranchError
        For the first missing branch (with the closest available names), or a branch that is
        jagged where one value per event is expected, or the reverse, or not numeric.

    >>> check_branches({"met_Et": "float"}, SchemaConfig(), "a.root")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    megaset.errors.BranchError: a.root: branch 'jetPt' (schema.collections.jet.pt) not found (closest: met_Et);
    map schema.collections.jet.pt to an existing branch
    """
    names = list(available)
    for key, branch, jagged in _roles(schema):
        if branch not in available:
            raise _not_found(branch, key, names, filename)
        found = _shape_of(available[branch])
        expected = "jagged" if jagged else "scalar"
        if found != expected:
            want = (
                "one number per object (e.g. std::vector<float> or float[])"
                if jagged
                else "one number per event (e.g. float)"
            )
            shown = {"jagged": "one number per object", "scalar": "one number per event"}.get(found, found)
            msg = (
                f"branch {branch!r} ({key}) has type {available[branch]!r} ({shown}); expected {want}. "
                f"Map {key} to a branch of that kind"
            )
            raise BranchError(filename, msg, branch)


def _get(source: Any, branch: str, key: str, filename: str) -> Any:
    try:
        return source[branch]
    except (LookupError, AttributeError) as err:  # dict: KeyError; NanoEvents: FieldNotFoundError
        fields = getattr(source, "fields", None) or list(source.keys())
        raise _not_found(branch, key, list(fields), filename) from err


def _numbers(array: Any, branch: str, key: str, filename: str, *, per_object: bool) -> Any:
    """The branch as an awkward array of one number per object (jagged) or per event."""
    import awkward as ak

    array = ak.Array(array)
    if array.ndim != (2 if per_object else 1):
        unit, kind = ("object", "jagged") if per_object else ("event", "scalar")
        msg = (
            f"branch {branch!r} ({key}) holds {str(array.type.content)!r} per event, expected one "
            f"number per {unit}; map {key} to a {kind} branch"
        )
        raise BranchError(filename, msg, branch)
    return array


def _jagged(array: Any, branch: str, key: str, filename: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-event counts and flat values of a branch holding one number per object."""
    import awkward as ak

    array = _numbers(array, branch, key, filename, per_object=True)
    layout = ak.to_layout(ak.materialize(array))
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        # What uproot gives for a jagged branch, taken straight from its buffers: ak.num and
        # ak.flatten cost more in dispatch than in work on a chunk.
        offsets = np.asarray(layout.offsets.data)
        return np.diff(offsets), np.asarray(layout.content.data)[offsets[0]:offsets[-1]]
    return ak.to_numpy(ak.num(array, axis=1)), ak.to_numpy(ak.flatten(array, axis=1))


def _scalar(array: Any, branch: str, key: str, filename: str) -> np.ndarray:
    import awkward as ak

    return ak.to_numpy(_numbers(array, branch, key, filename, per_object=False))


def _collection(source: Any, name: str, schema: SchemaConfig, filename: str) -> tuple[Jagged, dict[str, str]]:
    """One collection as a Jagged with polar kinematics, and the branch label of each float column."""
    coll = schema.collections[name]
    raw: dict[str, np.ndarray] = {}
    first_branch, first_counts = "", np.zeros(0, dtype=np.int64)
    for key, col, branch in _collection_roles(name, coll):
        counts, values = _jagged(_get(source, branch, key, filename), branch, key, filename)
        if not raw:
            first_branch, first_counts = branch, counts
        elif not np.array_equal(counts, first_counts):
            if len(counts) == len(first_counts):
                where = f"first at event {int(np.flatnonzero(counts != first_counts)[0])} of the chunk"
            else:
                where = f"{len(counts)} events against {len(first_counts)}"
            msg = (
                f"branches {first_branch!r} and {branch!r} of collection {name!r} hold different numbers "
                f"of objects ({where}); map schema.collections.{name} to branches of one collection"
            )
            raise BranchError(filename, msg, branch)
        raw[col] = values

    labels = coll.field_branches()
    if coll.cartesian:
        columns = _from_cartesian(raw["px"], raw["py"], raw["pz"], raw["energy"])
        xy, xyz = f"{coll.px}, {coll.py}", f"{coll.px}, {coll.py}, {coll.pz}"
        derived = {"pt": xy, "phi": xy, "eta": xyz, "mass": f"{xyz}, {coll.energy}"}
        labels |= {col: f"{name}.{col} from {src}" for col, src in derived.items()}
    else:
        columns = {col: raw[col] for col in ("pt", "eta", "phi")}
        labels |= {"pt": coll.pt, "eta": coll.eta, "phi": coll.phi}
        if coll.mass:
            columns["mass"] = raw["mass"]
            labels["mass"] = coll.mass
        else:
            columns["mass"] = _mass_from_energy(raw["pt"], raw["eta"], raw["energy"])
            labels["mass"] = f"{name}.mass from {coll.pt}, {coll.eta}, {coll.energy}"
    columns["pt"], columns["mass"] = _in_gev(columns["pt"], schema.units), _in_gev(columns["mass"], schema.units)
    columns |= {role: raw[role] for role in coll.fields}
    for role in PASS_ROLES:
        if role in coll.fields:
            spec = coll.fields[role]
            values = raw[role]
            if isinstance(spec, QualityField) and spec.relative:
                values = _relative(_in_gev(values, schema.units), columns["pt"])
            columns[role] = _pass_flags(values, spec, f"schema.collections.{name}.fields.{role}", filename)
    jagged = Jagged.from_counts(first_counts, columns)
    float_labels = {
        f"{name}.{col}": label for col, label in labels.items() if np.issubdtype(columns[col].dtype, np.floating)
    }
    return jagged, float_labels


def _pass_flags(values: np.ndarray, spec: str | QualityField, key: str, filename: str) -> np.ndarray:
    """A pass role (``tight``, ``iso``) as flags, non-zero passing: a continuous variable cut at its
    bounds, or a flag branch checked to hold 0 and 1 only. NaN and inf stay as they are, so that
    the selection counts and drops their events like any other non-finite value.

    >>> _pass_flags(np.array([0.0, 0.15, 0.2, np.nan]), QualityField(branch="iso", max=0.15), "k", "a.root").tolist()
    [1.0, 1.0, 0.0, nan]
    """
    floating = np.issubdtype(values.dtype, np.floating)
    if isinstance(spec, QualityField):
        passed = np.ones(len(values), dtype=bool)
        if spec.max is not None:
            passed &= values <= spec.max
        if spec.min is not None:
            passed &= values >= spec.min
        return np.where(np.isfinite(values), passed, values).astype(values.dtype) if floating else passed
    if values.dtype != np.bool_:
        finite = values[np.isfinite(values)] if floating else values
        other = finite[(finite != 0) & (finite != 1)]
        if len(other):
            # Read as a flag, a cone sum or a score would pass every object but those at exactly 0:
            # the best-isolated ones.
            shown = ", ".join(f"{v:g}" for v in np.unique(other)[:3])
            role = key.rsplit(".", 1)[-1]
            msg = (
                f"{filename}: branch {spec!r} ({key}) is read as a pass flag (0 fails, 1 passes) but holds "
                f"other values ({shown}: {len(other)} of {len(finite)} objects); if it is a continuous variable, "
                f"give its cut: {role}: {{branch: {spec}, max: <cut>}} (passes at or below) or min: <cut> "
                "(passes at or above)"
            )
            raise ConfigError(msg)
    return values


def _relative(cone_sum: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """An absolute isolation cone sum divided by the object's pT, both in GeV. An object of pT 0
    has no relative isolation: it gets the largest value, so that it fails an upper cut (and its
    event is not counted as non-finite).

    >>> _relative(np.float32([3.0, 0.0, 1.0]), np.float32([20.0, 5.0, 0.0])).tolist()
    [0.15000000596046448, 0.0, 3.4028234663852886e+38]
    """
    dtype = _out_type(cone_sum, pt)
    cone_sum, pt = np.asarray(cone_sum, dtype=dtype), np.asarray(pt, dtype=dtype)
    out = np.where(np.isfinite(cone_sum), np.finfo(dtype).max, cone_sum)
    np.divide(cone_sum, pt, out=out, where=pt > 0)
    return out


def _in_gev(values: np.ndarray, units: str) -> np.ndarray:
    """Momenta, energies or masses in GeV: MeV divided by 1000, in the column's own precision.

    >>> _in_gev(np.float32([91500.0]), "MeV").tolist(), _in_gev(np.float32([91500.0]), "MeV").dtype.name
    ([91.5], 'float32')
    """
    if units == "GeV":
        return values
    return values / (values.dtype.type(1000) if np.issubdtype(values.dtype, np.floating) else 1000)


def _out_type(*arrays: np.ndarray) -> np.dtype:
    return np.result_type(np.float32, *arrays)


def _from_cartesian(px, py, pz, energy) -> dict[str, np.ndarray]:
    dtype = _out_type(px, py, pz, energy)
    px, py, pz, energy = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, energy))
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        # pt = 0 has no pseudorapidity: eta becomes inf or NaN and the event is counted as
        # non-finite by the selection rather than given an arbitrary value.
        eta = np.arcsinh(pz / pt)
    mass = np.sqrt(np.maximum(energy**2 - (pt**2 + pz**2), 0.0))
    return {
        "pt": pt.astype(dtype, copy=False),
        "eta": eta.astype(dtype, copy=False),
        "phi": np.arctan2(py, px).astype(dtype, copy=False),
        "mass": mass.astype(dtype, copy=False),
    }


def _mass_from_energy(pt, eta, energy) -> np.ndarray:
    dtype = _out_type(pt, eta, energy)
    pt64, eta64, e64 = (np.asarray(a, dtype=np.float64) for a in (pt, eta, energy))
    p2 = (pt64 * np.cosh(eta64)) ** 2
    return np.sqrt(np.maximum(e64**2 - p2, 0.0)).astype(dtype, copy=False)


def read_events(source: Any, schema: SchemaConfig, filename: str, entry_start: int = 0) -> EventArrays:
    """Map the branches of one chunk onto collections, MET, weight and event ids.

    Parameters
    ----------
    source
        Indexable by branch name, returning awkward arrays: a coffea NanoEvents built with
        ``BaseSchema`` (``events["jetPt"]``) or ``tree.arrays(branches, how=dict)``.
    schema
        The schema section of the configuration.
    filename
        Named in the errors.
    entry_start
        Entry number of the chunk's first event in its file.

    Returns
    -------
    EventArrays
        ``weight`` is 1 when ``schema.weight`` is null, ``run`` / ``event`` 0 when not mapped.

    Raises
    ------
    BranchError
        A branch is missing, has the wrong shape, or the branches of one collection disagree
        on the number of objects in an event.
    ConfigError
        A ``tight`` or ``iso`` branch mapped as a pass flag holds values other than 0 and 1.

    Examples
    --------
    >>> import awkward as ak
    >>> schema = SchemaConfig.model_validate({"collections": {"jet": {
    ...     "px": "jpx", "py": "jpy", "pz": "jpz", "energy": "je"}},
    ...     "met": {"px": "mpx", "py": "mpy"}, "weight": None, "run": None, "event": None})
    >>> ev = read_events({"jpx": ak.Array([[3.0], []]), "jpy": ak.Array([[4.0], []]),
    ...     "jpz": ak.Array([[0.0], []]), "je": ak.Array([[13.0], []]),
    ...     "mpx": ak.Array([0.0, 6.0]), "mpy": ak.Array([1.0, 8.0])}, schema, "a.root")
    >>> ev.collections["jet"]["pt"].tolist(), ev.collections["jet"]["mass"].tolist()
    ([5.0], [12.0])
    >>> ev.met_et.tolist(), ev.weight.tolist()
    ([1.0, 10.0], [1.0, 1.0])
    """
    branches: dict[str, str] = {}
    collections: dict[str, Jagged] = {}
    for name in schema.collections:
        collections[name], labels = _collection(source, name, schema, filename)
        branches |= labels

    scalars = {
        role: _scalar(_get(source, branch, key, filename), branch, key, filename)
        for key, role, branch in _event_roles(schema)
    }
    met = schema.met
    if met is None:
        # Inputs without MET (one jet per entry): the entry count comes from any branch read.
        n = next(iter(collections.values())).n_events if collections else len(next(iter(scalars.values())))
        met_et, met_phi = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    elif met.px:
        dtype = _out_type(scalars["px"], scalars["py"])
        px, py = (np.asarray(scalars[c], dtype=np.float64) for c in ("px", "py"))
        met_et, met_phi = np.hypot(px, py).astype(dtype), np.arctan2(py, px).astype(dtype)
        src = f"from {met.px}, {met.py}"
        branches |= {"met_et": f"met_et {src}", "met_phi": f"met_phi {src}"}
    else:
        met_et, met_phi = scalars["et"], scalars["phi"]
        branches |= {"met_et": met.et, "met_phi": met.phi}

    met_et = _in_gev(met_et, schema.units)
    n = len(met_et)
    for name, jag in collections.items():
        if jag.n_events != n:
            msg = f"collection {name!r} has {jag.n_events} events, MET has {n}; all branches must come from one tree"
            raise BranchError(filename, msg, schema.collections[name].branches()[0])

    if schema.weight:
        weight = np.asarray(scalars["weight"], dtype=np.float64)
        branches["weight"] = schema.weight
    else:
        weight = np.ones(n, dtype=np.float64)

    def ids(role: str) -> np.ndarray:
        return np.asarray(scalars[role], dtype=np.int64) if role in scalars else np.zeros(n, dtype=np.int64)

    return EventArrays(
        collections=collections,
        met_et=met_et,
        met_phi=met_phi,
        weight=weight,
        run=ids("run"),
        event=ids("event"),
        entry=np.arange(entry_start, entry_start + n, dtype=np.int64),
        branches=branches,
    )


def nonfinite_events(ev: EventArrays) -> tuple[np.ndarray, dict[str, int]]:
    """Events with NaN or inf in any float column, and how many such values each branch holds.

    Returns
    -------
    mask : numpy.ndarray
        One bool per event, true where any float column of the event is NaN or inf.
    counts : dict
        Branch (or derived column, see ``EventArrays.branches``) -> number of NaN/inf values;
        only branches with at least one.

    Examples
    --------
    >>> j = Jagged.from_counts(np.array([1, 2]), {"pt": np.array([30.0, np.nan, np.inf])})
    >>> ev = EventArrays({"jet": j}, np.array([10.0, 5.0]), np.zeros(2), np.array([np.nan, 1.0]),
    ...     np.zeros(2, int), np.zeros(2, int), np.arange(2), {"jet.pt": "jetPt", "weight": "wgt"})
    >>> mask, counts = nonfinite_events(ev)
    >>> mask.tolist(), counts
    ([True, True], {'jetPt': 2, 'wgt': 1})
    """
    mask = np.zeros(ev.n_events, dtype=bool)
    counts: dict[str, int] = {}

    def record(key: str, values: np.ndarray) -> np.ndarray | None:
        if not np.issubdtype(values.dtype, np.floating):
            return None
        bad = ~np.isfinite(values)
        n_bad = int(np.count_nonzero(bad))
        if n_bad == 0:
            return None
        label = ev.branches.get(key, key)
        counts[label] = counts.get(label, 0) + n_bad
        return np.flatnonzero(bad)

    for name, jag in ev.collections.items():
        for col, values in jag.columns.items():
            where = record(f"{name}.{col}", values)
            if where is not None:
                mask[np.searchsorted(jag.offsets, where, side="right") - 1] = True
    for key in ("met_et", "met_phi", "weight"):
        where = record(key, getattr(ev, key))
        if where is not None:
            mask[where] = True
    return mask, counts
