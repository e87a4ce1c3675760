"""Run a stack's ``__main__.py`` under Pulumi mocks the way `pulumi up` runs it, and record what it registers.

The Pulumi CLI and its provider plugins cannot be installed here, so the engine is replaced by
:class:`RecordingMocks`: every resource registration and data-source call is recorded with its inputs, exactly as the
engine (and the policy analyzer) would receive them (camelCase property names). Provider-computed outputs that the
programs read (IP addresses, cluster endpoints, AMI IDs) come from the fixed fake values below.

:func:`run_stack` mirrors Pulumi's Python language host: the stack directory is the working directory, its
``__main__.py`` runs through ``runpy.run_path(<dir>, run_name="__main__")`` inside a fresh root Stack
(``run_in_stack``), and the spec path comes from stack config ``devserver:spec``, relative to the stack directory.
"""

from __future__ import annotations

import base64
import os
import runpy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs

from devserver.infra.policies import POLICIES

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "stacks"
EXAMPLES = REPO / "examples"
SPECS = Path(__file__).resolve().parent / "specs"
CLOUDS = ("gce", "azure", "aws", "openstack")

FAKE_AMI = "ami-0123456789abcdef0"
FAKE_IMAGE_ID = "11111111-2222-3333-4444-555555555555"
FAKE_AKS_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n"

# Outputs the cloud computes that the programs read; merged under the recorded inputs.
_COMPUTED: Mapping[str, Mapping[str, Any]] = {
    "gcp:compute/address:Address": {"address": "203.0.113.10"},
    "gcp:container/cluster:Cluster": {"endpoint": "192.0.2.1", "masterAuth": {"clusterCaCertificate": "Q0E="}},
    "azure-native:network:PublicIPAddress": {"ipAddress": "203.0.113.11"},
    "aws:ec2/eip:Eip": {"publicIp": "203.0.113.12"},
    "aws:ec2/instance:Instance": {"availabilityZone": "us-east-1a"},
    "aws:ec2/launchTemplate:LaunchTemplate": {"latestVersion": 1},
    "aws:iam/role:Role": {"arn": "arn:aws:iam::123456789012:role/fake"},
    "aws:eks/cluster:Cluster": {"endpoint": "https://eks.example", "certificateAuthority": {"data": "Q0E="}},
    "openstack:networking/floatingIp:FloatingIp": {"address": "203.0.113.13"},
}


# Resource IDs the cloud assigns where a program derives something from one (the data disk's device path);
# every other resource gets "<name>-id".
FAKE_EBS_VOLUME_ID = "vol-0123456789abcdef0"
FAKE_CINDER_VOLUME_ID = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
_IDS: Mapping[str, str] = {
    "aws:ebs/volume:Volume": FAKE_EBS_VOLUME_ID,
    "openstack:blockstorage/volume:Volume": FAKE_CINDER_VOLUME_ID,
}


def _call_result(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {
        "aws:ssm/getParameter:getParameter": {"name": args.get("name"), "type": "String", "value": FAKE_AMI},
        "aws:ec2/getVpc:getVpc": {"id": "vpc-0aaaaaaaaaaaaaaaa"},
        "aws:ec2/getSubnet:getSubnet": {
            "id": args.get("id", "subnet-0cccccccccccccccc"),
            "vpcId": "vpc-0aaaaaaaaaaaaaaaa",
            "availabilityZone": "eu-west-1b",
        },
        "aws:ec2/getSubnets:getSubnets": {"ids": ["subnet-0bbbbbbbbbbbbbbbb", "subnet-0aaaaaaaaaaaaaaaa"]},
        "openstack:networking/getNetwork:getNetwork": {"id": "net-0001", "name": args.get("name")},
        "openstack:images/getImage:getImage": {"id": FAKE_IMAGE_ID, "name": args.get("name")},
        "azure-native:containerservice:listManagedClusterUserCredentials": {
            "kubeconfigs": [{"name": "clusterUser", "value": base64.b64encode(FAKE_AKS_KUBECONFIG.encode()).decode()}]
        },
    }
    if token not in results:
        raise AssertionError(f"the program called {token}, which the mocks do not know")
    return results[token]


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None = None  # the provider reference the engine would get: "<urn>::<id>"


@dataclass(frozen=True)
class Call:
    token: str
    args: dict[str, Any]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Resource] = []
        self.calls: list[Call] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(Resource(args.typ, args.name, dict(args.inputs), args.provider or None))
        state = {"name": args.name, **_COMPUTED.get(args.typ, {}), **args.inputs}
        return _IDS.get(args.typ, f"{args.name}-id"), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        self.calls.append(Call(args.token, dict(args.args)))
        return _call_result(args.token, args.args)


@dataclass
class StackRun:
    """What one program run registered, called and exported."""

    resources: list[Resource]
    calls: list[Call]
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, resource_type: str) -> list[Resource]:
        return [r for r in self.resources if r.type == resource_type]

    def one(self, resource_type: str) -> Resource:
        found = self.of_type(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, got {[r.name for r in found]}"
        return found[0]

    def call(self, token: str) -> Call:
        found = [c for c in self.calls if c.token == token]
        assert found, f"{token} was not called"
        return found[0]


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_stack(cloud: str, spec: Path, run: StackRun | None = None) -> StackRun:
    """Run stacks/<cloud>/__main__.py for `spec` under mocks. Exceptions from the program propagate; the
    resources registered before one are in `run` when the caller passes it in."""
    stack_dir = STACKS / cloud
    mocks = RecordingMocks()
    result = run if run is not None else StackRun([], [])
    result.resources, result.calls = mocks.resources, mocks.calls
    pulumi.runtime.set_mocks(mocks, project=f"devserver-{cloud}", stack="test", preview=False)
    # A fresh root Stack per run, created by run_in_stack as the language host does.
    settings.ROOT.set(None)
    pulumi.runtime.set_all_config({"devserver:spec": os.path.relpath(spec, stack_dir)})

    async def program() -> None:
        runpy.run_path(str(stack_dir), run_name="__main__")
        root = settings.get_root_resource()
        assert root is not None
        for name, value in getattr(root, "outputs", {}).items():
            output = pulumi.Output.from_input(value)
            result.outputs[name] = await output.future()
            if await output.is_secret():
                result.secret_outputs.add(name)

    with _cwd(stack_dir):
        _sync_await(run_in_stack(program))
    return result


def policy_violations(resources: list[Resource]) -> list[tuple[str, str, str]]:
    """(policy, resource name, message) for each violation any policy of the pack reports on `resources`."""
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    found: list[tuple[str, str, str]] = []
    for resource in resources:
        args = ResourceValidationArgs(
            resource.type,
            resource.inputs,
            f"urn:pulumi:test::devserver::{resource.type}::{resource.name}",
            resource.name,
            options,
            None,
        )
        for policy in POLICIES:

            def report(message: str, _urn: str | None, name=policy.name, res=resource.name) -> None:
                return found.append((name, res, message))

            policy.validate(args, report)
    return found
