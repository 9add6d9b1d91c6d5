"""Exceptions of megaset.

Each one also subclasses the built-in exception a caller would catch without knowing megaset
(as zarr's ``ArrayNotFoundError`` subclasses ``FileNotFoundError``). Messages name the file,
branch, config key or store path at fault and say what would fix it.
"""

from __future__ import annotations

__all__ = [
    "MegasetError", "ConfigError", "InputFileError", "BranchError", "NonFiniteInputError", "StoreError",
    "IncompleteStoreError", "StoreKeyError", "DamagedChunkError", "OutputLockedError", "TrainingError",
    "CheckpointError",
]


class MegasetError(Exception):
    """Base class of every error raised on purpose by megaset."""


class ConfigError(MegasetError, ValueError):
    """The configuration file (or a value in it) is invalid."""


class MissingExtraError(MegasetError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class InputFileError(MegasetError, OSError):
    """An input ntuple cannot be opened or read.

    ``filename`` names the file and ``reason`` says what failed, so that a run with
    ``on_bad_file: skip`` can list the file and the reason in the store metadata.
    """

    def __init__(self, filename: str, reason: str):
        self.filename = filename
        self.reason = reason
        super().__init__(f"{filename}: {reason}")

    def __reduce__(self):
        return (type(self), (self.filename, self.reason))

    def __str__(self) -> str:
        # OSError would print "[Errno None] None: 'file'" and hide the reason.
        return f"{self.filename}: {self.reason}"


class BranchError(InputFileError, KeyError):
    """A branch named by the schema is missing from a file or has the wrong type."""

    def __init__(self, filename: str, reason: str, branch: str):
        self.branch = branch
        super().__init__(filename, reason)

    def __reduce__(self):
        return (type(self), (self.filename, self.reason, self.branch))


class NonFiniteInputError(InputFileError, ValueError):
    """NaN or inf values in an input branch while ``selection.on_nonfinite`` is ``fail``."""


class StoreError(MegasetError, OSError):
    """A store is missing, incomplete, or violates one of its invariants."""


class OutputLockedError(StoreError, BlockingIOError):
    """Another process holds the lock of an output this command would write; the message names
    it (host, pid, start time, command) and what to do."""


class IncompleteStoreError(StoreError):
    """The store exists but was not finished; the message says which command finishes it."""


class TrainingError(MegasetError, RuntimeError):
    """A training rank failed or died; the message names the rank, its worker and the cause."""


class CheckpointError(MegasetError, ValueError):
    """A checkpoint or loader state does not fit the run that loads it ("found X instead of Y")."""


class StoreKeyError(StoreError, KeyError):
    """A group or column that the store does not have; the message lists the ones it has."""

    def __str__(self) -> str:
        # KeyError would print the message in quotes.
        return str(self.args[0]) if self.args else ""


class DamagedChunkError(StoreError):
    """Stored chunks whose bytes no longer match their crc32c checksum, or (``reason``) whose
    contents are otherwise broken; ``chunks`` lists them (``<array URL>/<chunk key>``)."""

    def __init__(self, message: str, chunks: list[str], reason: str = "crc32c checksum mismatch"):
        self.chunks = chunks
        self.reason = reason
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.args[0], self.chunks, self.reason))
