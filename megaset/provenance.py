"""Stage fingerprints: what made an artefact, hashed, and said in words when it changed.

Every artefact of the chain (simulated ntuples, staging area, store, checkpoint, score columns,
report.json) carries a *record* of the stage that wrote it::

    {"stage": "ingest", "fingerprint": "<sha256>", "basis": {
        "config":       the configuration sections the stage reads (:data:`SECTIONS`), resolved,
        "inputs":       what it read besides its upstream artefact: {"files": {path: [size, mtime]}}
                        for ingest, {"checkpoint": sha256 of its bytes} for score,
        "upstream":     {"<upstream stage>": fingerprint of the artefact it was made from},
        "code_version": megaset's version}}

The fingerprint is the SHA-256 of the basis as canonical JSON (sorted keys, no spaces), so it
changes exactly when one of those changes: a stage whose recorded fingerprint equals the one the
current configuration gives is current, and a changed stage changes every fingerprint downstream
of it. :func:`changes` says which key differs, for the one line `megaset run` and `megaset status`
print.

>>> old = make_record("train", {"training": {"epochs": 2}})
>>> new = make_record("train", {"training": {"epochs": 5}})
>>> changes(old, new)
'training.epochs changed (2 -> 5)'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from megaset import __version__

if TYPE_CHECKING:
    from megaset.config import Config

__all__ = ["SECTIONS", "IGNORED", "stage_config", "make_record", "record", "fingerprint_of", "changes"]

#: The configuration each stage reads, as dotted paths into the resolved configuration. The
#: ``-jets`` entries are the stages of jet inputs (``inputs.kind: jets``).
SECTIONS: dict[str, tuple[str, ...]] = {
    "simulate": ("simulate", "inputs.tree", "inputs.lumi_ifb"),
    "simulate-jets": ("jets.simulate",),
    "ingest": ("inputs", "schema", "selection", "rmm"),
    "ingest-jets": ("inputs", "jets.schema", "jets.collection", "jets.selection", "jets.image",
                    "jets.constituents", "jets.subjettiness", "jets.feature"),
    "mix": ("store",),
    "train": ("training",),
    "score": ("scoring.blocks",),
    "report": ("report", "inputs.lumi_ifb"),
    # The studies (megaset.studies.common.study_record): the stages they run on derived
    # configurations read these, and the report section gives their figures' settings.
    "pt-altering": ("report", "inputs.lumi_ifb"),
    "channel-removal": ("store", "training", "scoring.blocks", "report", "inputs.lumi_ifb"),
    "contamination": ("store", "training", "scoring.blocks", "report", "inputs.lumi_ifb"),
    "pairwise": ("store", "training", "scoring.blocks"),
}

#: Keys of those sections that say where or how fast a stage works, not what it makes: a change
#: of them keeps every artefact current (a new location simply holds no artefact yet).
IGNORED = frozenset({
    "inputs.remote", "store.url", "store.staging_url", "store.staging_compressor", "store.connect_timeout_s",
    "store.lock_lease_s", "training.output",
    "training.loader.read_ahead", "training.loader.threads", "training.loader.cache_mib", "training.ddp.timeout_s",
    "training.ddp.backend",
    "report.output",
})


def _pick(data: Mapping[str, Any], path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


def _without_ignored(value: Any, prefix: str) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {k: _without_ignored(v, f"{prefix}.{k}") for k, v in value.items() if f"{prefix}.{k}" not in IGNORED}


def stage_config(cfg: Config, stage: str) -> dict[str, Any]:
    """The sections of ``cfg`` that ``stage`` reads, nested as in the configuration file.

    >>> from megaset.config import Config
    >>> stage_config(Config(), "score")
    {'scoring': {'blocks': True}}
    """
    key = f"{stage}-jets" if cfg.inputs.kind == "jets" and f"{stage}-jets" in SECTIONS else stage
    resolved = cfg.resolved()
    out: dict[str, Any] = {}
    for path in SECTIONS[key]:
        *parents, leaf = path.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _without_ignored(_pick(resolved, path), path)
    return out


def fingerprint_of(basis: Mapping[str, Any]) -> str:
    """SHA-256 of ``basis`` as canonical JSON."""
    text = json.dumps(basis, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def make_record(stage: str, config: Mapping[str, Any], *, upstream: Mapping[str, str | None] | None = None,
                inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of ``stage`` made from ``config`` (its sections), ``upstream`` fingerprints and
    other ``inputs``."""
    from megaset.redaction import redact

    inputs = dict(inputs or {})
    if "files" in inputs:
        inputs["files"] = {redact(path): identity for path, identity in inputs["files"].items()}
    # Credentials in URLs or settings are no part of what an artefact is made from, and the
    # record is written beside it: both are redacted, as every persisted copy of the config is.
    basis = {"config": redact(dict(config)), "inputs": inputs, "upstream": dict(upstream or {}),
             "code_version": __version__}
    # Through JSON once, so that the record compares equal to itself read back from any store.
    basis = json.loads(json.dumps(basis))
    return {"stage": stage, "fingerprint": fingerprint_of(basis), "basis": basis}


def record(stage: str, cfg: Config, *, upstream: Mapping[str, str | None] | None = None,
           inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`make_record` with the sections of ``cfg`` that ``stage`` reads."""
    return make_record(stage, stage_config(cfg, stage), upstream=upstream, inputs=inputs)


def _flat(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _short(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # a fingerprint
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _file_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    modified = sorted(p for p in set(old) & set(new) if list(old[p]) != list(new[p]))
    for what, paths in (("added", added), ("removed", removed), ("modified", modified)):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            out.append(f"input file {what}: {paths[0]}{more}")
    return out


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why the record ``old`` (as stored with an artefact) is not ``new``: the changed keys with
    their values, in one line; the first three are named."""
    if not old or "basis" not in old:
        return "no fingerprint recorded (written by an older megaset)"
    before, after = old["basis"], new["basis"]
    found: list[str] = []
    if before.get("code_version") != after["code_version"]:
        found.append(f"megaset version changed ({before.get('code_version')} -> {after['code_version']})")
    was, now = dict(_flat(before.get("config", {}))), dict(_flat(after["config"]))
    found += [f"{key} changed ({_short(was.get(key))} -> {_short(now.get(key))})"
              for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    found += _file_changes(before.get("inputs", {}).get("files", {}), after["inputs"].get("files", {}))
    if before.get("inputs", {}).get("checkpoint") != after["inputs"].get("checkpoint"):
        found.append("checkpoint rewritten")
    was, now = before.get("upstream", {}), after["upstream"]
    found += [f"upstream {key} changed ({_short(was.get(key))} -> {_short(now.get(key))})"
              for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    if not found:
        return "fingerprint differs"
    more = len(found) - 3
    return "; ".join(found[:3]) + (f" (and {more} more)" if more > 0 else "")
