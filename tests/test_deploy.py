"""deploy/cluster.yaml is accepted by Ray's own cluster-config loader (as `ray up` runs it)."""

import copy
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.node_join import hearth_version, ray_version
from cluster.nodes import GpuInfo, NodeInventory, gpu_label, ray_start_args

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_cluster_yaml_passes_rays_validation() -> None:
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    head = " ".join(prepared["head_start_ray_commands"])
    workers = " ".join(prepared["worker_start_ray_commands"])
    assert f"hearth node start --head --host {config['provider']['head_ip']} " in head
    assert "hearth node start --address $RAY_HEAD_IP:6379 --token-file ~/hearth-ray-token" in workers
    assert "--token-file ~/hearth-ray-token" in head and "~/hearth-ray-token" in config["file_mounts"]
    assert "ray stop" not in head + workers and "RAY_AUTH_MODE=disabled" not in head + workers


def test_node_start_args_advertise_vram_and_gpu_model() -> None:
    gpu = GpuInfo(index=0, uuid="GPU-1", name="NVIDIA GeForce RTX 4090", total_vram_mib=24564,
                  free_vram_mib=24000, used_vram_mib=564)
    inv = NodeInventory(hostname="box", cpus=16, memory_mib=64000, gpus=[gpu, gpu], nvml="ok")
    args = ray_start_args(inv, slots=4)
    assert args[0] == "--num-gpus=2"
    assert args[1] == '--resources={"hearth_slots": 4, "vram_mib": 49128}'
    versions = f"hearth-version={hearth_version()},ray-version={ray_version()}"
    assert args[2] == f"--labels=hearth-node=1,{versions},gpu-model=rtx-4090,gpu-count=2"
    cpu_only = ray_start_args(NodeInventory(hostname="nas", cpus=4, memory_mib=8000))
    assert cpu_only == ["--num-gpus=0", '--resources={"hearth_slots": 4}', f"--labels=hearth-node=1,{versions}"]
    assert gpu_label("NVIDIA RTX A6000") == "rtx-a6000"


def test_inventory_without_nvml_is_a_cpu_only_node() -> None:
    from cluster.nodes import inventory

    inv = inventory()
    if inv.nvml == "ok":  # a GPU box: the inventory must describe real GPUs
        assert inv.gpus and all(g.total_vram_mib > 0 for g in inv.gpus)
    else:
        assert inv.gpus == [] and inv.nvml.startswith("absent") and inv.cpus >= 1
