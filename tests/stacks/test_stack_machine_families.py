"""Every machine family in the catalog through its stack under Pulumi mocks: the machine type, its GPUs, its disk
type and network interface as that family needs them.

One run per family keeps the session short (a run costs a few hundred milliseconds); the stacks' per-family rules
key on the family, and every machine type's own facts go through the planner in tests/unit/test_catalog_machines.py.
Every GCE machine type is also checked against the helpers the stack and its GKE pools use.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from devserver import catalog
from devserver.catalog import MachineType
from devserver.infra import gce
from devserver.plan import MachineChoice
from tests.stacks.harness import StackRun, run_stack
from tests.support.catalog_specs import by_type, family, machines, spec_data, write

CAT = catalog.load()

# Facts of [gce-disks] and [gce-aihc]/[gce-g4] in data/catalog.yaml, written out here rather than read back from
# the stack's own tables.
GCE_HYPERDISK_ONLY = ("a3-ultragpu", "a4-highgpu", "a4x-highgpu", "a4x-maxgpu-4g", "g4-standard")
GCE_GVNIC = ("a3-", "a4-", "a4x-", "g4-")
GCE_ACCELERATORS = {
    "g2-standard": "nvidia-l4",
    "g4-standard": "nvidia-rtx-pro-6000",
    "a2-highgpu": "nvidia-tesla-a100",
    "a2-megagpu": "nvidia-tesla-a100",
    "a2-ultragpu": "nvidia-a100-80gb",
    "a3-highgpu": "nvidia-h100-80gb",
    "a3-megagpu": "nvidia-h100-mega-80gb",
    "a3-ultragpu": "nvidia-h200-141gb",
    "a4-highgpu": "nvidia-b200",
    "a4x-highgpu": "nvidia-gb200",
    "a4x-maxgpu-4g": "nvidia-gb300",
}


def _families() -> list[tuple[str, str, MachineType]]:
    """The first runnable (x86_64, not GRID) machine type of each family, in catalog order."""
    seen: set[tuple[str, str]] = set()
    picked = []
    for cloud, name, facts in machines():
        key = (cloud, family(cloud, name))
        if facts.arch == "x86_64" and not facts.grid and key not in seen:
            seen.add(key)
            picked.append((cloud, name, facts))
    return picked


def _id(item: tuple[str, str, MachineType]) -> str:
    return f"{item[0]}:{item[1]}"


@pytest.mark.parametrize("item", _families(), ids=_id)
def test_each_machine_family_runs_through_its_stack(item: tuple[str, str, MachineType], tmp_path: Path) -> None:
    cloud, name, facts = item
    run = run_stack(cloud, write(tmp_path, by_type(cloud, name, facts)))
    assert run.outputs["gpu"] == f"{facts.count}x {CAT.gpus[facts.gpu].name}"
    {"gce": _gce, "azure": _azure, "aws": _aws, "openstack": _openstack}[cloud](run, name, facts)


def _gce(run: StackRun, name: str, facts: MachineType) -> None:
    vm = run.one("gcp:compute/instance:Instance").inputs
    assert vm["machineType"] == name
    assert "guestAccelerators" not in vm  # the GPUs come with the machine type
    disk = "hyperdisk-balanced" if name.startswith(GCE_HYPERDISK_ONLY) else "pd-balanced"
    assert vm["bootDisk"]["initializeParams"]["type"] == disk
    assert run.one("gcp:compute/disk:Disk").inputs["type"] == disk  # the example's data disk
    nic = vm["networkInterfaces"][0]
    assert nic.get("nicType") == ("GVNIC" if name.startswith(GCE_GVNIC) else None)
    scheduling = vm["scheduling"]
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["provisioningModel"] == ("SPOT" if facts.spot_only else "STANDARD")


def _azure(run: StackRun, name: str, facts: MachineType) -> None:
    vm = run.one("azure-native:compute:VirtualMachine").inputs
    assert vm["hardwareProfile"] == {"vmSize": name}
    assert vm["storageProfile"]["osDisk"]["managedDisk"] == {"storageAccountType": "Premium_LRS"}
    # The catalog's Ubuntu 24.04 image is a gen2 SKU, which every size here supports.
    assert 2 in facts.generations
    assert vm["storageProfile"]["imageReference"]["offer"] == "ubuntu-24_04-lts"


def _aws(run: StackRun, name: str, facts: MachineType) -> None:
    vm = run.one("aws:ec2/instance:Instance").inputs
    assert vm["instanceType"] == name
    assert (vm["rootBlockDevice"]["volumeType"], vm["rootBlockDevice"]["encrypted"]) == ("gp3", True)
    # The primary interface is the default ENA one: no type in the catalog needs EFA to boot.
    assert "networkInterfaces" not in vm
    assert run.call("aws:ssm/getParameter:getParameter").args["name"].endswith("/amd64/hvm/ebs-gp3/ami-id")


def _openstack(run: StackRun, name: str, facts: MachineType) -> None:
    assert run.one("openstack:compute/instance:Instance").inputs["flavorName"] == name


@pytest.mark.parametrize("cloud", ["gce", "azure", "aws"])
def test_grace_machines_stop_the_stack_before_any_resource(cloud: str, tmp_path: Path) -> None:
    name = next(n for c, n, f in machines() if c == cloud and f.arch == "arm64")
    run = StackRun([], [])
    with pytest.raises(pulumi.RunError, match="arm64 machine"):
        run_stack(cloud, write(tmp_path, spec_data(cloud, {"type": name})), run)
    assert run.resources == []


@pytest.mark.parametrize("name", list(CAT.clouds["gce"].machines))
def test_every_gce_machine_type_has_its_accelerator_disk_and_nic(name: str) -> None:
    facts = CAT.clouds["gce"].machines[name]
    fam = family("gce", name)
    assert gce.accelerator_type(MachineChoice(name, facts.gpu, facts.count)) == GCE_ACCELERATORS[fam]
    assert gce.disk_type(name) == ("hyperdisk-balanced" if name.startswith(GCE_HYPERDISK_ONLY) else "pd-balanced")
