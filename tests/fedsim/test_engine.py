
from fedsim.engine import backend_config
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
