"""The jet chain: the constituent kernels against reading their inputs, and the jet demo's figures.

(a) Kernels, in one process on the same simulated jets (QCD and top, half each): uproot reading
    the four jagged constituent branches (the baseline), then each feature the ingest computes
    from them (:mod:`megaset.pipeline.jet_features`): kinematics, N-subjettiness tau_1..tau_5
    with the exclusive-kT axes (numba), the 37 x 37 images padded to 40 x 40, the 30 leading
    constituents. Best of ``--repeat`` runs each (the numba kernels compiled or loaded from
    their cache first), in jets/s, and the ratio of each to the read.
(b) With ``--demo``: the whole jet demo chain (``megaset run --demo jets``, its configuration
    with the outputs under ``--workdir``) on a LocalCluster of ``--workers`` processes: wall
    seconds per stage, then the figures its report holds: the Table I analogue (E10 / E100 for
    top and gluino jets, next to Farina et al.'s), the number of the 56 pairwise cells each
    model separates (AUC > 0.6), and the mass sculpting (Jensen-Shannon divergence of the
    background jet mass after cuts keeping 10 % and 1 %), with and without decorrelation.

    python benchmarks/jets.py --jets 20000
    python benchmarks/jets.py --jets 20000 --demo --json jets.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

_BRANCHES = ["constPt", "constEta", "constPhi", "constE"]


def _read(paths: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """The constituents of every jet in ``paths``: flat (pt, eta, phi, E) and the jets' offsets."""
    import awkward as ak
    import uproot

    parts = []
    for path in paths:
        with uproot.open(path) as f:
            parts.append(f["jets"].arrays(_BRANCHES, how=dict))
    arrays = {b: ak.concatenate([p[b] for p in parts]) for b in _BRANCHES}
    counts = ak.to_numpy(ak.num(arrays["constPt"]))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return [ak.to_numpy(ak.flatten(arrays[b])).astype(np.float64) for b in _BRANCHES], offsets


def _best(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def kernels(workdir: Path, n_jets: int, repeat: int) -> dict[str, Any]:
    """(a): jets/s of the read and of each feature, and each one's ratio to the read."""
    from megaset.config import JetSimulateConfig
    from megaset.pipeline.jet_features import jet_images, jet_kinematics, leading_constituents, nsubjettiness
    from megaset.pipeline.jets_simulate import simulate_jets

    half = n_jets // 2
    files = simulate_jets(JetSimulateConfig(output=str(workdir / "kernel-jets"), jets=half, signal_jets=half,
                                            jets_per_file=half, samples=["qcd", "top"]))
    paths = [p for sample in files.values() for p in sample]
    (pt, eta, phi, energy), offsets = _read(paths)
    n = len(offsets) - 1
    # Compiled (or loaded from numba's cache) before any timing.
    few = [a[: offsets[10]] for a in (pt, eta, phi, energy)]
    _, axes = nsubjettiness(*few, offsets[:11])
    jet_images(*few[:3], offsets[:11], axes=axes)
    kin = jet_kinematics(pt, eta, phi, energy, offsets)
    _, axes = nsubjettiness(pt, eta, phi, energy, offsets)
    steps = {
        "read (uproot, 4 jagged branches)": lambda: _read(paths),
        "kinematics": lambda: jet_kinematics(pt, eta, phi, energy, offsets),
        "N-subjettiness tau1..5": lambda: nsubjettiness(pt, eta, phi, energy, offsets),
        "images 37x37 (padded 40x40)": lambda: jet_images(pt, eta, phi, offsets, axes=axes),
        "30 leading constituents": lambda: leading_constituents(pt, eta, phi, energy, offsets, kin["eta"],
                                                                kin["phi"], 30),
    }
    seconds = {name: _best(fn, repeat) for name, fn in steps.items()}
    read = seconds["read (uproot, 4 jagged branches)"]
    features = sum(s for name, s in seconds.items() if not name.startswith("read"))
    seconds["all features"] = features
    return {"jets": n, "constituents": int(offsets[-1]),
            "rows": [{"step": name, "seconds": s, "jets_per_s": n / s, "vs_read": read / s}
                     for name, s in seconds.items()]}


def demo(workdir: Path, workers: int) -> dict[str, Any]:
    """(b): the jet demo chain's stage times and its report's figures."""
    from distributed import Client, LocalCluster

    from megaset.config import demo_config
    from megaset.run import run

    cfg = demo_config("jets")
    cfg = cfg.replace(
        jets={"simulate": {"output": str(workdir / "jets")}},
        store={"url": str(workdir / "jets-store.zarr")},
        training={"output": str(workdir / "jet-models")},
        report={"output": str(workdir / "jet-report")},
    )
    start = time.perf_counter()
    with (LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
          Client(cluster) as client):
        out = run(cfg, client, log=print)
    report = out["report"]
    return {"wall_s": time.perf_counter() - start, "stages": out["seconds"],
            "table_i": [r for r in report["auc_table"] if r["signal"] in ("top", "gluino")],
            "separated": {m: v["separated"] for m, v in report["pairwise"].items()},
            "separated_trained_on_qcd": {m: v["separated"] for m, v in report["separation"].items()},
            "sculpting": {m: v["js"] for m, v in report["sculpting"].items()},
            "report": report.get("markdown")}


def _print_demo(d: dict[str, Any]) -> None:
    from megaset.report.jets import farina_published

    print(f"\njet demo: {d['wall_s']:.0f} s wall")
    for stage, s in d["stages"].items():
        print(f"  {stage:<32} {s:8.1f} s")
    print(f"\n{'model':<14} {'signal':<7} {'E10':>6} {'E100':>6} {'AUC':>6}   Farina et al. E10 / E100")
    for r in d["table_i"]:
        published = farina_published(r["model"], r["signal"])
        theirs = f"{published[0]:.2f} / {published[1]:.2f}" if published else "-"
        print(f"{r['model']:<14} {r['signal']:<7} {r['e10']:6.3f} {r['e100']:6.3f} {r['auc']:6.3f}   {theirs}")
    print("\npairwise cells of 56 with AUC > 0.6, trained on each sample:",
          ", ".join(f"{m} {n}" for m, n in d["separated"].items()))
    print("mass sculpting, JS divergence of the background mass after the cut (keep 0.1 / 0.01):")
    for m, js in d["sculpting"].items():
        print(f"  {m:<14} " + " / ".join(f"{v:.3f}" for v in js.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jets", type=int, default=20_000, help="jets simulated for the kernels (half QCD, half top)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="also run the jet demo chain and print its figures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default="jets-bench")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    result: dict[str, Any] = {"kernels": kernels(workdir, args.jets, args.repeat)}
    k = result["kernels"]
    print(f"{k['jets']} jets, {k['constituents']} constituents")
    print(f"{'step':<36} {'s':>8} {'jets/s':>10} {'read s / step s':>16}")
    for r in k["rows"]:
        print(f"{r['step']:<36} {r['seconds']:8.3f} {r['jets_per_s']:10.0f} {r['vs_read']:16.2f}")
    if args.demo:
        result["demo"] = demo(workdir, args.workers)
        _print_demo(result["demo"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
