"""The engine's worker threads run torch ops on one intra-op thread; the caller keeps its count."""

from concurrent.futures import ThreadPoolExecutor

import torch

from gradreg.ensemble.plan import on_one_thread, single_threaded_ops


def test_workers_single_threaded_and_caller_restored():
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with single_threaded_ops(), ThreadPoolExecutor(max_workers=2) as pool:
            seen = list(pool.map(on_one_thread(lambda _: torch.get_num_threads()), range(8)))
        assert seen == [1] * 8
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
