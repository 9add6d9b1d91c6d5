"""Optional dependencies: which extra installs each, and the one-line error when one is missing.

A laptop user installs ``megaset`` alone; storage on S3, the Kubernetes and HTCondor clusters,
XRootD inputs and the model export each need an extra (``pip install 'megaset[s3]'``). A
feature that needs one calls :func:`require` before its first import, so that the user reads
which extra to install instead of an ``ImportError`` deep in a library. :func:`missing_extra`
recognises the same missing modules in an ``ImportError`` raised anywhere else (fsspec's
"Install s3fs to access S3", inside a Dask task), so that the command line says the same.
"""

from __future__ import annotations

import importlib

from megaset.errors import MissingExtraError

__all__ = ["EXTRAS", "missing_extra", "require", "require_for_url"]

#: Each extra: what it serves, and the modules megaset imports from it.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "s3": ("s3:// stores and inputs need the S3 client", ("s3fs", "botocore")),
    "xrootd": ("root:// inputs need the XRootD client", ("fsspec_xrootd", "XRootD.client")),
    "kubernetes": ("cluster.kind: kubernetes needs the dask-kubernetes operator client",
                   ("dask_kubernetes", "kubernetes")),
    "htcondor": ("cluster.kind: htcondor needs dask-jobqueue", ("dask_jobqueue",)),
    "export": ("the ONNX export needs onnx, onnxscript and onnxruntime", ("onnx", "onnxscript", "onnxruntime")),
}

#: The extra a URL scheme needs.
_SCHEMES = {"s3": "s3", "s3a": "s3", "root": "xrootd"}


def _message(extra: str, module: str, where: str = "") -> str:
    what, _ = EXTRAS[extra]
    return f"{where}{what}: pip install 'megaset[{extra}]' ({module} is not installed)"


def require(extra: str, where: str = "") -> None:
    """Raise :class:`~megaset.errors.MissingExtraError`, naming ``extra`` and the command that
    installs it, when one of its modules cannot be imported; ``where`` (a URL, a config key)
    starts the message."""
    for module in EXTRAS[extra][1]:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingExtraError(_message(extra, err.name or module, where)) from None


def require_for_url(url: str) -> None:
    """:func:`require` the extra that reads ``url`` (s3://, root://), if its scheme needs one."""
    from fsspec.core import split_protocol

    for part in url.split("::"):  # fsspec chains: simplecache::s3://bucket/key
        extra = _SCHEMES.get(split_protocol(part)[0] or "")
        if extra:
            require(extra, f"{url}: ")


def missing_extra(err: BaseException) -> MissingExtraError | None:
    """The :class:`~megaset.errors.MissingExtraError` that ``err``, or an exception it was
    raised from, stands for: an ``ImportError`` of a module that an extra installs; ``None``
    for any other error."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MissingExtraError):
            return current
        if isinstance(current, ImportError) and current.name:
            top = current.name.split(".")[0]
            for extra, (_, modules) in EXTRAS.items():
                if top in {m.split(".")[0] for m in modules}:
                    return MissingExtraError(_message(extra, current.name))
        current = current.__cause__ or current.__context__
    return None
