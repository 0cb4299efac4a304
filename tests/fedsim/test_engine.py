"""How fedsim starts or joins Ray: init arguments, the actor pool, fast failures on bad addresses."""

from __future__ import annotations

import socket
import time
import types

import pytest
from pydantic import ValidationError

from fedsim.engine import pool_size
from fedsim.ray_setup import EngineError, backend_config, check_reachable, cluster_address
from fedsim.scenario import ResourcesConfig


def test_default_is_a_private_local_ray_sized_to_the_machine():
    cfg = backend_config(ResourcesConfig(num_cpus=2), total_cpus=8)
    assert cfg["init_args"]["address"] == "local"  # never joins a cluster that happens to run here
    assert cfg["init_args"]["num_cpus"] == 8
    assert cfg["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert cfg["init_args"]["log_to_driver"] is False


def test_ray_address_joins_that_cluster_without_resizing_it():
    cfg = backend_config(ResourcesConfig(ray_address="ray://head:10001", num_gpus=0.25))
    assert cfg["init_args"]["address"] == "ray://head:10001"
    assert "num_cpus" not in cfg["init_args"] and "num_gpus" not in cfg["init_args"]
    assert cfg["client_resources"]["num_gpus"] == 0.25


def test_gpu_request_without_a_local_gpu_falls_back_to_cpu():
    cpu_only = backend_config(ResourcesConfig(num_gpus=0.5), total_cpus=2, local_gpus=0)
    assert cpu_only["client_resources"]["num_gpus"] == 0.0  # else Ray could never schedule a client
    with_gpu = backend_config(ResourcesConfig(num_gpus=0.5), total_cpus=2, local_gpus=1)
    assert with_gpu["client_resources"]["num_gpus"] == 0.5 and with_gpu["init_args"]["num_gpus"] == 1


def _node(cpus: float, gpus: float = 0.0) -> dict:
    return {"Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_actor_pool_is_capped_by_free_resources_and_by_clients():
    client = {"num_cpus": 1.0, "num_gpus": 0.0}
    assert pool_size(client, [_node(8), _node(8)], {"CPU": 16}, num_clients=100) == 16
    assert pool_size(client, [_node(8), _node(8)], {"CPU": 3}, num_clients=100) == 3  # a shared cluster, busy
    assert pool_size(client, [_node(8)], {"CPU": 8}, num_clients=2) == 2  # never more actors than clients
    quarter = {"num_cpus": 0.25, "num_gpus": 0.25}
    assert pool_size(quarter, [_node(2, 2)], {"CPU": 2, "GPU": 2}, num_clients=20) == 8  # four per GPU


def test_a_client_no_node_can_hold_fails_at_once_naming_the_resource():
    with pytest.raises(EngineError, match=r"resources.num_gpus: 0.5 GPU per client, but the largest node has 0"):
        pool_size({"num_cpus": 1.0, "num_gpus": 0.5}, [_node(8), _node(4)], {"CPU": 12}, num_clients=4)
    with pytest.raises(EngineError, match=r"resources.num_cpus: 16 CPU per client, but the largest node has 8"):
        pool_size({"num_cpus": 16.0, "num_gpus": 0.0}, [_node(8)], {"CPU": 8}, num_clients=4)
    with pytest.raises(EngineError, match=r"resources: no node has both 2 CPU and 0.5 GPU for one client"):
        pool_size({"num_cpus": 2.0, "num_gpus": 0.5}, [_node(8), _node(1, 1)], {"CPU": 9, "GPU": 1}, num_clients=4)
    with pytest.raises(EngineError, match=r"no room for a client now .* free: 0.5 CPU"):
        pool_size({"num_cpus": 1.0, "num_gpus": 0.0}, [_node(8)], {"CPU": 0.5}, num_clients=4)


def test_an_unreachable_cluster_fails_fast_naming_the_address():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(EngineError, match=rf"resources.ray_address: cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 30


def test_a_malformed_ray_address_is_refused_by_the_scenario():
    for bad, says in (("http://head:8265", "dashboard"), ("head", "not a Ray cluster address"),
                      ("head:70000", "port 70000 is not in 1-65535")):
        with pytest.raises(ValidationError, match=says):
            ResourcesConfig(ray_address=bad)
    for good in ("auto", "10.0.0.1:6379", "ray://head-node:10001"):
        assert ResourcesConfig(ray_address=good).ray_address == good


def test_inside_a_ray_job_the_run_joins_the_jobs_cluster(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert cluster_address(ResourcesConfig()) == "auto"
    assert "num_cpus" not in backend_config(ResourcesConfig())["init_args"]
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert cluster_address(ResourcesConfig()) is None  # a RAY_ADDRESS alone never makes a run join a cluster


def test_flowers_message_polls_are_shortened_for_the_run_and_restored_after():
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fedsim.engine import _prompt_messaging, poll_interval

    assert poll_interval(3) == 0.005 and poll_interval(100) == pytest.approx(0.02) and poll_interval(5000) == 0.1
    pickup, init = vce_api.add_messages_to_queue, InMemoryGrid.__init__
    factory = types.SimpleNamespace(state=lambda: None)
    with _prompt_messaging(3):
        assert InMemoryGrid(state_factory=factory).pull_interval == 0.005
        assert vce_api.add_messages_to_queue is not pickup
    assert vce_api.add_messages_to_queue is pickup and InMemoryGrid.__init__ is init
    assert InMemoryGrid(state_factory=factory).pull_interval == 0.1
