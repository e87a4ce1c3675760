"""The policy pack against what the stacks really register: each policy passes the examples and rejects a broken
variant of the same resources."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devserver.infra.policies import LABEL_PATHS, POLICIES
from tests.stacks.harness import CLOUDS, EXAMPLES, Resource, StackRun, policy_violations, run_stack

FIREWALL_TYPES = {
    "gce": "gcp:compute/firewall:Firewall",
    "azure": "azure-native:network:NetworkSecurityGroup",
    "aws": "aws:ec2/securityGroup:SecurityGroup",
    "openstack": "openstack:networking/secGroupRule:SecGroupRule",
}


def mutated(resources: list[Resource], resource_type: str, change: Callable[[dict[str, Any]], None]) -> list[Resource]:
    """`resources` with `change` applied to a copy of the inputs of every resource of `resource_type`."""
    assert any(r.type == resource_type for r in resources), f"no {resource_type} recorded"
    out = []
    for resource in resources:
        inputs = copy.deepcopy(resource.inputs)
        if resource.type == resource_type:
            change(inputs)
        out.append(Resource(resource.type, resource.name, inputs, resource.provider))
    return out


def policies_hit(resources: list[Resource]) -> set[str]:
    return {policy for policy, _, _ in policy_violations(resources)}


def world_spec(cloud: str, directory: Path) -> Path:
    """The cloud's example with SSH deliberately opened to the world (ssh.allow_world: true)."""
    document = yaml.safe_load((EXAMPLES / f"{cloud}.yaml").read_text())
    document["ssh"]["allowed_cidrs"] = ["0.0.0.0/0", "::/0"]
    document["ssh"]["allow_world"] = True
    path = directory / f"{cloud}-world.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_pack_has_the_six_policies() -> None:
    assert [p.name for p in POLICIES] == [
        "devserver-no-world-ingress",
        "devserver-no-world-cluster-endpoint",
        "devserver-disks-encrypted",
        "devserver-gce-gpu-terminate",
        "devserver-aws-imdsv2",
        "devserver-required-labels",
    ]


def test_examples_and_fixture_specs_pass_every_policy(
    examples: dict[str, StackRun], fixture_runs: dict[str, StackRun]
) -> None:
    for cloud, run in [*examples.items(), *fixture_runs.items()]:
        assert policy_violations(run.resources) == [], cloud


def test_every_labelled_resource_type_is_checked_for_the_label(
    examples: dict[str, StackRun], fixture_runs: dict[str, StackRun]
) -> None:
    """A resource type that takes labels but is missing from LABEL_PATHS would escape the labels policy."""
    label_keys = {"labels", "tags", "resourceLabels", "metadata"}
    for run in [*examples.values(), *fixture_runs.values()]:
        for resource in run.resources:
            if resource.type.startswith(("devserver:", "pulumi:providers:")):
                continue
            nested = resource.inputs.get("nodeConfig", {})
            if label_keys & (set(resource.inputs) | set(nested)):
                assert resource.type in LABEL_PATHS, resource.type


@pytest.mark.parametrize("cloud", CLOUDS)
def test_world_open_ssh_passes_only_with_the_specs_consent(cloud: str, tmp_path: Path) -> None:
    run = run_stack(cloud, world_spec(cloud, tmp_path))
    firewall_type = FIREWALL_TYPES[cloud]
    assert policy_violations(run.resources) == []  # the spec said allow_world: the marker lets it through

    def strip_marker(inputs: dict[str, Any]) -> None:
        for key in ("tags", "labels"):
            if isinstance(inputs.get(key), dict):
                inputs[key].pop("devserver-allow-world", None)
            elif isinstance(inputs.get(key), list):
                inputs[key] = [t for t in inputs[key] if not t.startswith("devserver-allow-world=")]
        if "description" in inputs:
            inputs["description"] = inputs["description"].replace(" [devserver-allow-world=true]", "")

    found = policy_violations(mutated(run.resources, firewall_type, strip_marker))
    rejected = {(policy, name) for policy, name, _ in found}
    assert rejected == {("devserver-no-world-ingress", r.name) for r in run.of_type(firewall_type)}
    assert all("0.0.0.0/0" in message or "::/0" in message for _, _, message in found)


