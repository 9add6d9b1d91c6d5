"""Values that may carry credentials, blanked out of every persisted copy of the configuration.

The resolved configuration is kept beside what it made (staging and store attributes,
checkpoints, the report's ``config.yaml``), where anyone who can read the results reads it.
Credentials belong in the environment or a Secret, but a configuration may carry them anyway:
so before it is stored,

- every value of an environment map (``cluster.kubernetes.env``) is replaced, its names kept;
- the user information of a URL (``s3://user:pass@host/...``) and the values of query
  parameters named like a credential (``X-Amz-Signature``, ``token``) are replaced;
- a ``NAME=value`` assignment (a prologue's ``export AWS_SECRET_ACCESS_KEY=...``) and a mapping
  entry whose name reads like a credential (``password``, ``token``, ``*_key``) are replaced.

The configuration a run uses is never touched: only the copies written down.

>>> redact({"store": {"url": "s3://me:hunter2@minio:9000/b/s.zarr"}})
{'store': {'url': 's3://<redacted>@minio:9000/b/s.zarr'}}
>>> redact({"p": ["export AWS_SECRET_ACCESS_KEY=abc", "export HOME=/tmp"]})
{'p': ['export AWS_SECRET_ACCESS_KEY=<redacted>', 'export HOME=/tmp']}
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "redact"]

REDACTED = "<redacted>"

#: Environment maps of the configuration: every value may be a credential.
_ENV_MAPS = {("cluster", "kubernetes", "env")}
#: Keys named like a credential that hold none: the name of the Secret holding them.
_KEEP = {("cluster", "kubernetes", "secret"), ("cluster", "tls", "secret")}

#: Names that read like a credential (not those of a file or folder holding one).
_NAME = (r"[A-Za-z0-9_.-]*(?:secret|passw|token|credential|signature|api[_-]?key|access[_-]?key|private[_-]?key"
         r"|session[_-]?key|auth)[A-Za-z0-9_.-]*")
_SECRET_NAME = re.compile(rf"^{_NAME}$", re.IGNORECASE)
_NOT_SECRET = re.compile(r"(?:_file|_path|_dir|_directory)$", re.IGNORECASE)

_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")
_QUERY = re.compile(rf"([?&]{_NAME}=)[^&#\s]*", re.IGNORECASE)
_ASSIGNMENT = re.compile(rf"(?<![\w$?&.-])({_NAME})=(\"[^\"]*\"|'[^']*'|\S+)", re.IGNORECASE)


def _secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.match(name)) and not _NOT_SECRET.search(name)


def _text(value: str) -> str:
    value = _USERINFO.sub(f"{REDACTED}@", value)
    value = _QUERY.sub(rf"\g<1>{REDACTED}", value)
    return _ASSIGNMENT.sub(lambda m: f"{m[1]}={REDACTED}" if _secret_name(m[1]) else m[0], value)


def redact(value: Any, path: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` (plain JSON types: a resolved configuration or a part of it at
    ``path``) with every value that may carry a credential replaced by ``<redacted>``."""
    if isinstance(value, dict):
        if path in _ENV_MAPS:
            return dict.fromkeys(value, REDACTED)
        return {key: REDACTED if isinstance(item, str) and _secret_name(str(key)) and (*path, key) not in _KEEP
                else redact(item, (*path, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, path) for item in value]
    if isinstance(value, str):
        return _text(value)
    return value
