"""The one module that touches Flower's simulation entry point and Ray.

It starts a private local Ray instance by default (never silently joining a cluster that happens to
be running), joins `resources.ray_address` when asked (or the cluster of the Ray job it runs in),
keeps Ray's and Flower's chatter out of the terminal, and turns any failure into
:class:`EngineError` once Ray is shut down. Ray is started here rather than by Flower so that the
cluster can be checked first: a client no node could ever hold fails at once with the resource
named, a cluster with no room waits its turn for a bounded time, and Flower's actor pool is sized
from what is free (Flower sizes it from the cluster's total, which leaves actors pending forever on
a busy cluster).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.scenario import RAY_ADDRESS, ResourcesConfig

IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the job's entry point
REACH_TIMEOUT_S = 5.0
RELEASE_GRACE_S = 10.0  # how long a run with some room waits for the rest (a finished run's actors)


class EngineError(RuntimeError):
    """The simulation failed; the message says why in one line."""


def backend_config(resources: ResourcesConfig, *, total_cpus: int | None = None,
                   local_gpus: int | None = None) -> dict:
    """Flower's backend_config for the Ray backend, from the scenario's `resources` section.

    On a private local Ray, GPU fractions are only requested when this machine has a GPU: a
    request Ray can never grant would leave the clients unscheduled."""
    init_args: dict = {"logging_level": logging.ERROR, "log_to_driver": False}
    num_gpus = resources.num_gpus
    address = cluster_address(resources)
    if address:
        init_args["address"] = address  # Ray refuses num_cpus / num_gpus when connecting
    else:
        init_args["include_dashboard"] = False
        init_args["address"] = "local"  # a private instance, even if a cluster is running here
        init_args["num_cpus"] = total_cpus or os.cpu_count() or 1
        if num_gpus > 0:
            if local_gpus is None:
                import torch

                local_gpus = torch.cuda.device_count()
            init_args["num_gpus"] = local_gpus
            num_gpus = num_gpus if local_gpus > 0 else 0.0
    return {
        "client_resources": {"num_cpus": resources.num_cpus, "num_gpus": num_gpus},
        "init_args": init_args,
    }


def cluster_address(resources: ResourcesConfig) -> str | None:
    """The cluster to join: `resources.ray_address`, else the one of the Ray job this runs in, else none."""
    if resources.ray_address:
        return resources.ray_address
    if IN_RAY_JOB in os.environ and os.environ.get("RAY_ADDRESS"):
        return "auto"
    return None


def check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail fast with the address named when nothing answers there (Ray itself retries for a minute)."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not re.fullmatch(RAY_ADDRESS, target):
        return  # auto without RAY_ADDRESS: Ray looks for a cluster started on this machine
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise EngineError(f"resources.ray_address: cannot reach the Ray cluster at {target} ({reason})") from exc


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


def start_ray(config: dict, num_clients: int, *, wait_s: float = 60.0) -> dict:
    """Start (or join) Ray as Flower would and check the cluster can hold the clients; return what
    was joined: {'cluster': the address or 'local', 'nodes', 'cpus', 'gpus', 'actors' (the pool size)}.

    On a cluster with no room free (other runs, a sweep's other points) it waits up to `wait_s` for
    some; with some room it waits a moment for the rest, then takes what is free."""
    import ray

    address = config["init_args"].get("address")
    if address != "local":
        check_reachable(address)
    paths = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))  # once each, in order
    os.environ["PYTHONPATH"] = pythonpath  # Ray workers import fedsim and plug-in files as the driver does
    # a private instance's workers inherit this environment; a cluster's get it as a runtime env
    # (which costs each new worker a trip through Ray's runtime-env agent)
    runtime_env = {} if address == "local" else {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    try:
        ray.init(**runtime_env, **config["init_args"])
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray" if address == "local" else f"join the Ray cluster at {address}"
        key = "resources" if address == "local" else "resources.ray_address"
        raise EngineError(f"{key}: cannot {where}: {exc}") from exc
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


def quiet_logs(log_file: Path | None = None) -> None:
    """Flower logs every step at INFO and Ray prints its own banner; fedsim prints one line a round.

    Flower's own log (with any traceback) goes to `log_file` instead of the terminal."""
    logger = logging.getLogger("flwr")
    logger.propagate = False  # Opacus calls logging.basicConfig on import: the root logger would print it all
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL + 1)
        else:
            logger.removeHandler(handler)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*run_simulation.*")


def run_federation(
    *, server_app: ServerApp, client_app: ClientApp, num_clients: int, resources: ResourcesConfig,
    log_file: Path | None = None, on_start: Callable[[dict], None] = lambda _: None,
) -> None:
    """Run the apps on Flower's simulation engine with the Ray backend; raise EngineError on failure.

    `on_start` gets what was joined (see start_ray) before the first client starts."""
    import ray
    from flwr.simulation import run_simulation

    quiet_logs(log_file)
    if not cluster_address(resources):
        os.environ.pop("RAY_ADDRESS", None)
    config = backend_config(resources)
    try:
        joined = start_ray(config, num_clients, wait_s=resources.start_timeout(num_clients))
        on_start(joined)
        with _actor_pool_of(joined["actors"]):
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
