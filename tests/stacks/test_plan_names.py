"""`devserver plan` lists exactly what each stack registers: the same Pulumi types under the same names, on every
cloud, for every example and every stack fixture spec (run under the Pulumi mocks of the harness).

Compared are the devserver-owned resources, the ones that become objects in the cloud. Left out, on both sides:

* the provider resource (type ``pulumi:providers:*``): the engine's configured plugin, named ``<spec>-<package>``;
  it holds no cloud object, and `devserver plan` shows the cloud and region instead;
* the component itself (type ``devserver:infra:*``): the logical parent named after the spec, with no cloud object;
* on the plan side, the existing objects the stack only looks up (``existing``: a given network or subnet, the
  default VPC), which a stack never registers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from devserver import registry
from devserver.errors import SpecError
from devserver.loader import load_spec
from devserver.plan import resolve
from tests.stacks.harness import CLOUDS, EXAMPLES, SPECS, Resource, StackRun, run_stack

# Not cloud objects: the provider plugin and the component (see the module docstring).
_ENGINE_TYPES = ("pulumi:providers:", "devserver:")


def _registered(resources: list[Resource]) -> Counter[tuple[str, str]]:
    return Counter((r.type, r.name) for r in resources if not r.type.startswith(_ENGINE_TYPES))


def _planned(spec: Path) -> Counter[tuple[str, str]]:
    resolved = resolve(load_spec(spec))
    return Counter((r.type, r.name) for r in registry.planned(resolved).created())


def _fixture_specs() -> list[Path]:
    """The stack fixture specs that resolve: each runs through its stack in the test below."""
    specs: list[Path] = []
    for path in sorted(SPECS.glob("*.yaml")):
        try:
            resolve(load_spec(path))
        except SpecError:
            continue  # a spec the plan rejects stops the stack before anything is registered
        specs.append(path)
    return specs


def _assert_same(run: StackRun, spec: Path) -> None:
    registered, planned = _registered(run.resources), _planned(spec)
    assert registered, f"{spec.name}: the stack registered nothing"
    assert not planned - registered, f"{spec.name}: plan lists, the stack does not register: {planned - registered}"
    assert not registered - planned, f"{spec.name}: the stack registers, plan does not list: {registered - planned}"


def test_every_cloud_with_a_stack_is_covered() -> None:
    assert set(CLOUDS) == set(registry.with_stacks())


@pytest.mark.parametrize("cloud", CLOUDS)
def test_plan_names_what_the_example_stack_registers(cloud: str, examples: dict[str, StackRun]) -> None:
    _assert_same(examples[cloud], EXAMPLES / f"{cloud}.yaml")


def test_the_fixture_runs_are_among_the_checked_specs(fixture_runs: dict[str, StackRun]) -> None:
    """The next test runs every fixture spec that resolves, those of `fixture_runs` among them."""
    checked = {path.stem for path in _fixture_specs()}
    assert {"gce-gke", "azure-aks", "aws-subnet"} <= checked
    assert {"gke-ipv4", "eks-ipv4", "aks-dual-stack"} <= checked
    assert set(fixture_runs) == {"gce", "azure", "aws"}


@pytest.mark.parametrize("spec", _fixture_specs(), ids=lambda path: path.stem)
def test_plan_names_what_the_fixture_stack_registers(spec: Path) -> None:
    _assert_same(run_stack(load_spec(spec).cloud.provider, spec), spec)


def test_a_stack_cannot_name_a_resource_the_plan_does_not_list() -> None:
    plan = registry.planned(resolve(load_spec(EXAMPLES / "aws.yaml")))
    assert plan.name("vm") == "ml-dev-aws-vm"
    with pytest.raises(KeyError, match="the plan lists no resource 'firewall'"):
        plan.name("firewall")
