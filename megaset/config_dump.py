"""The configuration described from its model: every default as commented YAML, and a JSON schema.

``megaset config --defaults`` prints :func:`defaults_yaml`, a file that loads back to the
defaults and carries each key's description as a comment above it; ``megaset config --schema``
prints :func:`json_schema`, for editors that complete and check YAML against a schema.

>>> import yaml
>>> from megaset.config import Config
>>> Config.model_validate(yaml.safe_load(defaults_yaml())) == Config()
True
"""

from __future__ import annotations

import inspect
import json
import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from megaset.config import Config

__all__ = ["defaults_yaml", "resolved_yaml", "json_schema"]

_WIDTH = 100  # of the comment lines
_FLOW_MAX = 90  # a value shorter than this (as YAML flow) stays on its key's line

_HEADER = """\
# Every key of the megaset configuration at its default, with what it means.
# A configuration file needs only the keys it changes; `megaset config --schema` prints the
# JSON schema of this file, `megaset config -c FILE` the configuration FILE resolves to.
"""


def _plain(value: Any) -> Any:
    """JSON types of a value that may hold models (a dict of collections, a list of objects)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _yaml(value: Any, *, flow: bool) -> str:
    text = yaml.safe_dump(value, default_flow_style=flow, sort_keys=False, width=10**9, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("...").rstrip("\n")


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), width=_WIDTH - len(indent) - 2,
                         initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _section(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value = getattr(model, name)
        if field.description:
            lines += _comment(field.description, indent)
        if isinstance(value, BaseModel):
            doc = inspect.getdoc(type(value))
            if doc and doc != inspect.getdoc(BaseModel) and not field.description:
                lines += _comment(doc, indent)
            lines.append(f"{indent}{key}:")
            lines += _section(value, indent + "  ")
            continue
        plain = _plain(value)
        flow = _yaml(plain, flow=True)
        if len(flow) <= _FLOW_MAX or not isinstance(plain, dict | list):
            lines.append(f"{indent}{key}: {flow}")
        else:
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  {line}" for line in _yaml(plain, flow=False).splitlines()]
    return lines


def defaults_yaml() -> str:
    """Every key of :class:`~megaset.config.Config` at its default, each described in a comment."""
    return _HEADER + "\n".join(_section(Config(), "")) + "\n"


def resolved_yaml(cfg: Config) -> str:
    """The whole configuration ``cfg`` stands for (every default filled in), as YAML."""
    return _yaml(cfg.resolved(), flow=False) + "\n"


def json_schema() -> str:
    """The JSON schema of a configuration file, from the pydantic model (keys by their YAML names)."""
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    schema["title"] = "megaset configuration"
    return json.dumps(schema, indent=2) + "\n"
