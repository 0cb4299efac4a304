"""TaskPool: independent pieces side by side as Ray tasks (one CPU, one torch thread each), in order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from fedsim.fanout import LOCAL_MIN_CORES, TaskPool, task_pool


def where(i: int) -> tuple[int, int, int]:
    return i, os.getpid(), torch.get_num_threads()


def fails(i: int, done: str) -> int:
    if i == 1:
        raise ValueError(f"piece {i} failed")
    time.sleep(1.0)
    Path(done, str(i)).touch()
    return i


def test_pieces_run_as_one_thread_ray_tasks_in_order(tmp_path):
    with task_pool(cpus=4) as pool:  # a private Ray of 4 logical CPUs, whatever this machine has
        out = pool.map(where, [(i,) for i in range(4)])
        assert pool.slots == 4
        with pytest.raises(ValueError, match="piece 1 failed"):  # the piece's own exception, not Ray's wrapper
            pool.map(fails, [(i, str(tmp_path)) for i in range(3)])
        # the others finished, never force-cancelled (a forced cancel racing a reply aborts Ray's driver)
        assert sorted(f.name for f in tmp_path.iterdir()) == ["0", "2"]
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert all(pid != os.getpid() and threads == 1 for _, pid, threads in out)
    import ray

    assert not ray.is_initialized()  # the pool stopped the Ray it started


def test_one_piece_or_few_cores_stay_in_process():
    for cpus in (1, LOCAL_MIN_CORES - 1):  # too few cores for a private Ray to pay
        pool = TaskPool(cpus=cpus)
        assert [pid for _, pid, _ in pool.map(where, [(0,), (1,)])] == [os.getpid()] * 2 and pool.slots == 0
    pool = TaskPool(cpus=4)
    assert pool.map(where, [(0,)])[0][1] == os.getpid() and pool.slots == 0  # Ray never started
