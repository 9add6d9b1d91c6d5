"""The RMM feature layout the store describes: matrix side and blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megaset.errors import ConfigError
from megaset.storage.layout import block_masks, matrix_side
from megaset.storage.scores import is_score_column, score_column, scored_models


def test_block_masks_partition_the_matrix():
    masks = block_masks(529)
    assert {k: len(v) for k, v in masks.items()} == {"met": 45, "mass": 231, "rapidity": 231, "energy": 22}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(masks.values()))), np.arange(529))
    side = math.isqrt(529)
    assert masks["mass"][0] == side + 2 and masks["rapidity"][0] == 2 * side + 1
    assert score_column("ae-deep", "mass") == "score/ae-deep.mass"
    with pytest.raises(ConfigError, match=r"n x n RMM, but the store has 10 features; set scoring.blocks: false"):
        block_masks(10)


def test_matrix_side_of_square_and_other_feature_counts():
    assert [matrix_side(n) for n in (1, 16, 529, 530)] == [1, 4, 23, None]


def test_score_columns_are_named_and_listed_by_the_store_contract():
    assert score_column("ae-deep") == "score/ae-deep"
    assert is_score_column("score/ae-deep.met") and not is_score_column("rmm")
    assert scored_models(["weight", "score/pca", "score/pca.met", "score/ae-deep"]) == ["pca", "ae-deep"]
