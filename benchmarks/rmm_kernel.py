"""RMM kernel throughput on one core, against a plain numpy implementation of the same cells.

Synthetic 2-lepton events (ee, mumu or emu; 0-6+ jets, 20 % of them b-tagged; objects in
random order within each event) are built with numpy, split into batches like ingest chunks,
and turned into RMMs by (a) ``megaset.pipeline.rmm.build_rmm`` (numba, compiled before timing)
and (b) a numpy implementation vectorised over events (no numba). The two results are checked
to agree cell by cell before the rates are printed.

    python benchmarks/rmm_kernel.py --events 1000000 --batch 200000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

_ELECTRON_MASS = 0.000511
_MUON_MASS = 0.10566


def _jagged(counts: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray):
    from megaset.pipeline.objects import Jagged

    return Jagged.from_counts(counts, {"pt": pt, "eta": eta, "phi": phi, "mass": mass})


def synthetic_events(n: int, seed: int = 0) -> tuple[list, np.ndarray, np.ndarray]:
    """Light jets, b-jets, electrons, muons (in ``RMMConfig()`` order) and MET of n events."""
    rng = np.random.default_rng(seed)
    n_jets = np.minimum(rng.poisson(2.2, n), 9)
    event_of_jet = np.repeat(np.arange(n), n_jets)
    n_j = len(event_of_jet)
    jet_pt = 20.0 + rng.exponential(40.0, n_j)
    jet_eta = rng.uniform(-2.8, 2.8, n_j)
    jet_phi = rng.uniform(-np.pi, np.pi, n_j)
    jet_m = jet_pt * rng.uniform(0.05, 0.15, n_j)
    is_b = rng.random(n_j) < 0.2

    flavour = rng.choice(3, size=n, p=[0.45, 0.45, 0.10])  # ee, mumu, emu
    n_ele = np.select([flavour == 0, flavour == 1], [2, 0], 1)
    n_muo = 2 - n_ele
    collections = []
    for mask in (~is_b, is_b):
        counts = np.bincount(event_of_jet[mask], minlength=n)
        collections.append(_jagged(counts, jet_pt[mask], jet_eta[mask], jet_phi[mask], jet_m[mask]))
    for counts, mass in ((n_ele, _ELECTRON_MASS), (n_muo, _MUON_MASS)):
        k = int(counts.sum())
        eta = np.clip(rng.normal(0.0, 1.1, k), -2.47, 2.47)
        pt = 25.0 + rng.exponential(30.0, k)
        collections.append(_jagged(counts, pt, eta, rng.uniform(-np.pi, np.pi, k), np.full(k, mass)))
    met_et = rng.exponential(40.0, n) * (rng.random(n) > 0.01)
    met_phi = rng.uniform(-np.pi, np.pi, n)
    return collections, met_et, met_phi


def _padded(jagged, count: int) -> tuple[np.ndarray, ...]:
    """(n, count) arrays of pt, eta, phi, mass sorted by pT descending, and a presence mask."""
    n = jagged.n_events
    event = jagged.event_index()
    pt = np.asarray(jagged["pt"], dtype=np.float64)
    order = np.lexsort((-pt, event))
    rank = np.arange(len(order)) - (jagged.offsets[:-1] - jagged.offsets[0])[event[order]]
    keep = rank < count
    rows, cols, src = event[order][keep], rank[keep], order[keep]
    out = []
    for name in ("pt", "eta", "phi", "mass"):
        arr = np.zeros((n, count))
        arr[rows, cols] = np.asarray(jagged[name], dtype=np.float64)[src]
        out.append(arr)
    present = np.zeros((n, count), dtype=bool)
    present[rows, cols] = True
    return (*out, present)


def numpy_rmm(objects, met_et: np.ndarray, met_phi: np.ndarray, cfg, block: int = 8192) -> np.ndarray:
    """The same cells as ``build_rmm``, in numpy with the textbook four-vector formulas."""
    size = cfg.size
    padded = [_padded(j, o.count) for j, o in zip(objects, cfg.objects, strict=True)]
    pt, eta, phi, mass, present = (np.concatenate(parts, axis=1) for parts in zip(*padded, strict=True))
    first = np.concatenate([np.arange(o.count) == 0 for o in cfg.objects])
    scale = cfg.sqrt_s_gev if cfg.normalize == "sqrt_s" else 1.0
    chekanov = cfg.convention == "chekanov"
    out = np.empty((len(met_et), size * size), dtype=np.float32)
    for lo in range(0, len(met_et), block):
        s = slice(lo, lo + block)
        p, m, ok = pt[s], mass[s], present[s]
        px, py, pz = p * np.cos(phi[s]), p * np.sin(phi[s]), p * np.sinh(eta[s])
        e = np.sqrt(p**2 + pz**2 + m**2)
        e_t = np.sqrt(m**2 + p**2)
        y = np.where(ok, 0.5 * np.log(np.where(ok, e + pz, 1.0) / np.where(ok, e - pz, 1.0)), 0.0)
        met = met_et[s]
        mpx, mpy = met * np.cos(met_phi[s]), met * np.sin(met_phi[s])
        rmm = np.zeros((len(p), size, size))
        rmm[:, 0, 0] = met / scale
        if chekanov:
            mt2 = (e_t + met[:, None]) ** 2 - (px + mpx[:, None]) ** 2 - (py + mpy[:, None]) ** 2
            mt = np.where(met[:, None] > 0, np.sqrt(np.maximum(mt2, 0.0)), 0.0)
            prev = np.roll(e_t, 1, axis=1)
            delta = (prev - e_t) / np.where(ok, prev + e_t, 1.0)
        else:
            mt = e_t
            prev = np.roll(p, 1, axis=1)
            delta = (prev - p) / np.where(ok, prev + p, 1.0)
        rmm[:, 0, 1:] = np.where(ok, mt / scale, 0.0)
        rmm[:, 1:, 0] = np.where(ok, cfg.C * (np.cosh(y) - 1.0), 0.0)
        diag = np.where(first, e_t / scale, delta)
        idx = np.arange(1, size)
        rmm[:, idx, idx] = np.where(ok, diag, 0.0)
        pair = ok[:, :, None] & ok[:, None, :]
        m2 = ((e[:, :, None] + e[:, None, :]) ** 2 - (px[:, :, None] + px[:, None, :]) ** 2
              - (py[:, :, None] + py[:, None, :]) ** 2 - (pz[:, :, None] + pz[:, None, :]) ** 2)
        mij = np.where(pair, np.sqrt(np.maximum(m2, 0.0)) / scale, 0.0)
        hij = np.where(pair, cfg.C * (np.cosh(0.5 * (y[:, :, None] - y[:, None, :])) - 1.0), 0.0)
        upper = np.triu(np.ones((size - 1, size - 1), dtype=bool), 1)
        rmm[:, 1:, 1:] += np.where(upper, mij, 0.0) + np.where(upper.T, hij, 0.0)
        out[s] = rmm.reshape(len(p), -1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=200_000, help="events per build_rmm call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--convention", choices=["chekanov", "thesis"], default="chekanov")
    args = parser.parse_args()

    from megaset.config import RMMConfig
    from megaset.pipeline.rmm import build_rmm

    cfg = RMMConfig(convention=args.convention)
    batches, met_batches = [], []
    for b, lo in enumerate(range(0, args.events, args.batch)):
        objects, met_et, met_phi = synthetic_events(min(args.batch, args.events - lo), args.seed + b)
        batches.append(objects)
        met_batches.append((met_et, met_phi))
    n_obj = sum(len(j["pt"]) for objs in batches for j in objs)
    print(f"{args.events:,} events in {len(batches)} batches, {n_obj / args.events:.2f} objects/event, "
          f"{cfg.size}x{cfg.size} cells ({cfg.convention})")

    t0 = time.perf_counter()
    build_rmm(batches[0], *met_batches[0], cfg)  # compile, or load numba's on-disk cache
    print(f"first call (compile or cache load + one batch): {time.perf_counter() - t0:.2f} s")

    # Batch by batch, results dropped after the comparison: memory stays at a few batches, as
    # in ingest, where each chunk's matrix is written out and freed.
    kernel_s = numpy_s = 0.0
    for objects, (met_et, met_phi) in zip(batches, met_batches, strict=True):
        t0 = time.perf_counter()
        got = build_rmm(objects, met_et, met_phi, cfg)
        t1 = time.perf_counter()
        want = numpy_rmm(objects, met_et, met_phi, cfg)
        numpy_s += time.perf_counter() - t1
        kernel_s += t1 - t0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        del got, want
    kernel_rate, numpy_rate = args.events / kernel_s, args.events / numpy_s

    print(f"{'implementation':<34}{'events/s':>14}")
    print(f"{'build_rmm (numba, 1 core)':<34}{kernel_rate:>14,.0f}")
    print(f"{'numpy baseline (1 core)':<34}{numpy_rate:>14,.0f}")
    print(f"speed-up: {kernel_rate / numpy_rate:.1f}x; outputs agree cell by cell")


if __name__ == "__main__":
    main()
