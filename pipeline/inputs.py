"""Input files: resolving the configured channels to files, and checking each file once.

The check opens every file (in parallel on the cluster), finds the tree, and records size,
checksum, ROOT file UUID and entry count; for a channel normalised to its cross-section it also
verifies every branch the schema needs and sums the weight branch, which needs the metadata of
every branch. The ingest chunks files from these records; the processor checks the branches of
the other files on the tree it reads for each chunk. A bad file is an error naming the file and what is
wrong with it, or, with ``on_bad_file: skip``, an entry in the list of skipped files.

Files may be local or remote (``root://``, ``http(s)://``, ``s3://``; see
:mod:`megaset.pipeline.remote`): the checksum is then the one the server keeps where it keeps
one, and a file that cannot be reached is retried or reported in one line
(:mod:`megaset.pipeline.retry`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from megaset.config import ChannelInput, Config, RemoteConfig
from megaset.errors import ConfigError, InputFileError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["FileInfo", "resolve_channels", "expand_files", "file_identities", "inspect_file", "inspect_files"]

_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class FileInfo:
    """What the check learned about one input file; ``error`` is set for a bad file.

    ``checksum`` is ``adler32:<hex>`` (read, or as an XRootD or HTTP server keeps it) or
    ``etag:<value>`` (an S3 or HTTP entity tag). ``whole_file``: the file's HTTP server ignores
    byte ranges, so each process reading it fetches it whole once.
    """

    path: str
    channel: str
    tree: str
    index: int
    size: int = 0
    checksum: str = ""
    uuid: str = ""
    entries: int = 0
    sum_weights: float = 0.0
    whole_file: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_channels(cfg: Config) -> dict[str, ChannelInput]:
    """The configured channels, or the simulated demo sample when none are configured."""
    if cfg.inputs.channels:
        return dict(cfg.inputs.channels)
    if cfg.inputs.kind == "jets":
        from megaset.pipeline.jets_simulate import jet_inputs

        return jet_inputs(cfg.jets.simulate)
    from megaset.pipeline.simulate import demo_inputs

    return demo_inputs(cfg.simulate)


def expand_files(channels: dict[str, ChannelInput], remote: RemoteConfig | None = None) -> dict[str, list[str]]:
    """Channel -> sorted, de-duplicated file URLs matched by its paths and globs.

    Globs are expanded where the protocol can list a folder (local disks, root://, s3://); a
    remote server that cannot be reached while listing is retried as ``remote`` says.
    """
    from megaset.pipeline.remote import expand
    from megaset.pipeline.retry import with_retries

    remote = remote or RemoteConfig()
    out: dict[str, list[str]] = {}
    for name, channel in channels.items():
        found: list[str] = []
        for pattern in channel.files:
            paths = with_retries(lambda pattern=pattern: expand(pattern, remote.timeout), pattern, remote)
            if not paths:
                msg = (
                    f"inputs.channels.{name}.files: {pattern!r} matches no file; "
                    "check the path or glob (run `megaset simulate` for the demo sample)"
                )
                raise ConfigError(msg)
            found += paths
        out[name] = sorted(dict.fromkeys(found))
    _refuse_shared(out)
    return out


def _refuse_shared(files: dict[str, list[str]]) -> None:
    """One file under two channels would be stored twice, under two labels."""
    owner: dict[str, str] = {}
    for name, paths in files.items():
        for path in paths:
            first = owner.setdefault(path, name)
            if first != name:
                msg = (f"{path} is listed under two channels, inputs.channels.{first}.files and "
                       f"inputs.channels.{name}.files; list each file under one channel")
                raise ConfigError(msg)


def file_identities(channels: dict[str, ChannelInput], remote: RemoteConfig | None = None) -> dict[str, list]:
    """Path -> ``[size, mtime in ns]`` of every input file, from the filesystem alone (nothing read).

    What the ingest's stage fingerprint (:mod:`megaset.provenance`) holds of its inputs: a file
    rewritten in place changes it. A remote file (``root://``, ``s3://``, ``http(s)://``) is
    named by its URL alone: grid files are not rewritten under one name, and asking every server
    would make ``megaset status`` as slow as the file check (whose checksums guard the staging
    pieces all the same).
    """
    import os

    from megaset.pipeline.remote import protocol

    out: dict[str, list] = {}
    for paths in expand_files(channels, remote).values():
        for path in paths:
            if protocol(path) in ("file", "local"):
                stat = os.stat(path.removeprefix("file://"))
                out[path] = [stat.st_size, stat.st_mtime_ns]
            else:
                out[path] = [None, None]
    return out


def _checksum(path: str, **storage_options) -> tuple[int, str]:
    """Size and adler32 of the file's bytes: the checksum grid storage (Rucio, XRootD) keeps,
    so it can be compared with the catalogue's; four times as fast here as blake2b."""
    import zlib

    import fsspec

    value, size = 1, 0
    block = memoryview(bytearray(_HASH_BLOCK))  # one buffer, refilled: no fresh pages per read
    with fsspec.open(path, "rb", **storage_options) as f:
        while n := f.readinto(block):
            value = zlib.adler32(block[:n], value)
            size += n
    return size, f"adler32:{value:08x}"


def _inspect(info: FileInfo, branches: list[str], weight_branch: str | None, sum_weights: bool, schema,
             remote: RemoteConfig, check_branches: bool) -> FileInfo:
    import uproot

    from megaset.pipeline import remote as access
    from megaset.pipeline.schema import check_branches as check

    whole = access.reads_whole(info.path, remote.timeout)
    # Without the branch check, uproot's reader of a tree's entry count alone (what
    # uproot.num_entries uses) instead of the metadata of every branch.
    light = {} if check_branches else {"custom_classes": {"TTree": _entries_only()}}
    with uproot.open(info.path, **access.uproot_options(remote, (info.path,) if whole else ()), **light) as f:
        if info.tree not in f:
            available = ", ".join(sorted({k.split(";")[0] for k in f.keys()})) or "none"  # noqa: SIM118 - uproot keys
            return _bad(info, f"no tree {info.tree!r} (objects in file: {available}); "
                              "set inputs.tree or the channel's tree")
        tree = f[info.tree]
        uuid = str(f.file.uuid)
        declared_end = int(f.file.fEND)  # where the header says the file ends
        total = 0.0
        if check_branches:
            # Types of the schema's branches only: a production ntuple has hundreds.
            available = dict.fromkeys(tree.keys(), "") | tree.typenames(filter_name=branches)
            check(available, schema, info.path)
            total = float(tree[weight_branch].array(library="np").sum(dtype="f8")) if sum_weights else 0.0
            entries = int(tree.num_entries)
        else:
            entries = int(tree.member("fEntries")[0])  # one field, as uproot.num_entries reads it
    # What the server keeps about the content, else the bytes read once (from the whole-file
    # copy just made, where there is one).
    stored = access.stored_checksum(info.path, remote.timeout)
    if stored is None:
        target, storage = access.open_target(info.path, remote.timeout, whole)
        stored = _checksum(target, **storage)
    size, checksum = stored
    if size < declared_end:
        # Cut short in a copy or a transfer: cheap to see here, a failed basket read later.
        return _bad(info, f"is truncated: {size} bytes where its ROOT header says {declared_end}; copy the "
                          "file again")
    return FileInfo(**{**info.to_dict(), "size": size, "checksum": checksum, "uuid": uuid, "entries": entries,
                       "sum_weights": total, "whole_file": whole})


def inspect_file(info: FileInfo, branches: list[str], weight_branch: str | None, sum_weights: bool, schema,
                 remote: RemoteConfig | None = None, check_branches: bool = True) -> FileInfo:
    """Open one file and check it; never raises for a bad file.

    With ``check_branches`` the tree is read and its branches checked against the schema (and
    the weight branch summed with ``sum_weights``). Without, only what the chunking needs is
    read: the file's UUID and the tree's entry count, not the metadata of every branch (a
    fifteenth of the time); the processor then checks the branches of the tree it reads anyway.
    A file that cannot be reached is retried as ``remote`` says when the cause may pass, and
    reported in one line (URL, cause, fix) when it does not.
    """
    from megaset.pipeline.retry import with_retries

    remote = remote or RemoteConfig()
    try:
        return with_retries(lambda: _inspect(info, branches, weight_branch, sum_weights, schema, remote,
                                             check_branches),
                            info.path, remote)
    except InputFileError as err:
        return _bad(info, err.reason)
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail in many ways; report, never crash the check
        detail = " ".join(str(err).split())  # one line: it is listed among the skipped files
        return _bad(info, f"cannot be read as a ROOT file: {type(err).__name__}: {detail}")


def _entries_only() -> type:
    from uproot.models.TTree import Model_TTree_NumEntries

    return Model_TTree_NumEntries


def _bad(info: FileInfo, reason: str) -> FileInfo:
    return FileInfo(**{**info.to_dict(), "error": reason})


def inspect_files(cfg: Config, channels: dict[str, ChannelInput], client: Client | None) -> list[FileInfo]:
    """Check every input file, on the cluster when a client is given; file order is the index."""
    remote = cfg.inputs.remote
    files = expand_files(channels, remote)
    todo = [
        FileInfo(path=path, channel=name, tree=channels[name].tree or cfg.inputs.tree, index=0)
        for name in channels
        for path in files[name]
    ]
    todo = [FileInfo(**{**t.to_dict(), "index": i}) for i, t in enumerate(todo)]
    schema = cfg.input_schema
    args = (schema.branches(), schema.weight)
    # A channel normalised to its cross-section needs its good files' entries or weights
    # before any chunk runs: its files are checked whole here. Other files' branches are
    # checked by the processor, on the tree it reads anyway.
    whole = {name: ch.xsec_pb is not None for name, ch in channels.items()}
    sums = {name: whole[name] and schema.weight is not None for name in channels}
    if client is None:
        return [inspect_file(t, *args, sums[t.channel], schema, remote, whole[t.channel]) for t in todo]
    futures = client.map(
        inspect_file, todo, [args[0]] * len(todo), [args[1]] * len(todo),
        [sums[t.channel] for t in todo], [schema] * len(todo), [remote] * len(todo),
        [whole[t.channel] for t in todo], pure=False,
    )
    return client.gather(futures)
