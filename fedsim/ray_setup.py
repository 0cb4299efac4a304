"""How fedsim starts or joins Ray, without Flower: the engine's clients and the driver's own tasks
(fedsim.fanout) share it.

A private local Ray by default (never silently joining a cluster that happens to be running, sized
to the cores this process may use), the cluster of `resources.ray_address` (or of the Ray job this
runs in) when asked, a fast reachability probe before Ray's own minute of retries, the import path
for the workers, and Ray's and Flower's chatter kept out of the terminal.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import warnings
from pathlib import Path

from fedsim import NO_PHONE_HOME
from fedsim.scenario import RAY_ADDRESS, ResourcesConfig

IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the job's entry point
REACH_TIMEOUT_S = 5.0


def local_cpus() -> int:
    """Cores this process may use (the affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        init_args["num_cpus"] = total_cpus or local_cpus()  # the cores this process may use
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


def init_ray(init_args: dict) -> str:
    """ray.init with fedsim's import path for the workers; return the address joined ('local': a
    private instance). Failure is an EngineError naming the resources key."""
    import ray

    address = init_args.get("address")
    if address != "local":
        check_reachable(address)
    paths = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))  # once each, in order
    os.environ["PYTHONPATH"] = pythonpath  # Ray workers import fedsim and plug-in files as the driver does
    # a private instance's workers inherit this environment; a cluster's get it as a runtime env
    # (which costs each new worker a trip through Ray's runtime-env agent)
    quiet = {k: os.environ[k] for k in NO_PHONE_HOME if k in os.environ}
    runtime_env = {} if address == "local" else {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath, **quiet}}}
    try:
        ray.init(**runtime_env, **init_args)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray" if address == "local" else f"join the Ray cluster at {address}"
        key = "resources" if address == "local" else "resources.ray_address"
        raise EngineError(f"{key}: cannot {where}: {exc}") from exc
    return address


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
