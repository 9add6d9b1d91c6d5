from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from recording import Recording

from megaset.errors import CheckpointError, ConfigError
from megaset.storage.store import open_store
from megaset.training.loader import ChunkDataset, _in_background
from megaset.training.scaling import Scaling


@pytest.fixture(scope="module")
def train(tiny_store):
    store = open_store(tiny_store.store.url)
    group = store.group("train")
    scaling = Scaling.from_scaler(store.scaler)
    chunks = [group.read_chunk(i) for i in range(group.n_chunks)]
    rows = {scaling(c["rmm"])[j].tobytes(): i for i, c in enumerate(chunks) for j in range(len(c["weight"]))}
    return group, scaling, chunks, rows


def _rows(batches) -> np.ndarray:
    return torch.cat([x for x, _ in batches]).numpy()


def _sorted(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_one_shard_yields_every_scaled_event_once(train):
    group, scaling, chunks, _ = train
    ds = ChunkDataset(group, batch_size=50, scaling=scaling, seed=3, shuffle_chunks=3)
    batches = list(ds)
    assert [len(w) for _, w in batches] == [50] * 15 + [18]  # 768 events
    expected = np.concatenate([scaling(c["rmm"]) for c in chunks])
    np.testing.assert_array_equal(_sorted(_rows(batches)), _sorted(expected))
    weights = torch.cat([w for _, w in batches]).numpy()
    np.testing.assert_array_equal(np.sort(weights), np.sort(np.concatenate([c["weight"] for c in chunks])))


@pytest.mark.parametrize("n_shards", [2, 3, 5])
def test_shards_read_disjoint_chunks_and_yield_equal_batch_counts(train, n_shards):
    group, scaling, chunks, rows = train
    ds = ChunkDataset(group, batch_size=40, scaling=scaling, seed=1, shuffle_chunks=2)
    sizes = [len(c["weight"]) for c in chunks]
    seen, counts, reads = [], [], []
    for shard in range(n_shards):
        ds.set_epoch(4)
        rec = Recording(group)
        ds.group = rec
        batches = list(ds.iter_shard(shard, n_shards))
        counts.append(len(batches))
        reads.append(sorted(rec.reads))
        seen.append(_rows(batches))
    flat = sorted(c for r in reads for c in r)
    assert flat == list(range(len(chunks)))  # disjoint, and together every chunk once
    rows_per_shard = [sum(sizes[c] for c in r) for r in reads]
    assert counts == [min(-(-n // 40) for n in rows_per_shard)] * n_shards
    every = np.concatenate(seen)
    assert len({r.tobytes() for r in every}) == len(every)  # no event twice
    for shard, r in enumerate(reads):  # each shard's events come from its own chunks
        assert {rows[x.tobytes()] for x in seen[shard]} <= set(r)


def test_permutation_is_seeded_by_seed_and_epoch(train):
    group, scaling, _, _ = train

    def first_epoch_rows(seed, epoch):
        ds = ChunkDataset(group, batch_size=64, scaling=scaling, seed=seed)
        ds.set_epoch(epoch)
        return _rows(ds)

    a = first_epoch_rows(7, 2)
    np.testing.assert_array_equal(a, first_epoch_rows(7, 2))
    assert not np.array_equal(a, first_epoch_rows(7, 3))
    assert not np.array_equal(a, first_epoch_rows(8, 2))


def test_a_full_pass_advances_the_epoch(train):
    group, scaling, _, _ = train
    ds = ChunkDataset(group, batch_size=64, scaling=scaling, seed=7)
    first = _rows(ds)
    assert ds.epoch == 1
    second = _rows(ds)
    ds.set_epoch(1)
    np.testing.assert_array_equal(second, _rows(ds))
    assert not np.array_equal(first, second)


def test_rows_of_a_window_are_shuffled_across_its_chunks(train):
    group, scaling, _, rows = train
    ds = ChunkDataset(group, batch_size=64, scaling=scaling, seed=0, shuffle_chunks=3)
    x, _ = next(iter(ds))
    assert len({rows[r.tobytes()] for r in x.numpy()}) == 3
    unshuffled = ChunkDataset(group, batch_size=64, scaling=scaling, shuffle=False)
    x, _ = next(iter(unshuffled))
    np.testing.assert_array_equal(x.numpy(), scaling(group.read_chunk(0)["rmm"]))


def test_read_ahead_is_bounded_and_runs_in_reader_threads(train):
    group, scaling, _, _ = train
    rec = Recording(group)
    ds = ChunkDataset(rec, batch_size=16, scaling=scaling, read_ahead=2, shuffle_chunks=2, threads=2)
    it = iter(ds)
    next(it)
    # The first window (2 chunks) and 2 chunks ahead, not the 12 chunks of the group.
    assert len(rec.reads) <= 4
    list(it)
    assert sorted(rec.reads) == list(range(12))
    assert rec.threads and all(t.startswith("megaset-read") for t in rec.threads)


class _Failing(Recording):
    def read_chunk(self, i, columns=("rmm", "weight"), compact=()):
        if i == 5:
            msg = f"chunk {i} of group 'train' cannot be read"
            raise OSError(msg)
        return super().read_chunk(i, columns, compact)


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_on_the_cpu_the_consumer_assembles_and_a_stop_ends_the_readers(train):
    group, scaling, _, _ = train
    ds = ChunkDataset(group, batch_size=16, scaling=scaling, read_ahead=2, shuffle_chunks=2)
    it = ds.iter_shard(0, 1)
    next(it)
    assert "megaset-batches" not in _threads()  # no thread competes with torch's for the cores
    assert any(t.startswith("megaset-read") for t in _threads())
    it.close()
    assert not any(t.startswith("megaset-read") for t in _threads())
    assert ds.state_dict()["position"] == 1

    failing = ChunkDataset(_Failing(group), batch_size=16, scaling=scaling, shuffle=False)
    with pytest.raises(OSError, match="chunk 5 of group 'train' cannot be read"):
        list(failing)
    assert not any(t.startswith("megaset-read") for t in _threads())


def test_batches_made_ahead_in_a_thread_end_with_the_consumer_and_raise_in_it():
    made = []

    def items():
        for i in range(10):
            made.append(i)
            yield i

    it = _in_background(items(), depth=2)
    assert next(it) == 0
    assert "megaset-batches" in _threads()
    it.close()
    assert "megaset-batches" not in _threads()
    assert len(made) <= 4  # the one taken, two queued, one waiting to be queued

    def failing():
        yield 1
        msg = "chunk 5 of group 'train' cannot be read"
        raise OSError(msg)

    with pytest.raises(OSError, match="chunk 5 of group 'train' cannot be read"):
        list(_in_background(failing(), depth=2))
    assert "megaset-batches" not in _threads()


def test_resume_mid_epoch_continues_exactly_without_rereading(train):
    group, scaling, _, _ = train
    options = {"batch_size": 48, "scaling": scaling, "seed": 5, "shuffle_chunks": 2}
    ds = ChunkDataset(group, **options)
    ds.set_epoch(2)
    full = list(ds.iter_shard(0, 1))
    ds.set_epoch(2)
    it = ds.iter_shard(0, 1)
    head = [next(it) for _ in range(7)]  # 336 events: windows of 128 events, 2 fully consumed
    state = ds.state_dict()
    assert (state["epoch"], state["position"]) == (2, 7)
    rec = Recording(group)
    resumed = ChunkDataset(rec, **options)
    resumed.load_state_dict(state)
    tail = list(resumed.iter_shard(0, 1))
    assert len(head) + len(tail) == len(full) == 16
    for (x, w), (x2, w2) in zip(full, head + tail, strict=True):
        assert torch.equal(x, x2) and torch.equal(w, w2)
    order = ds.assignment(1)[0]
    assert sorted(rec.reads) == sorted(order[4:].tolist())  # the first two windows are skipped
    assert resumed.epoch == 3


def _equal(batches, others) -> bool:
    pairs = zip(batches, others, strict=True)
    return all(torch.equal(x, x2) and torch.equal(w, w2) for (x, w), (x2, w2) in pairs)


def test_later_epochs_take_the_cached_pieces_and_yield_the_same_batches(train):
    group, _, chunks, _ = train
    # Standard scaling maps an absent (zero) cell to a value of its own, which the cached and
    # densified rows must hold as the dense rows scaled in numpy do.
    scaling = Scaling.from_scaler(open_store(group.url).scaler, "standard")
    options = {"batch_size": 40, "scaling": scaling, "seed": 6, "shuffle_chunks": 3}
    rec = Recording(group)
    cached = ChunkDataset(rec, **options, cache_mib=16)
    first = list(cached)
    assert sorted(rec.reads) == list(range(12))
    expected = np.concatenate([scaling(c["rmm"]) for c in chunks])
    np.testing.assert_array_equal(_sorted(_rows(first)), _sorted(expected))
    for epoch in (1, 2):
        plain = ChunkDataset(group, **options)
        plain.set_epoch(epoch)
        assert _equal(list(cached), list(plain))
    assert sorted(rec.reads) == list(range(12))  # epochs 1 and 2 read nothing


def test_a_cache_smaller_than_the_group_keeps_the_pieces_first_read(train):
    group, scaling, _, _ = train
    probe = ChunkDataset(group, batch_size=64, scaling=scaling, cache_mib=16, shuffle=False)
    list(probe)
    options = {"batch_size": 64, "scaling": scaling, "seed": 2, "shuffle_chunks": 2}
    rec = Recording(group)
    first = ChunkDataset(group, **options).assignment(1)[0][:4].tolist()  # the first pieces read
    room = sum(probe._cache[c, 0, 64].nbytes for c in first)
    ds = ChunkDataset(rec, **options, cache_mib=room / 2**20)
    list(ds)
    assert sorted(ds._cache) == sorted((c, 0, 64) for c in first)
    assert ds._cached_bytes <= ds.cache_bytes
    del rec.reads[:]
    plain = ChunkDataset(group, **options)
    plain.set_epoch(1)
    assert _equal(list(ds), list(plain))
    assert sorted(rec.reads) == sorted(set(range(12)) - set(first))
    with pytest.raises(ConfigError, match=r"cache_mib \(-1\) must not be negative"):
        ChunkDataset(group, batch_size=64, cache_mib=-1)


def test_load_state_dict_says_what_it_found(train):
    group, _, _, _ = train
    state = ChunkDataset(group, batch_size=32, seed=1).state_dict()
    with pytest.raises(CheckpointError, match=r"batch_size is 32 in the saved state, found 64 instead"):
        ChunkDataset(group, batch_size=64, seed=1).load_state_dict(state)
    other = {**state, "chunk_sizes": state["chunk_sizes"][:-1]}
    with pytest.raises(CheckpointError, match=r"chunk_sizes is 11 chunks, 704 events .* found 12 chunks, 768 events"):
        ChunkDataset(group, batch_size=32, seed=1).load_state_dict(other)


def test_resuming_mid_epoch_with_another_world_size_is_refused(train):
    group, _, _, _ = train
    ds = ChunkDataset(group, batch_size=32, seed=1)
    it = ds.iter_shard(0, 2)
    next(it)
    resumed = ChunkDataset(group, batch_size=32, seed=1)
    resumed.load_state_dict(ds.state_dict())
    with pytest.raises(CheckpointError, match=r"read by 2 shards .*found 3 instead"):
        next(resumed.iter_shard(0, 3))


@pytest.mark.parametrize("n_shards", [13, 24])
def test_more_shards_than_chunks_read_pieces_of_every_chunk_covering_the_group_once(train, n_shards):
    group, scaling, chunks, rows = train
    ds = ChunkDataset(group, batch_size=16, scaling=scaling, seed=2, shuffle_chunks=3)
    assert ds.pieces_per_chunk(n_shards) == n_shards and ds.pieces_per_chunk(12) == 1
    seen, counts = [], []
    for shard in range(n_shards):
        ds.set_epoch(1)
        rec = Recording(group)
        ds.group = rec
        batches = list(ds.iter_shard(shard, n_shards))
        assert sorted(set(rec.reads)) == list(range(12))  # a piece of every chunk
        counts.append(len(batches))
        seen.append(_rows(batches))
    assert len(set(counts)) == 1 and counts[0] >= 1  # every shard trains, on as many batches
    keys = [r.tobytes() for s in seen for r in s]
    assert len(keys) == len(set(keys))  # disjoint
    # The shortest shard's batches only: each shard has 768 / n_shards events, give or take one.
    assert len(keys) >= n_shards * (768 // n_shards - 16)
    assert set(keys) <= set(rows)
    ds.group = group
    ds.equal_batches = False
    together = []
    for shard in range(n_shards):
        ds.set_epoch(1)
        together.append(_rows(ds.iter_shard(shard, n_shards)))
    expected = np.concatenate([scaling(c["rmm"]) for c in chunks])
    np.testing.assert_array_equal(_sorted(np.concatenate(together)), _sorted(expected))  # every event once


def test_more_shards_than_events_is_a_config_error(train):
    group, _, _, _ = train
    ds = ChunkDataset(group, batch_size=32)
    with pytest.raises(ConfigError, match=r"has 768 events, fewer than the 769 ranks .* training.ddp.world_size"):
        next(ds.iter_shard(0, 769))


def _numpy_batches(group, scaling, *, batch_size, seed, epoch, shuffle_chunks, shard, n_shards):
    """The batches as the loader cut them when it scaled and gathered rows in numpy: the chunk
    permutation of (seed, epoch), every n-th chunk per shard, windows shuffled by (seed, epoch,
    first chunk), batches running on across windows, the shortest shard's batch count."""
    n = group.n_chunks
    order = np.random.default_rng((seed, epoch)).permutation(n)
    sizes = [len(group.read_chunk(c)["weight"]) for c in range(n)]
    n_batches = min(-(-sum(sizes[c] for c in order[s::n_shards]) // batch_size) for s in range(n_shards))
    mine = order[shard::n_shards]
    xs, ws = [], []
    for i in range(0, len(mine), shuffle_chunks):
        window = mine[i : i + shuffle_chunks]
        chunks = [group.read_chunk(int(c)) for c in window]
        x = np.concatenate([scaling(c["rmm"]) for c in chunks])
        w = np.concatenate([c["weight"] for c in chunks]).astype(np.float32)
        rows = np.random.default_rng((seed, epoch, int(window[0]))).permutation(len(w))
        xs.append(x[rows])
        ws.append(w[rows])
    x, w = np.concatenate(xs), np.concatenate(ws)
    return [(x[i : i + batch_size], w[i : i + batch_size]) for i in range(0, n_batches * batch_size, batch_size)]


@pytest.mark.parametrize(("batch_size", "shuffle_chunks", "n_shards"), [(48, 3, 1), (50, 1, 2), (64, 4, 3)])
def test_device_side_scaling_gives_the_batches_of_the_numpy_path(train, batch_size, shuffle_chunks, n_shards):
    group, scaling, _, _ = train
    for shard in range(n_shards):
        ds = ChunkDataset(group, batch_size=batch_size, scaling=scaling, seed=4, shuffle_chunks=shuffle_chunks,
                          device=torch.device("cpu"))
        ds.set_epoch(1)
        got = [(x.numpy(), w.numpy()) for x, w in ds.iter_shard(shard, n_shards)]
        expected = _numpy_batches(group, scaling, batch_size=batch_size, seed=4, epoch=1,
                                  shuffle_chunks=shuffle_chunks, shard=shard, n_shards=n_shards)
        assert len(got) == len(expected)
        for (x, w), (x0, w0) in zip(got, expected, strict=True):
            # The same float32 operations in the same order: the same bits, not just close.
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize(("n_shards", "context"), [(1, None), (3, "weight"), (24, None)])
def test_a_store_of_the_csr_form_gives_the_very_batches_of_the_dense_store(train, csr_store, n_shards, context):
    """The same events mixed with store.form csr: the loader reads their cells without dense
    rows, and its batches are those of the dense store bit for bit (24 shards: pieces of chunks)."""
    group, scaling, _, _ = train
    csr = open_store(csr_store.store.url).group("train")
    assert csr.forms == {"rmm": "csr"}
    options = {"batch_size": 16, "scaling": scaling, "seed": 5, "shuffle_chunks": 3, "context": context}
    for shard in range(n_shards):
        got, expected = (list(ChunkDataset(g, **options).iter_shard(shard, n_shards)) for g in (csr, group))
        assert len(got) == len(expected) > 0
        for (x, w), (x0, w0) in zip(got, expected, strict=True):
            assert torch.equal(x, x0) and torch.equal(w, w0)


@pytest.mark.gpu
def test_the_device_path_on_a_gpu_gives_the_cpu_batches_in_the_same_order(train):
    group, scaling, _, _ = train
    options = {"batch_size": 48, "scaling": scaling, "seed": 2, "shuffle_chunks": 3}
    on_cpu = list(ChunkDataset(group, **options).iter_shard(0, 1))
    on_gpu = list(ChunkDataset(group, **options, device="cuda").iter_shard(0, 1))
    assert len(on_gpu) == len(on_cpu)
    for (x, w), (x0, w0) in zip(on_gpu, on_cpu, strict=True):
        assert x.device.type == "cuda" and w.device.type == "cuda"
        torch.testing.assert_close(x.cpu(), x0, rtol=1e-6, atol=1e-7)
        assert torch.equal(w.cpu(), w0)


def test_a_context_column_follows_the_densified_features_unscaled(train):
    group, scaling, _, _ = train
    options = {"batch_size": 40, "scaling": scaling, "seed": 6, "shuffle_chunks": 2}
    plain = list(ChunkDataset(group, **options))
    with_context = list(ChunkDataset(group, **options, context="weight"))
    assert len(with_context) == len(plain)
    for (x, w), (x0, w0) in zip(with_context, plain, strict=True):
        assert x.shape == (len(w), x0.shape[1] + 1)
        assert torch.equal(x[:, :-1], x0) and torch.equal(x[:, -1], w) and torch.equal(w, w0)


def test_a_model_trained_on_the_loader_is_the_model_trained_on_dense_numpy_batches(train):
    """The loader moves the non-zero cells and densifies them: training on its batches gives
    the very parameters that training on the dense rows scaled in numpy gives."""
    from megaset.config import TrainingConfig
    from megaset.training.loop import train_epoch
    from megaset.training.registry import build_model

    group, scaling, _, _ = train
    cfg = TrainingConfig()
    options = {"batch_size": 64, "seed": 9, "epoch": 0, "shuffle_chunks": 2, "shard": 0, "n_shards": 1}

    def trained(batches):
        torch.manual_seed(0)
        model = build_model("ae-shallow", group.column_info("rmm")["shape"][1], cfg.architecture)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train_epoch(model, optimizer, batches, cfg, 1.0, torch.device("cpu"))
        return model.state_dict()

    loader = ChunkDataset(group, batch_size=64, scaling=scaling, seed=9, shuffle_chunks=2)
    dense = [(torch.from_numpy(x.copy()), torch.from_numpy(w.copy()))
             for x, w in _numpy_batches(group, scaling, **options)]
    got, expected = trained(loader), trained(dense)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
