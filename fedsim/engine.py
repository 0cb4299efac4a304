"""The one module that touches Flower's simulation entry point and Ray.

It starts a private local Ray instance by default (never silently joining a cluster that happens to
be running), joins `resources.ray_address` when asked, keeps Ray's and Flower's chatter out of the
terminal, and turns any failure into :class:`EngineError` once Ray is shut down.
"""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.scenario import ResourcesConfig


class EngineError(RuntimeError):
    """The simulation failed; the message says why in one line."""


def backend_config(resources: ResourcesConfig, *, total_cpus: int | None = None) -> dict:
    """Flower's backend_config for the Ray backend, from the scenario's `resources` section."""
    init_args: dict = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if resources.ray_address:
        init_args["address"] = resources.ray_address
    else:
        init_args["address"] = "local"  # a private instance, even if a cluster is running here
        init_args["num_cpus"] = total_cpus or os.cpu_count() or 1
        if resources.num_gpus > 0:
            import torch

            init_args["num_gpus"] = torch.cuda.device_count()
    return {
        "client_resources": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
        "init_args": init_args,
    }


def quiet_logs() -> None:
    """Flower logs every step at INFO and Ray prints its own banner; fedsim prints one line a round."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*run_simulation.*")


def run_federation(
    *, server_app: ServerApp, client_app: ClientApp, num_clients: int, resources: ResourcesConfig
) -> None:
    """Run the apps on Flower's simulation engine with the Ray backend; raise EngineError on failure."""
    import ray
    from flwr.simulation import run_simulation

    quiet_logs()
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
