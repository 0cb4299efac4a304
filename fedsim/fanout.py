"""Independent pieces of work (membership shadow models) as Ray tasks, when there is room for more than one.

A run's clients already train on Ray; the work after the federation (an attack's shadow models) ran
one after another in the driver. A TaskPool runs such pieces side by side, one CPU each, on the
scenario's cluster (`resources.ray_address`, or the cluster of the Ray job this runs in) or on a
private local Ray over this machine's cores when it has at least LOCAL_MIN_CORES of them, and
in-process, one after another, otherwise. Ray starts on the first map that needs it and stops when
the pool closes.
A piece that raises raises the same exception in the caller, as it would have in-process, once the
pieces already running have finished.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedsim.ray_setup import local_cpus
from fedsim.scenario import ResourcesConfig

LOCAL_MIN_CORES = 4  # below this a private Ray is not worth starting: on 2 cores two one-thread tasks
# trained no faster than one two-thread process (docs/results.md, "Work that fans out")


def _one_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a piece with one torch thread: its task holds one CPU, and threads would fight over it."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


class TaskPool:
    """Runs `fn(*args)` for each args tuple, as Ray tasks where more than one fits at once."""

    def __init__(self, resources: ResourcesConfig | None = None, *, cpus: int | None = None) -> None:
        self.resources = resources or ResourcesConfig()
        self._cpus = cpus  # tests: the size of a private pool (default: this machine's cores)
        self._started = False
        self._remote: Any = None
        self._in_process = False  # a private Ray failed to start: never try again
        self.slots = 0  # pieces that can run at once (0 until Ray has been started or joined)

    def _start(self) -> None:
        import ray

        from fedsim.ray_setup import backend_config, init_ray, quiet_logs

        quiet_logs()
        init_args = backend_config(self.resources, total_cpus=self._cpus)["init_args"]
        if init_args["address"] == "local":
            os.environ.pop("RAY_ADDRESS", None)
        if not ray.is_initialized():
            init_ray(init_args)
            self._started = True
        self.slots = int(ray.cluster_resources().get("CPU", 1))

    def _fits_more_than_one(self) -> bool:
        from fedsim.ray_setup import EngineError, cluster_address

        if self.slots or self._in_process:
            return self.slots > 1
        if cluster_address(self.resources):
            self._start()  # a cluster's size is known once joined; one that cannot be joined is an error
        elif (self._cpus or local_cpus()) >= LOCAL_MIN_CORES:
            try:
                self._start()
            except EngineError:  # a private Ray that will not start: the work runs here, as on fewer cores
                self._in_process = True
        return self.slots > 1

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """[fn(*args) for args in calls], in order; side by side when more than one piece fits at once.

        `fn` must be importable by name (a module-level function): Ray's workers import it."""
        if len(calls) < 2 or not self._fits_more_than_one():
            return [fn(*args) for args in calls]
        import ray

        if self._remote is None:
            self._remote = ray.remote(num_cpus=1)(_one_thread)
        refs = [self._remote.remote(fn, *args) for args in calls]
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as exc:  # a piece raised, or its worker died
            # The others are left to finish, never cancelled: a forced cancel racing a task's own reply
            # aborts the driver inside Ray 2.55 (task_manager.cc "Tried to complete task that was not
            # pending"), which would take the whole run and every result not yet written with it.
            ray.wait(refs, num_returns=len(refs))
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self.slots, self._remote = 0, None


@contextlib.contextmanager
def task_pool(resources: ResourcesConfig | None = None, *, cpus: int | None = None) -> Iterator[TaskPool]:
    """A TaskPool that shuts down the Ray it started on exit."""
    pool = TaskPool(resources, cpus=cpus)
    try:
        yield pool
    finally:
        pool.close()
