"""Which device a DDP rank takes: its index among the ranks on its host, over that host's GPUs."""

from __future__ import annotations

from megaset.training.ddp import local_ranks, rank_device


def test_ranks_are_numbered_per_host_in_rank_order():
    workers = ["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002", "tcp://10.1.2.3:9000",
               "tcp://127.0.0.1:40003", "tcp://10.1.2.3:9001"]
    assert local_ranks(workers) == [0, 1, 0, 2, 1]


def test_ranks_of_one_host_take_its_gpus_in_turn():
    # Four ranks of a local cluster on a box of four GPUs: one GPU each, not all cuda:0.
    assert [rank_device(True, k, 4) for k in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [rank_device(True, k, 2) for k in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    # A worker that sees only its own GPU (CUDA_VISIBLE_DEVICES set per pod or slot) takes it.
    assert rank_device(True, 3, 1) == "cuda:0"


def test_gloo_ranks_and_machines_without_gpus_stay_on_the_cpu():
    assert rank_device(False, 1, 4) == "cpu"
    assert rank_device(True, 0, 0) == "cpu"