@pytest.mark.parametrize(
    ("cloud", "resource_type", "change"),
    [
        ("gce", "gcp:compute/firewall:Firewall", lambda i: i.update(sourceRanges=["0.0.0.0/0"])),
        ("gce", "gcp:compute/firewall:Firewall", lambda i: i.pop("sourceRanges")),
        (
            "azure",
            "azure-native:network:NetworkSecurityGroup",
            lambda i: i["securityRules"][0].update(sourceAddressPrefixes=["Internet"]),
        ),
        ("aws", "aws:ec2/securityGroup:SecurityGroup", lambda i: i["ingress"][0].update(ipv6CidrBlocks=["::/0"])),
        ("openstack", "openstack:networking/secGroupRule:SecGroupRule", lambda i: i.pop("remoteIpPrefix")),
    ],
    ids=["gce-world", "gce-no-source", "azure-internet", "aws-ipv6-world", "openstack-no-prefix"],
)
def test_world_open_ingress_without_consent_is_rejected(
    examples: dict[str, StackRun], cloud: str, resource_type: str, change: Callable[[dict[str, Any]], None]
) -> None:
    assert policies_hit(mutated(examples[cloud].resources, resource_type, change)) == {"devserver-no-world-ingress"}


GKE, EKS, AKS = (
    "gcp:container/cluster:Cluster",
    "aws:eks/cluster:Cluster",
    "azure-native:containerservice:ManagedCluster",
)


def cluster_runs(examples: dict[str, StackRun], fixture_runs: dict[str, StackRun]) -> dict[str, StackRun]:
    """The runs with a managed cluster: the GKE and AKS fixtures, the AWS example (EKS)."""
    return {"gce": fixture_runs["gce"], "azure": fixture_runs["azure"], "aws": examples["aws"]}


@pytest.mark.parametrize(
    ("cloud", "resource_type", "change"),
    [
        ("gce", GKE, lambda i: i.pop("masterAuthorizedNetworksConfig")),
        ("gce", GKE, lambda i: i["masterAuthorizedNetworksConfig"]["cidrBlocks"].append({"cidrBlock": "0.0.0.0/0"})),
        ("gce", GKE, lambda i: i["masterAuthorizedNetworksConfig"].update(gcpPublicCidrsAccessEnabled=True)),
        (
            "gce",
            GKE,
            lambda i: i.update(controlPlaneEndpointsConfig={"dnsEndpointConfig": {"allowExternalTraffic": True}}),
        ),
        ("aws", EKS, lambda i: i["vpcConfig"].pop("publicAccessCidrs")),
        ("aws", EKS, lambda i: i["vpcConfig"].update(publicAccessCidrs=["::/0"])),
        ("azure", AKS, lambda i: i.pop("apiServerAccessProfile")),
        ("azure", AKS, lambda i: i["apiServerAccessProfile"].update(authorizedIPRanges=[])),
        ("azure", AKS, lambda i: i["apiServerAccessProfile"]["authorizedIPRanges"].append("0.0.0.0/0")),
    ],
    ids=[
        "gke-no-authorized-networks",
        "gke-world-block",
        "gke-every-google-cloud-vm",
        "gke-dns-endpoint-external",
        "eks-no-public-access-cidrs",
        "eks-ipv6-world",
        "aks-no-access-profile",
        "aks-no-ranges",
        "aks-world-range",
    ],
)
def test_world_open_cluster_endpoint_is_rejected(
    examples: dict[str, StackRun],
    fixture_runs: dict[str, StackRun],
    cloud: str,
    resource_type: str,
    change: Callable[[dict[str, Any]], None],
) -> None:
    resources = mutated(cluster_runs(examples, fixture_runs)[cloud].resources, resource_type, change)
    found = policy_violations(resources)
    assert {policy for policy, _, _ in found} == {"devserver-no-world-cluster-endpoint"}
    assert [name for _, name, _ in found] == [r.name for r in resources if r.type == resource_type]
    assert all("reachable from the whole internet" in message for _, _, message in found)


