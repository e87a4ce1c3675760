"""Fixtures for the stack tests. They import their harness as tests.stacks.harness (the repository root is on
sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stacks.harness import CLOUDS, EXAMPLES, SPECS, StackRun, run_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The provider SDKs (pulumi_gcp, pulumi_aws, pulumi_openstack) warn about their own deprecated aliases when
    imported; that is not ours to fix."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_"))


@pytest.fixture(scope="session")
def examples() -> dict[str, StackRun]:
    """Each cloud's example spec (examples/<cloud>.yaml) run through its stack once per session."""
    return {cloud: run_stack(cloud, EXAMPLES / f"{cloud}.yaml") for cloud in CLOUDS}


@pytest.fixture(scope="session")
def fixture_runs() -> dict[str, StackRun]:
    """The fixture specs under tests/stacks/specs/ that build something, by cloud: GKE pools on a spot G2 VM,
    an AKS pool beside a spot Trusted Launch VM, and an AWS VM in a given subnet from a given AMI."""
    specs = {"gce": "gce-gke", "azure": "azure-aks", "aws": "aws-subnet"}
    return {cloud: run_stack(cloud, SPECS / f"{name}.yaml") for cloud, name in specs.items()}
