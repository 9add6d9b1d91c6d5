from __future__ import annotations

from matplotlib.colors import to_rgb

from megaset.report.style import PALETTE, Style, process_colours

CHANNELS = [{"id": i, "name": n} for i, n in enumerate(
    ["zeejets", "zmmjets", "zttjets", "ttbar", "singletop", "wjets", "diboson", "higgs", "c1n2_a", "c1n2_b"])]


def test_twenty_distinct_colours_and_one_per_process():
    assert len(set(PALETTE)) == len(PALETTE) == 20
    rgb = [to_rgb(c) for c in PALETTE]
    closest = min(sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) ** 0.5
                  for i, p in enumerate(rgb) for q in rgb[i + 1:])
    assert closest > 0.1
    colours = process_colours(CHANNELS)
    assert len(set(colours.values())) == len(CHANNELS)


def test_a_process_keeps_its_colour_whatever_the_others():
    full = process_colours(CHANNELS)
    # The same channels in another order, without some of them (a study's derived store), or
    # with one of them turned into a signal: the colours follow the id, not the position.
    subset = process_colours([CHANNELS[7], CHANNELS[3], {**CHANNELS[0], "is_signal": True}])
    assert subset == {n: full[n] for n in ("higgs", "ttbar", "zeejets")}
    assert process_colours(CHANNELS, {"ttbar": "k"})["ttbar"] == "k"
    assert Style(colours=full).colour("data", "black") == "black"
