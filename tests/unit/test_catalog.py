"""A sample of catalog facts, each checked against the source cited in data/catalog.yaml."""

from __future__ import annotations

import pytest

from devserver import catalog

CAT = catalog.load()


def test_covers_the_gpus_the_issue_names() -> None:
    gce = CAT.clouds["gce"]
    assert set(gce.attachable) == {"t4", "v100", "p100", "p4"}  # [gce-gpus] N1 attachable GPUs
    assert {m.gpu for m in gce.machines.values()} >= {"l4", "a100-40gb", "a100-80gb", "h100-80gb"}
    azure = {m.gpu for m in CAT.clouds["azure"].machines.values()}
    assert azure >= {"t4", "a100-80gb", "h100-80gb", "a10"}
    aws = CAT.clouds["aws"].machines
    assert {name.split(".")[0] for name in aws} >= {"g4dn", "g5", "g6", "p4d", "p5"}
    assert set(CAT.clouds["openstack"].machines) == {"gpu.1.1gpu", "gpu.1.2gpu", "gpu.1.4gpu"}  # [pouta]


@pytest.mark.parametrize(
    ("cloud", "machine", "gpu", "count"),
    [
        ("gce", "g2-standard-24", "l4", 2),  # [gce-gpus] G2 table
        ("gce", "a2-highgpu-1g", "a100-40gb", 1),  # [gce-gpus] A2 Standard
        ("gce", "a2-ultragpu-8g", "a100-80gb", 8),  # [gce-gpus] A2 Ultra
        ("gce", "a3-highgpu-8g", "h100-80gb", 8),  # [gce-gpus] A3 High
        ("azure", "Standard_NC64as_T4_v3", "t4", 4),  # [az-t4]
        ("azure", "Standard_NC24ads_A100_v4", "a100-80gb", 1),  # [az-a100]
        ("azure", "Standard_ND96isr_H100_v5", "h100-80gb", 8),  # [az-h100]
        ("aws", "g4dn.12xlarge", "t4", 4),  # [aws-accel]
        ("aws", "g5.48xlarge", "a10g", 8),  # [aws-accel]
        ("aws", "p4d.24xlarge", "a100-40gb", 8),  # [aws-accel]
        ("aws", "p5.48xlarge", "h100-80gb", 8),  # [aws-accel]
        ("openstack", "gpu.1.4gpu", "p100", 4),  # [pouta]
    ],
)
def test_machine_facts(cloud: str, machine: str, gpu: str, count: int) -> None:
    facts = CAT.clouds[cloud].machines[machine]
    assert (facts.gpu, facts.count) == (gpu, count)


def test_gce_attach_limits() -> None:
    # [gce-gpus]: V100 comes in 1/2/4/8 with at most 12 vCPUs per GPU; T4 in 1/2/4
    assert CAT.clouds["gce"].attachable["v100"].max_vcpus == {1: 12, 2: 24, 4: 48, 8: 96}
    assert set(CAT.clouds["gce"].attachable["t4"].max_vcpus) == {1, 2, 4}


def test_nvswitch_machines_need_fabric_manager() -> None:
    # [fm]: HGX 8-GPU boards (A100, H100) use NVSwitch; single-GPU sizes do not
    assert CAT.clouds["aws"].machines["p5.48xlarge"].nvswitch
    assert CAT.clouds["azure"].machines["Standard_ND96isr_H100_v5"].nvswitch
    assert CAT.clouds["gce"].machines["a3-highgpu-8g"].nvswitch
    assert not CAT.clouds["aws"].machines["g6.xlarge"].nvswitch


def test_module_flavours_by_architecture() -> None:
    # [nv-open]: proprietary only up to Volta; open from Turing; Blackwell requires open
    assert CAT.architectures[CAT.gpus["v100"].architecture].open is False
    assert CAT.architectures[CAT.gpus["p100"].architecture].open is False
    assert CAT.architectures[CAT.gpus["t4"].architecture].open is True
    assert CAT.architectures[CAT.gpus["b200"].architecture].proprietary is False


def test_cuda_per_branch() -> None:
    # [cuda-rn]: CUDA 12.2 needs >= 535.54; 12.8 needs >= 570.26; 11.8 needs >= 520.61
    assert CAT.max_cuda(535) == "12.2"
    assert CAT.max_cuda(570) == "12.8"
    assert CAT.max_cuda(520) == "11.8"
    assert CAT.min_branch_for_cuda("12.8") == 570


def test_azure_generations() -> None:
    # [az-a100]/[az-h100]: gen2 only; [az-t4]: gen1 and gen2
    assert CAT.clouds["azure"].machines["Standard_NC24ads_A100_v4"].generations == (2,)
    assert CAT.clouds["azure"].machines["Standard_NC4as_T4_v3"].generations == (1, 2)


def test_debian_distro_driver() -> None:
    # [deb-nv]: bookworm ships the 535 series and CUDA 11.8, proprietary modules only
    facts = CAT.os["debian-12"]
    assert facts.distro_driver_branches == (535,)
    assert facts.distro_cuda == "11.8"
    assert facts.distro_open_modules is False


def test_every_machine_names_a_known_gpu() -> None:
    for cloud in CAT.clouds.values():
        for machine in cloud.machines.values():
            assert machine.gpu in CAT.gpus
        for gpu in cloud.attachable:
            assert gpu in CAT.gpus
        assert set(cloud.images) == set(CAT.os)
    for gpu in CAT.gpus.values():
        assert gpu.architecture in CAT.architectures
