"""A recorder of the ``progress(done, total)`` calls of a stage (:mod:`megaset.progress`)."""

from __future__ import annotations


class Calls(list):
    """Every call, as ``(done, total)``."""

    def __call__(self, done: int, total: int | None) -> None:
        self.append((done, total))

    def counted(self, total: int) -> bool:
        """From 0 up to ``total``, never back, the total the same in every call."""
        done = [d for d, _ in self]
        return {t for _, t in self} == {total} and done[0] == 0 and done[-1] == total and done == sorted(done)
