"""How scores sit in a store: ``score/<model>`` beside the features of every group.

``score/<model>`` [N] float32
    per-event reconstruction error of a model;
``score/<model>.<block>`` [N] float32
    the error over one block of the RMM (:data:`megaset.storage.layout.BLOCKS`).

What made a model's columns (its checkpoint's digest, the per-block setting) is kept as the
attributes of the ``score/<model>`` column (:meth:`megaset.storage.store.StoreGroup.column_attrs`).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SCORE_GROUP", "score_column", "is_score_column", "scored_models", "split_score_name"]

#: The subgroup of every store group that holds the score columns.
SCORE_GROUP = "score"


def score_column(model: str, block: str | None = None) -> str:
    """The store column of a model's error, or of one block of it.

    >>> score_column("ae-deep"), score_column("ae-deep", "met")
    ('score/ae-deep', 'score/ae-deep.met')
    """
    return f"{SCORE_GROUP}/{model}" if block is None else f"{SCORE_GROUP}/{model}.{block}"


def split_score_name(name: str) -> tuple[str, str | None]:
    """``(model, block)`` of a score's name: ``model.block`` names one block of the model's error
    (a block of :data:`megaset.storage.layout.BLOCKS`), any other name the model's total.

    >>> split_score_name("ae-shallow.met"), split_score_name("deep-svdd")
    (('ae-shallow', 'met'), ('deep-svdd', None))
    """
    from megaset.storage.layout import BLOCKS

    model, dot, block = name.rpartition(".")
    return (model, block) if dot and block in BLOCKS else (name, None)


def is_score_column(name: str) -> bool:
    """Whether ``name`` is a score column (total or per block).

    >>> is_score_column("score/ae-deep.met"), is_score_column("rmm")
    (True, False)
    """
    return name.startswith(f"{SCORE_GROUP}/")


def scored_models(columns: Iterable[str]) -> list[str]:
    """The models with a total score among ``columns`` (block columns left out), in order.

    >>> scored_models(["rmm", "score/ae-deep", "score/ae-deep.met", "score/pca"])
    ['ae-deep', 'pca']
    """
    prefix = f"{SCORE_GROUP}/"
    return [c.removeprefix(prefix) for c in columns if c.startswith(prefix) and "." not in c]
