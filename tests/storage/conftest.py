"""Fixtures of the storage tests: a small store mixed once per module."""

from __future__ import annotations

import pytest
from store_factory import make_config, make_staging


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """A small complete store mixed in this process (for reader and verify tests)."""
    from megaset.storage.mix import mix

    tmp_path = tmp_path_factory.mktemp("mixed")
    cfg = make_config(tmp_path)
    staged = make_staging(cfg.store.staging)
    summary = mix(cfg, None)
    return cfg, staged, summary
