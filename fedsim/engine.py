"""The one module that touches Flower's simulation entry point.

It starts (or joins) Ray through fedsim.ray_setup: a private local instance by default,
`resources.ray_address` when asked (or the cluster of the Ray job it runs in), and turns any failure
into :class:`EngineError` once Ray is shut down. Ray is started here rather than by Flower so that the
cluster can be checked first: a client no node could ever hold fails at once with the resource
named, a cluster with no room waits its turn for a bounded time, and Flower's actor pool is sized
from what is free (Flower sizes it from the cluster's total, which leaves actors pending forever on
a busy cluster).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.ray_setup import EngineError, backend_config, cluster_address, init_ray, quiet_logs
from fedsim.scenario import ResourcesConfig

__all__ = ["EngineError", "backend_config", "cluster_address", "pool_size", "run_federation", "start_ray"]

RELEASE_GRACE_S = 10.0  # how long a run with some room waits for the rest (a finished run's actors)


def pool_size(client: dict[str, float], nodes: list[dict], free: dict[str, float], num_clients: int) -> int:
    """How many client actors to start: what one node can hold, summed over nodes (Flower's rule),
    capped by the resources free now and by the number of clients; raise when that is none."""
    cpus, gpus = client["num_cpus"], client.get("num_gpus", 0.0)
    fits = 0
    for node in nodes:
        have = node.get("Resources") or {}
        n = int(have.get("CPU", 0) / cpus)
        if gpus > 0:
            n = min(n, int(have.get("GPU", 0) / gpus))
        fits += n
    if fits == 0:
        most_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
        most_gpus = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
        if gpus > 0 and most_gpus < gpus:
            missing = f"resources.num_gpus: {gpus:g} GPU per client, but the largest node has {most_gpus:g}"
        elif most_cpus < cpus:
            missing = f"resources.num_cpus: {cpus:g} CPU per client, but the largest node has {most_cpus:g}"
        else:
            missing = f"resources: no node has both {cpus:g} CPU and {gpus:g} GPU for one client"
        raise EngineError(f"{missing}: no node can hold a client")
    free_now = math.floor(free.get("CPU", 0) / cpus + 1e-9)
    if gpus > 0:
        free_now = min(free_now, math.floor(free.get("GPU", 0) / gpus + 1e-9))
    if free_now == 0:
        raise EngineError(f"the Ray cluster has no room for a client now ({cpus:g} CPU, {gpus:g} GPU each; free: "
                          f"{free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU): other work holds it")
    return max(1, min(fits, free_now, num_clients))


@contextlib.contextmanager
def _actor_pool_of(size: int) -> Iterator[None]:
    """Make Flower build an actor pool of `size` (a wrapper over its sizing function, restored after)."""
    from flwr.simulation.ray_transport import ray_actor

    original = ray_actor.pool_size_from_resources
    ray_actor.pool_size_from_resources = lambda _resources: size
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = original


def poll_interval(nodes: int) -> float:
    """How often Flower's in-memory messaging looks for new messages: 5 ms for a few nodes, up to its
    own 0.1 s for 500 and more (each look visits every node)."""
    return max(0.005, min(0.1, 0.0002 * nodes))


@contextlib.contextmanager
def _prompt_messaging(nodes: int) -> Iterator[None]:
    """Shorten the two 0.1 s polls of Flower's simulation (the server pulling replies, the engine
    picking up instructions for the nodes): each round waited for both, twice (train and evaluate).
    A wrapper over Flower's grid and its message-pickup loop, restored after; Flower as it is where
    either has moved."""
    from queue import Queue

    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:
        yield
        return
    interval, init = poll_interval(nodes), InMemoryGrid.__init__
    pickup = getattr(vce_api, "add_messages_to_queue", None)

    def grid_init(self: InMemoryGrid, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.pull_interval = interval

    def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: Any, f_stop: threading.Event) -> None:
        while not f_stop.is_set():  # Flower's loop, with `interval` for its 0.1 s wait
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(interval)

    InMemoryGrid.__init__ = grid_init
    if pickup is not None:
        vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        InMemoryGrid.__init__ = init
        if pickup is not None:
            vce_api.add_messages_to_queue = pickup


def start_ray(config: dict, num_clients: int, *, wait_s: float = 60.0) -> dict:
    """Start (or join) Ray as Flower would and check the cluster can hold the clients; return what
    was joined: {'cluster': the address or 'local', 'nodes', 'cpus', 'gpus', 'actors' (the pool size)}.

    On a cluster with no room free (other runs, a sweep's other points) it waits up to `wait_s` for
    some; with some room it waits a moment for the rest, then takes what is free."""
    import ray

    address = init_ray(config["init_args"])
    nodes = [n for n in ray.nodes() if n.get("Alive", True) and n.get("Resources")]
    total = ray.cluster_resources()
    client = config["client_resources"]
    fits = pool_size(client, nodes, total, num_clients)  # raises at once when no node could ever hold a client
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        try:
            actors = pool_size(client, nodes, ray.available_resources(), num_clients)
        except EngineError:  # no room at all: wait for it (a queue of runs), up to wait_s
            if waited > wait_s or not _busy(total):
                raise
        else:  # some room: take it, after a moment for a just-ended run's actors to be released
            if actors >= fits or waited > RELEASE_GRACE_S:
                break
        time.sleep(0.5)
    return {"cluster": address, "nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0),
            "actors": actors}


def _busy(total: dict[str, float]) -> bool:
    import ray

    free = ray.available_resources()
    return any(free.get(k, 0.0) < v for k, v in total.items() if k in ("CPU", "GPU"))


@contextlib.contextmanager
def _hung_clients_stopped(server_done: threading.Event | None) -> Iterator[None]:
    """Once the server is done, stop the client actors still busy (a client that hung past its round's
    timeout): Flower would wait for them before it returns. A wrapper over the actor pool Flower's Ray
    backend builds (it records the pool), restored after; Flower as it is where that has moved."""
    try:
        from flwr.server.superlink.fleet.vce.backend import raybackend
    except ImportError:
        raybackend = None
    if server_done is None or not hasattr(raybackend, "BasicActorPool"):
        yield
        return
    import ray

    pools: list[Any] = []
    original = raybackend.BasicActorPool

    class RecordedPool(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    def stop_busy() -> None:
        server_done.wait()
        for pool in pools:
            for actor in list(getattr(pool, "_future_to_actor", {}).values()):
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    raybackend.BasicActorPool = RecordedPool
    threading.Thread(target=stop_busy, daemon=True, name="fedsim-stop-hung-clients").start()
    try:
        yield
    finally:
        raybackend.BasicActorPool = original
        server_done.set()


def run_federation(
    *, server_app: ServerApp, client_app: ClientApp, num_clients: int, resources: ResourcesConfig,
    log_file: Path | None = None, on_start: Callable[[dict], None] = lambda _: None,
    server_done: threading.Event | None = None,
) -> None:
    """Run the apps on Flower's simulation engine with the Ray backend; raise EngineError on failure.

    `on_start` gets what was joined (see start_ray) before the first client starts; `server_done`,
    set by the server app when it ends, stops clients that still hang then."""
    import ray
    from flwr.simulation import run_simulation

    quiet_logs(log_file)
    if not cluster_address(resources):
        os.environ.pop("RAY_ADDRESS", None)
    config = backend_config(resources)
    try:
        joined = start_ray(config, num_clients, wait_s=resources.start_timeout(num_clients))
        on_start(joined)
        with _actor_pool_of(joined["actors"]), _prompt_messaging(num_clients), _hung_clients_stopped(server_done):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_name="ray",
                backend_config=config,
            )
    except EngineError:
        raise
    except Exception as exc:  # Flower wraps client-engine crashes; the server's own error is re-raised
        cause = exc.__cause__ or exc
        raise EngineError(f"{type(cause).__name__}: {cause}") from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
