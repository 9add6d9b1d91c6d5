"""``--set key.path=value``: one configuration value changed from the command line.

The key is checked against the configuration model before anything runs (an unknown key is
refused with the closest valid spelling), and the value is typed by the field it sets: YAML
first (``3``, ``0.5``, ``null``, ``true``, ``[64, 32]``, ``{a: b}``), the text as written when
the field wants a string (``inputs.tree=123``). The whole configuration is then validated again,
so a value out of range names its key as it would in the file.

>>> from megaset.config import Config
>>> apply_overrides(Config(), ["training.epochs=3", "store.url=s3://bucket/store.zarr"]).training.epochs
3
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from megaset.config import Config, _validate
from megaset.errors import ConfigError

__all__ = ["apply_overrides", "parse_override"]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model of a section annotated ``Model`` or ``Model | None``; none for containers of models."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]


def _without_none(annotation: Any) -> Any:
    """``X`` of ``X | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _field_type(path: list[str], item: str) -> Any:
    """The annotation of the field at ``path`` of :class:`~megaset.config.Config`."""
    current: Any = Config
    for depth, part in enumerate(path):
        where = ".".join(path[:depth]) or "the top level"
        current = _without_none(current)
        models = _models_in(current)
        if models:
            model = models[0]
            fields = {f.alias or name: f for name, f in model.model_fields.items()}
            if part not in fields:
                close = difflib.get_close_matches(part, list(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                msg = f"--set {item}: unknown key {part!r} in {where}{hint} (valid there: {', '.join(fields)})"
                raise ConfigError(msg)
            current = fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]  # ``part`` is a free name (a channel, a collection)
        else:
            kind = "a list: set it whole, e.g. key=[a, b]" if get_origin(current) is list else "a value"
            msg = f"--set {item}: {where} is {kind}, it has no key {part!r}"
            raise ConfigError(msg)
    return current


def _typed(annotation: Any, raw: str, item: str) -> Any:
    """The value of ``raw`` that the field accepts: as YAML, else as the text itself."""
    adapter = TypeAdapter(annotation)
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        parsed = raw
    first: ValidationError | None = None
    for candidate in (parsed, raw):
        try:
            value = adapter.validate_python(candidate)
        except ValidationError as err:
            first = first or err
            continue
        # As the field holds it (1e-3, which YAML 1.1 reads as text, a float), in plain types: the
        # configuration's own validation is strict.
        return adapter.dump_python(value, mode="json", by_alias=True)
    assert first is not None
    problem = first.errors()[0]["msg"]
    msg = f"--set {item}: {problem} (got {raw!r})"
    raise ConfigError(msg)


def parse_override(item: str) -> tuple[list[str], Any]:
    """The key path and the typed value of one ``key.path=value``.

    >>> parse_override("selection.jets.pt_min=25")
    (['selection', 'jets', 'pt_min'], 25.0)
    """
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        msg = f"--set {item!r}: write key.path=value, e.g. --set training.epochs=3"
        raise ConfigError(msg)
    return path, _typed(_field_type(path, item), raw.strip(), item)


def apply_overrides(cfg: Config, overrides: Sequence[str], source: str = "the configuration") -> Config:
    """``cfg`` with every ``key.path=value`` of ``overrides`` set, in order, and validated again.

    Raises
    ------
    ConfigError
        Naming the override for an unknown key or a value its field refuses.
    """
    if not overrides:
        return cfg
    data = cfg.resolved()
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a section that was null, or a new channel
            node = node[part]
        node[path[-1]] = value
    return _validate(data, f"{source} with --set {' '.join(overrides)}")
