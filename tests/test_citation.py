"""CITATION.cff: valid YAML with the keys the Citation File Format requires, citing the works
megaset implements, and the README's references agree with it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CFF = yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_required_keys_of_the_citation_file_format():
    assert {"cff-version", "message", "title", "authors"} <= set(CFF)
    assert CFF["cff-version"].startswith("1.2")
    assert CFF["authors"] and all("name" in a or "family-names" in a for a in CFF["authors"])
    for ref in CFF["references"]:
        assert {"type", "title", "authors"} <= set(ref), ref.get("title")
        assert ref["authors"] and all("name" in a or "family-names" in a for a in ref["authors"])


def test_the_version_is_the_package_version():
    from megaset import __version__

    assert str(CFF["version"]) == __version__


def test_the_works_megaset_implements_are_cited_here_and_in_the_readme():
    titles = {ref["title"].split(":")[0] for ref in CFF["references"]}
    assert {
        "Deployment of semi-unsupervised learning in the search for new physics at the LHC with the ATLAS detector",
        "Searching for New Physics with Deep Autoencoders",
        "Imaging particle collision data for event classification using machine learning",
        "Machine learning using rapidity-mass matrices for event classification problems in HEP",
        "Search for New Phenomena in Two-Body Invariant Mass Distributions Using Unsupervised Machine Learning for "
        "Anomaly Detection",
    } == titles
    arxiv = {i["value"] for ref in CFF["references"] for i in ref.get("identifiers", [])}
    assert arxiv == {"arXiv:1808.08992", "arXiv:2307.01612"}
    readme = " ".join((ROOT / "README.md").read_text().split())
    for number in arxiv:
        assert number in readme
    thesis = next(ref for ref in CFF["references"] if ref["type"] == "thesis")
    assert thesis["thesis-type"] == "Master's thesis" and "University of Oslo" in thesis["institution"]["name"]
    assert "Garcia de Presno Frette" in readme and "Universe 7 (2021) 19" in readme