@pytest.mark.parametrize(
    ("cloud", "resource_type", "change"),
    [
        # A private endpoint is not reachable from the internet at all, whatever the ACL says.
        (
            "gce",
            GKE,
            lambda i: (
                i.pop("masterAuthorizedNetworksConfig"),
                i.update(privateClusterConfig={"enablePrivateEndpoint": True}),
            ),
        ),
        (
            "aws",
            EKS,
            lambda i: (i["vpcConfig"].pop("publicAccessCidrs"), i["vpcConfig"].update(endpointPublicAccess=False)),
        ),
        ("azure", AKS, lambda i: i.update(apiServerAccessProfile={"enablePrivateCluster": True})),
        # Narrower ACLs stay accepted.
        ("gce", GKE, lambda i: i["masterAuthorizedNetworksConfig"].update(cidrBlocks=[{"cidrBlock": "192.0.2.1/32"}])),
        ("aws", EKS, lambda i: i["vpcConfig"].update(publicAccessCidrs=["192.0.2.0/24", "198.51.100.0/24"])),
        ("azure", AKS, lambda i: i["apiServerAccessProfile"].update(authorizedIPRanges=["192.0.2.1/32"])),
    ],
    ids=["gke-private", "eks-private", "aks-private", "gke-narrow", "eks-narrow", "aks-narrow"],
)
def test_restricted_or_private_cluster_endpoint_passes(
    examples: dict[str, StackRun],
    fixture_runs: dict[str, StackRun],
    cloud: str,
    resource_type: str,
    change: Callable[[dict[str, Any]], None],
) -> None:
    resources = mutated(cluster_runs(examples, fixture_runs)[cloud].resources, resource_type, change)
    assert policy_violations(resources) == []


@pytest.mark.parametrize(
    ("cloud", "resource_type", "change"),
    [
        ("aws", "aws:ebs/volume:Volume", lambda i: i.update(encrypted=False)),
        ("aws", "aws:ec2/instance:Instance", lambda i: i["rootBlockDevice"].pop("encrypted")),
        (
            "aws",
            "aws:ec2/launchTemplate:LaunchTemplate",
            lambda i: i["blockDeviceMappings"][0]["ebs"].update(encrypted="false"),
        ),
        ("azure", "azure-native:compute:VirtualMachine", lambda i: i.update(securityProfile={})),
    ],
    ids=["aws-volume", "aws-root", "aws-launch-template", "azure-host"],
)
def test_unencrypted_disks_are_rejected(
    examples: dict[str, StackRun], cloud: str, resource_type: str, change: Callable[[dict[str, Any]], None]
) -> None:
    assert policies_hit(mutated(examples[cloud].resources, resource_type, change)) == {"devserver-disks-encrypted"}


def test_aks_pools_without_encryption_at_host_are_rejected(fixture_runs: dict[str, StackRun]) -> None:
    resources = fixture_runs["azure"].resources
    pool = mutated(resources, "azure-native:containerservice:AgentPool", lambda i: i.pop("enableEncryptionAtHost"))
    system = mutated(
        resources,
        "azure-native:containerservice:ManagedCluster",
        lambda i: i["agentPoolProfiles"][0].update(enableEncryptionAtHost=False),
    )
    assert policies_hit(pool) == policies_hit(system) == {"devserver-disks-encrypted"}


def test_gce_gpu_vms_must_terminate_on_maintenance(
    examples: dict[str, StackRun], fixture_runs: dict[str, StackRun]
) -> None:
    instance = "gcp:compute/instance:Instance"

    def migrate(inputs: dict[str, Any]) -> None:
        inputs["scheduling"]["onHostMaintenance"] = "MIGRATE"

    # N1 + attached T4, and a G2 machine type whose L4 comes with it (known from the catalog).
    assert policies_hit(mutated(examples["gce"].resources, instance, migrate)) == {"devserver-gce-gpu-terminate"}
    assert policies_hit(mutated(fixture_runs["gce"].resources, instance, migrate)) == {"devserver-gce-gpu-terminate"}

    def cpu_only(inputs: dict[str, Any]) -> None:
        migrate(inputs)
        inputs.pop("guestAccelerators")
        inputs["machineType"] = "zones/europe-west4-a/machineTypes/e2-standard-8"

    assert policies_hit(mutated(examples["gce"].resources, instance, cpu_only)) == set()


