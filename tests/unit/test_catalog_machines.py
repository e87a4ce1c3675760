"""Every machine type in the catalog through the planner: asked for by type and by GPU model, on its cloud.

The stacks' side (each machine family under Pulumi mocks) is tests/stacks/test_stack_machine_families.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from devserver import catalog
from devserver.catalog import MachineType
from devserver.errors import SpecError
from devserver.plan import Resolved, resolve
from devserver.spec import DevserverSpec
from tests.support.catalog_specs import by_type, machines, spec_data

CAT = catalog.load()
RUNNABLE = [(c, n, f) for c, n, f in machines() if f.arch == "x86_64" and not f.grid]
ARM64 = [(c, n, f) for c, n, f in machines() if f.arch == "arm64"]


def _id(item: tuple[str, str, MachineType]) -> str:
    return f"{item[0]}:{item[1]}"


def plan(data: dict[str, Any]) -> Resolved:
    """`data` resolved, or SpecError raised."""
    return resolve(DevserverSpec.model_validate(data), "<test>")


@pytest.mark.parametrize("item", RUNNABLE, ids=_id)
def test_every_machine_type_resolves_by_type(item: tuple[str, str, MachineType]) -> None:
    cloud, name, facts = item
    resolved = plan(by_type(cloud, name, facts))
    assert resolved.machine is not None
    assert (resolved.machine.type, resolved.machine.gpu, resolved.machine.gpu_count) == (name, facts.gpu, facts.count)
    assert resolved.fabric_manager is facts.nvswitch
    assert resolved.driver_flavour == "open" or CAT.architectures[CAT.gpus[facts.gpu].architecture].proprietary
    if cloud == "azure":
        assert resolved.machine.hyperv_generation == max(facts.generations)


@pytest.mark.parametrize("item", RUNNABLE, ids=_id)
def test_every_gpu_and_count_derives_the_smallest_machine_carrying_it(item: tuple[str, str, MachineType]) -> None:
    cloud, _, facts = item
    data = spec_data(cloud, {"gpu": {"model": facts.gpu, "count": facts.count}, "spot": facts.spot_only})
    resolved = plan(data)
    assert resolved.machine is not None
    spot = facts.spot_only
    eligible = {
        n: m.vcpus
        for n, m in CAT.clouds[cloud].machines.items()
        if (m.gpu, m.count) == (facts.gpu, facts.count)
        and m.arch == "x86_64"
        and not m.grid
        and (spot or not m.spot_only)
    }
    assert eligible[resolved.machine.type] == min(eligible.values())
    assert (resolved.machine.gpu, resolved.machine.gpu_count) == (facts.gpu, facts.count)


@pytest.mark.parametrize("item", ARM64, ids=_id)
def test_grace_machines_are_refused_naming_arm64_and_what_runs_instead(item: tuple[str, str, MachineType]) -> None:
    cloud, name, facts = item
    for machine in ({"type": name}, {"gpu": {"model": facts.gpu, "count": facts.count}}):
        with pytest.raises(SpecError) as raised:
            plan(spec_data(cloud, machine))
        (problem,) = raised.value.problems
        assert problem.path == "machine.type"
        if "type" in machine:
            assert problem.value == name
        else:  # derived: one of the Grace machines carrying that GPU
            assert CAT.clouds[cloud].machines[str(problem.value)].gpu == facts.gpu
        assert "arm64" in problem.message
        assert "x86_64" in problem.message
        # The fix names x86_64 machines of the same GPU generation that the cloud sells.
        offered = [n for n in problem.fix.split(": ", 1)[1].split(", ") if n in CAT.clouds[cloud].machines]
        assert offered, problem.fix
        for other in offered:
            alternative = CAT.clouds[cloud].machines[other]
            assert alternative.arch == "x86_64"
            assert CAT.gpus[alternative.gpu].architecture == CAT.gpus[facts.gpu].architecture


def test_the_issue_gpus_validate_on_every_cloud_that_sells_them() -> None:
    # H200 on all three big clouds, the smaller H100 shapes, L40S, A100 80GB on AWS, RTX PRO 6000, B300.
    expected = {
        ("gce", "h200", 8): "a3-ultragpu-8g",
        ("azure", "h200", 8): "Standard_ND96isr_H200_v5",
        ("aws", "h200", 8): "p5e.48xlarge",
        ("gce", "h100", 4): "a3-highgpu-4g",
        ("azure", "h100-nvl", 1): "Standard_NC40ads_H100_v5",
        ("aws", "h100", 1): "p5.4xlarge",
        ("aws", "l40s", 4): "g6e.12xlarge",
        ("aws", "a100-80gb", 8): "p4de.24xlarge",
        ("aws", "rtx-pro-6000", 1): "g7e.2xlarge",
        ("gce", "rtx-pro-6000", 1): "g4-standard-48",
        ("azure", "rtx-pro-6000", 1): "Standard_NC128ds_xl_RTXPRO6000BSE_v6",
        ("aws", "b300", 8): "p6-b300.48xlarge",
    }
    for (cloud, model, count), machine in expected.items():
        data = spec_data(cloud, {"gpu": {"model": model, "count": count}, "spot": cloud == "gce" and count < 8})
        resolved = plan(data)
        assert resolved.machine is not None
        assert resolved.machine.type == machine, (cloud, model, count)


def test_spot_only_machines_need_a_spot_vm() -> None:
    data = spec_data("gce", {"gpu": {"model": "h100", "count": 1}})
    with pytest.raises(SpecError) as raised:
        plan(data)
    (problem,) = raised.value.problems
    assert (problem.path, problem.value) == ("machine.type", "a3-highgpu-1g")
    assert "spot" in problem.message
    assert problem.fix == "set machine.spot: true"
    assert plan({**data, "machine": {**data["machine"], "spot": True}}).machine is not None


def test_blackwell_refuses_the_proprietary_modules_and_hopper_takes_either() -> None:
    blackwell = spec_data("aws", {"type": "g7e.2xlarge"})
    blackwell["software"] = {"driver": {"source": "cuda-repo", "flavour": "proprietary"}}
    with pytest.raises(SpecError, match="requires the open kernel modules"):
        plan(blackwell)
    hopper = spec_data("aws", {"type": "p5e.48xlarge"})
    hopper["software"] = {"driver": {"source": "cuda-repo", "flavour": "proprietary"}}
    assert plan(hopper).driver_flavour == "proprietary"
    hopper["software"] = {"driver": {"source": "cuda-repo"}}
    assert plan(hopper).driver_flavour == "open"


def test_new_gpus_refuse_branches_older_than_their_first() -> None:
    data = spec_data("aws", {"type": "p5e.48xlarge"})
    data["software"] = {"driver": {"source": "cuda-repo", "branch": 535}}
    with pytest.raises(SpecError, match=r"first branch supporting NVIDIA H200 \(550\)"):
        plan(data)
    data["software"] = {"driver": {"source": "cuda-repo", "branch": 610}, "cuda": {"version": "13.3"}}
    assert plan(data).cuda == "13.3"
