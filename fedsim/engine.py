"""The one module that touches Flower's simulation entry point and Ray.

It starts a private local Ray instance by default (never silently joining a cluster that happens to
be running), joins `resources.ray_address` when asked, keeps Ray's and Flower's chatter out of the
terminal, and turns any failure into :class:`EngineError` once Ray is shut down.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.scenario import ResourcesConfig


class EngineError(RuntimeError):
    """The simulation failed; the message says why in one line."""


def backend_config(resources: ResourcesConfig, *, total_cpus: int | None = None,
                   local_gpus: int | None = None) -> dict:
    """Flower's backend_config for the Ray backend, from the scenario's `resources` section.

    On a private local Ray, GPU fractions are only requested when this machine has a GPU: a
    request Ray can never grant would leave the clients unscheduled."""
    init_args: dict = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    num_gpus = resources.num_gpus
    if resources.ray_address:
        init_args["address"] = resources.ray_address
    else:
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
    log_file: Path | None = None,
) -> None:
    """Run the apps on Flower's simulation engine with the Ray backend; raise EngineError on failure."""
    import ray
    from flwr.simulation import run_simulation

    quiet_logs(log_file)
    if not resources.ray_address:
        os.environ.pop("RAY_ADDRESS", None)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_name="ray",
            backend_config=backend_config(resources),
        )
    except Exception as exc:  # Flower wraps client-engine crashes; the server's own error is re-raised
        cause = exc.__cause__ or exc
        raise EngineError(f"{type(cause).__name__}: {cause}") from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