@pytest.mark.parametrize(
    ("resource_type", "change"),
    [
        ("aws:ec2/instance:Instance", lambda i: i["metadataOptions"].update(httpTokens="optional")),
        ("aws:ec2/launchTemplate:LaunchTemplate", lambda i: i.pop("metadataOptions")),
    ],
    ids=["instance", "launch-template"],
)
def test_aws_requires_imdsv2(
    examples: dict[str, StackRun], resource_type: str, change: Callable[[dict[str, Any]], None]
) -> None:
    assert policies_hit(mutated(examples["aws"].resources, resource_type, change)) == {"devserver-aws-imdsv2"}


@pytest.mark.parametrize(
    ("cloud", "resource_type", "change"),
    [
        ("gce", "gcp:compute/disk:Disk", lambda i: i["labels"].pop("devserver")),
        ("azure", "azure-native:network:PublicIPAddress", lambda i: i.pop("tags")),
        ("aws", "aws:eks/nodeGroup:NodeGroup", lambda i: i["tags"].update(devserver="")),
        ("openstack", "openstack:networking/secGroup:SecGroup", lambda i: i.update(tags=["team=ml"])),
        ("openstack", "openstack:compute/instance:Instance", lambda i: i.update(metadata={})),
    ],
    ids=["gce-disk", "azure-ip", "aws-node-group", "openstack-tags", "openstack-metadata"],
)
def test_resources_without_the_devserver_label_are_rejected(
    examples: dict[str, StackRun], cloud: str, resource_type: str, change: Callable[[dict[str, Any]], None]
) -> None:
    assert policies_hit(mutated(examples[cloud].resources, resource_type, change)) == {"devserver-required-labels"}


def test_gke_node_pool_labels_are_checked(fixture_runs: dict[str, StackRun]) -> None:
    broken = mutated(
        fixture_runs["gce"].resources,
        "gcp:container/nodePool:NodePool",
        lambda i: i["nodeConfig"].pop("resourceLabels"),
    )
    assert policies_hit(broken) == {"devserver-required-labels"}


@pytest.mark.parametrize(
    ("resource_type", "props", "rejected"),
    [
        # Rule resources the stacks do not create but a user might add beside them.
        (
            "aws:ec2/securityGroupRule:SecurityGroupRule",
            {"type": "ingress", "cidrBlocks": ["0.0.0.0/0"], "fromPort": 22, "toPort": 22},
            True,
        ),
        ("aws:ec2/securityGroupRule:SecurityGroupRule", {"type": "egress", "cidrBlocks": ["0.0.0.0/0"]}, False),
        ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", {"cidrIpv6": "::/0"}, True),
        ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", {"cidrIpv4": "192.0.2.0/24"}, False),
        (
            "azure-native:network:SecurityRule",
            {"direction": "Inbound", "access": "Allow", "sourceAddressPrefix": "*"},
            True,
        ),
        (
            "azure-native:network:SecurityRule",
            {"direction": "Inbound", "access": "Deny", "sourceAddressPrefix": "*"},
            False,
        ),
        (
            "azure-native:network:SecurityRule",
            {
                "direction": "Inbound",
                "access": "Allow",
                "sourceAddressPrefix": "*",
                "description": "SSH [devserver-allow-world=true]",
            },
            False,
        ),
        (
            "gcp:compute/firewall:Firewall",
            {"direction": "EGRESS", "allows": [{"protocol": "all"}], "destinationRanges": ["0.0.0.0/0"]},
            False,
        ),
        ("gcp:compute/firewall:Firewall", {"denies": [{"protocol": "tcp"}], "sourceRanges": ["0.0.0.0/0"]}, False),
        ("openstack:networking/secGroupRule:SecGroupRule", {"direction": "ingress", "remoteGroupId": "sg-1"}, False),
    ],
)
def test_rule_resources_beside_the_stack(resource_type: str, props: dict[str, Any], rejected: bool) -> None:
    hit = policies_hit([Resource(resource_type, "extra-rule", props)])
    assert hit == ({"devserver-no-world-ingress"} if rejected else set())
