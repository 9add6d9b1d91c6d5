from __future__ import annotations

import pytest

from megaset.config import ChannelInput
from megaset.pipeline.inputs import expand_files


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18765/z.root",
    "https://eospublic.cern.ch:443/eos/opendata/atlas/mc/z.root",
    "s3://bucket/ntuples/z.root",
    "root://127.0.0.1:1094//data/z.root",
])
def test_a_remote_url_reaches_uproot_as_written(url):
    """fsspec keeps the scheme in http paths and strips it from s3 and root ones: the scheme
    was once prefixed to every path, giving http://http://..."""
    assert expand_files({"c": ChannelInput(files=[url])}) == {"c": [url]}
