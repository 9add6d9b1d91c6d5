"""Dask's TLS (``tls://``) for the clusters of every kind: certificates, and the ``Security`` made of them.

With TLS every connection between driver, scheduler and workers is encrypted, and both of its
ends show a certificate signed by the cluster's certificate authority: whoever reaches a
scheduler or worker port without one is refused before any message (and so before any code)
is read. Dask checks the authority, not host names, so one certificate serves every pod or job.

The certificates come from ``cluster.tls`` (files), from the Kubernetes Secret mounted at
:data:`MOUNT` (``kind: kubernetes``), or are made for one cluster alone (:func:`generate`: a
self-signed certificate that is its own authority; ``kind: htcondor`` and ``local`` without
files). ``python -m megaset.deploy.tls SECRET-NAME [NAMESPACE]`` prints such a Secret for
``kubectl apply -f -``.

>>> from megaset.config import ClusterConfig
>>> [tls_enabled(ClusterConfig(kind=k)) for k in ("local", "kubernetes", "htcondor")]
[False, True, True]
>>> tls_enabled(ClusterConfig(kind="address", address="tcp://10.0.0.1:8786"))
False
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megaset.config import ClusterConfig
from megaset.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Security

__all__ = ["TLSFiles", "MOUNT", "SECRET_KEYS", "tls_enabled", "configured_files", "made_security", "generate",
           "secret_manifest", "main"]

#: Where the pods of ``kind: kubernetes`` (scheduler, workers, the driver) find the Secret's files.
MOUNT = "/etc/dask-tls"
#: The keys of that Secret: the authority, the certificate and its key (the names of a kubernetes.io/tls
#: Secret made by cert-manager, which can supply it as well).
SECRET_KEYS = ("ca.crt", "tls.crt", "tls.key")
#: The config keys naming the three files, in the order of :data:`SECRET_KEYS`.
_FILE_KEYS = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class TLSFiles:
    """The three PEM files of a cluster: its authority, a certificate it signed, that certificate's key."""

    ca: str
    cert: str
    key: str
    # Dask takes PEM text in place of a path as well (made_security keeps its certificate so).

    def security(self) -> Security:
        """Client, scheduler and worker roles on these files; plain ``tcp://`` refused."""
        from distributed import Security

        return Security(
            tls_ca_file=self.ca,
            tls_client_cert=self.cert, tls_client_key=self.key,
            tls_scheduler_cert=self.cert, tls_scheduler_key=self.key,
            tls_worker_cert=self.cert, tls_worker_key=self.key,
            require_encryption=True,
        )

    def args(self) -> list[str]:
        """The ``dask scheduler`` / ``dask worker`` arguments that load them."""
        return ["--tls-ca-file", self.ca, "--tls-cert", self.cert, "--tls-key", self.key]


def tls_enabled(cfg: ClusterConfig) -> bool:
    """Whether the cluster of ``cfg`` speaks ``tls://``: ``cluster.tls.enabled``, else on for
    Kubernetes and HTCondor clusters (their ports face a network), off for a local one (loopback
    alone), and as its address says for an existing scheduler."""
    if cfg.tls.enabled is not None:
        return cfg.tls.enabled
    if cfg.kind == "address":
        return bool(cfg.address and cfg.address.startswith("tls://"))
    return cfg.kind in ("kubernetes", "htcondor")


def configured_files(cfg: ClusterConfig) -> TLSFiles | None:
    """The certificate files the config names (on Kubernetes, the mounted Secret's by default), each
    checked to be readable; ``None`` where the cluster makes its own.

    Raises
    ------
    ConfigError
        Naming the key and the file that is missing or cannot be read.
    """
    tls = cfg.tls
    if tls.ca_file and tls.cert_file and tls.key_file:
        given, where = [tls.ca_file, tls.cert_file, tls.key_file], ""
    elif cfg.kind == "kubernetes":
        given = [f"{MOUNT}/{name}" for name in SECRET_KEYS]
        where = f" (the Secret {tls.secret!r} mounted at {MOUNT}, deploy/kubernetes/job.yaml)"
    else:
        return None
    for key, path in zip(_FILE_KEYS, given, strict=True):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            msg = (f"cluster.tls.{key}: cannot read {path}{where}: {err.strerror or err}; give the PEM files of the "
                   "cluster's certificate authority, certificate and key (docs/deploy.md, TLS)")
            raise ConfigError(msg) from None
    ca, cert, key = given
    return TLSFiles(ca=ca, cert=cert, key=key)


def _pems() -> tuple[str, str]:
    """A fresh self-signed certificate (its own authority) and its key, as PEM text."""
    from distributed import Security

    try:
        made = Security.temporary()
    except ImportError:
        msg = ("a cluster with TLS and no cluster.tls files makes its own certificate, which needs the "
               "`cryptography` package: pip install 'megaset[htcondor]' (or cryptography), or give "
               "cluster.tls.ca_file, cert_file and key_file")
        raise ConfigError(msg) from None
    return str(made.tls_scheduler_cert), str(made.tls_scheduler_key)


def made_security() -> Security:
    """The ``Security`` of a certificate made for one cluster alone, held in memory."""
    cert, key = _pems()
    return TLSFiles(ca=cert, cert=cert, key=key).security()


def generate(directory: str | os.PathLike[str]) -> TLSFiles:
    """Write a certificate made for one cluster alone into ``directory`` (created, owner-only) as the
    files of :data:`SECRET_KEYS`; the key readable by its owner alone."""
    cert, key = _pems()
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = [folder / name for name in SECRET_KEYS]
    for path, text in zip(paths, (cert, cert, key), strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    ca, crt, k = (str(p) for p in paths)
    return TLSFiles(ca=ca, cert=crt, key=k)


def secret_manifest(name: str, namespace: str | None = None) -> dict[str, Any]:
    """A Kubernetes Secret holding a freshly made certificate under :data:`SECRET_KEYS`."""
    cert, key = _pems()
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "megaset"}}
    if namespace:
        metadata["namespace"] = namespace
    data = {k: base64.b64encode(v.encode()).decode() for k, v in zip(SECRET_KEYS, (cert, cert, key), strict=True)}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print a Secret of a new certificate (``SECRET-NAME [NAMESPACE]``)."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m megaset.deploy.tls SECRET-NAME [NAMESPACE] | kubectl apply -f -", file=sys.stderr)
        return 2
    import yaml

    try:
        sys.stdout.write(yaml.safe_dump(secret_manifest(*args), sort_keys=False))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
