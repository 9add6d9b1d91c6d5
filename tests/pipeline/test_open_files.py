from __future__ import annotations

import pickle

import numpy as np
import pytest
import uproot

from megaset.pipeline.open_files import OPEN_TREES, OpenTrees
from megaset.pipeline.simulate import generate, write_ntuple


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("open")
    paths = []
    for i in range(4):
        path = root / f"f{i}.root"
        write_ntuple(path, generate("zmmjets", 300, seed=i), "mini")
        paths.append(str(path))
    return paths


def test_a_tree_read_through_the_cache_is_lent_while_its_file_is_open(files):
    cache = OpenTrees(capacity=2)
    with uproot.open(files[0], object_cache=cache) as f:  # as coffea opens a chunk's file
        theirs = f["mini"]
        assert cache.tree(files[0], "mini") is theirs
    # The lender's file is closed: the next chunk of this file here opens and keeps it.
    kept = cache.tree(files[0], "mini")
    assert kept is not theirs and not kept.file.closed
    with uproot.open(files[0], object_cache=cache) as f:
        assert f["mini"] is kept  # coffea's next open finds it: no metadata read again
    np.testing.assert_array_equal(kept["met_Et"].array(library="np"),
                                  uproot.open(files[0])["mini"]["met_Et"].array(library="np"))


def test_a_tree_read_here_is_kept_and_handed_out_again(files):
    cache = OpenTrees(capacity=2)
    fresh = cache.tree(files[1], "mini")  # no tree lent: read here, the file kept
    assert cache.tree(files[1], "mini") is fresh


def test_the_least_recently_used_file_is_closed_past_the_capacity(files):
    cache = OpenTrees(capacity=2)
    trees = [cache.tree(path, "mini") for path in files[:3]]
    assert trees[0].file.closed and not trees[1].file.closed and not trees[2].file.closed
    again = cache.tree(files[0], "mini")
    assert again is not trees[0] and not again.file.closed and trees[1].file.closed


def test_the_cache_pickles_as_the_receiving_process_cache():
    assert pickle.loads(pickle.dumps(OpenTrees())) is OPEN_TREES
