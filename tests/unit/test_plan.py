"""The resolver: defaults filled from the catalog, and every impossible combination reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devserver.errors import SpecError
from devserver.loader import load_builtin_local, load_spec, load_spec_bytes
from devserver.plan import planned_resources, resolve

EXAMPLES = Path(__file__).parents[2] / "examples"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd4bWFtcGxla2V5Zm9yZXhhbXBsZXNvbmx5MDAwMDAw a@b"


def _spec(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "t",
        "cloud": {"provider": "gce", "project": "my-project", "zone": "us-central1-a"},
        "machine": {"gpu": {"model": "t4"}},
        "ssh": {"public_keys": [KEY], "allowed_cidrs": ["10.0.0.0/8"]},
    }
    doc.update(overrides)
    return doc


def _resolve(doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    return resolve(load_spec_bytes(yaml.safe_dump(doc).encode()))


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        _resolve(doc)
    return [p.render() for p in info.value.problems]


def test_gce_t4_derives_n1() -> None:
    resolved = _resolve(_spec())
    assert resolved.machine is not None
    assert (resolved.machine.type, resolved.machine.accelerator) == ("n1-standard-8", "nvidia-tesla-t4")
    assert resolved.driver_branch == 535  # debian-12's archive
    assert resolved.driver_flavour == "proprietary"  # Debian ships no open modules
    assert resolved.cuda == "11.8"


def test_gpu_from_machine_type() -> None:
    resolved = _resolve(_spec(machine={"type": "a3-highgpu-8g"}, software={"driver": {"source": "cuda-repo"}}))
    assert resolved.machine is not None
    assert (resolved.machine.gpu, resolved.machine.gpu_count) == ("h100-80gb", 8)
    assert resolved.fabric_manager is True
    assert resolved.driver_branch == 580
    assert resolved.driver_flavour == "open"
    assert resolved.cuda == "13.0"


def test_smallest_machine_for_count() -> None:
    doc = _spec(cloud={"provider": "aws", "region": "us-east-1"}, machine={"gpu": {"model": "l4", "count": 4}})
    resolved = _resolve(doc)
    assert resolved.machine is not None
    assert resolved.machine.type == "g6.12xlarge"


def test_every_problem_reported_at_once() -> None:
    doc = _spec(
        machine={"gpu": {"model": "v100"}},
        software={"driver": {"branch": 535, "flavour": "open", "source": "cuda-repo"}, "cuda": {"version": "12.8"}},
    )
    problems = _problems(doc)
    assert any(p.startswith("software.driver.flavour") for p in problems)
    assert any(p.startswith("software.cuda.version") for p in problems)


def test_gpu_aliases_and_case() -> None:
    resolved = _resolve(
        _spec(
            machine={"gpu": {"model": "H100", "count": 8}}, software={"driver": {"branch": 570, "source": "cuda-repo"}}
        )
    )
    assert resolved.machine is not None
    assert resolved.machine.type == "a3-highgpu-8g"


def test_azure_gen2_and_trusted_launch() -> None:
    resolved = resolve(load_spec(EXAMPLES / "azure.yaml"))
    assert resolved.machine is not None
    assert resolved.machine.hyperv_generation == 2


def test_node_pool_resolution() -> None:
    resolved = resolve(load_spec(EXAMPLES / "aws.yaml"))
    (pool,) = resolved.node_pools
    assert pool.machine.type == "g4dn.xlarge"
    assert pool.taints == ("nvidia.com/gpu=present:NoSchedule",)


def test_node_pool_problems_are_located() -> None:
    doc = _spec(kubernetes={"node_pools": [{"gpu": {"model": "t4", "count": 3}}]})
    assert any(p.startswith("kubernetes.node_pools[0].gpu.count") for p in _problems(doc))


def test_builtin_local_is_the_example() -> None:
    assert load_builtin_local() == load_spec(EXAMPLES / "local.yaml")


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_examples_plan(example: Path) -> None:
    resolved = resolve(load_spec(example))
    resources = planned_resources(resolved)
    kinds = {r.kind for r in resources}
    if resolved.spec.cloud.provider == "local":
        assert kinds == {"qemu VM"}
    else:
        assert "GPU VM" in kinds
        # One SSH rule per address family on some clouds: together they admit exactly the spec's networks.
        firewall = [r for r in resources if r.details.get("allow") == "tcp/22"]
        assert firewall
        admitted = {cidr for r in firewall for cidr in r.details["from"].split(", ")}
        assert admitted == set(resolved.spec.ssh.allowed_cidrs)


def test_boot_disk_encryption_is_claimed_only_where_the_stack_sets_it() -> None:
    # GCE encrypts every disk, the AWS and Azure stacks turn encryption on; on OpenStack the site's Cinder volume type
    # decides, so the plan must not promise it.
    for example in ("gce", "azure", "aws", "openstack"):
        (vm,) = [r for r in planned_resources(resolve(load_spec(EXAMPLES / f"{example}.yaml"))) if r.kind == "GPU VM"]
        if example == "openstack":
            assert vm.details["boot disk"].endswith("Cinder volume, encryption: the site's volume type decides")
        else:
            assert vm.details["boot disk"].endswith("GiB, encrypted")
