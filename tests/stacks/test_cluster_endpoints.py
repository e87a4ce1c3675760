"""Managed cluster API endpoints under mocks: for every address-family mix a spec may hold, the GKE, EKS and AKS
endpoints admit exactly the spec's networks their ACL can express (IPv4), never 0.0.0.0/0 or ::/0; a spec with no
such network is refused before anything is registered."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from devserver import registry
from devserver.errors import SpecError
from devserver.loader import load_spec
from devserver.plan import resolve
from tests.stacks.harness import EXAMPLES, SPECS, Resource, StackRun, policy_violations, run_stack

CLUSTER_TYPES = {
    "gce": "gcp:container/cluster:Cluster",
    "aws": "aws:eks/cluster:Cluster",
    "azure": "azure-native:containerservice:ManagedCluster",
}
# The corpus's specs with a managed cluster that build, and the mix each covers; with the AWS example (both
# families) every cloud has an IPv4-only and a dual-stack spec.
BUILDING = {
    "gke-ipv4.yaml": "gce",
    "gce-gke.yaml": "gce",
    "eks-ipv4.yaml": "aws",
    "azure-aks.yaml": "azure",
    "aks-dual-stack.yaml": "azure",
}
IPV6_ONLY = {"gke-ipv6-only.yaml": "gce", "eks-ipv6-only.yaml": "aws", "aks-ipv6-only.yaml": "azure"}


def endpoint_acl(resource: Resource) -> list[str] | None:
    """The networks a recorded cluster's public endpoint admits, or None when it has no ACL (open to all)."""
    inputs: dict[str, Any] = resource.inputs
    if resource.type == CLUSTER_TYPES["gce"]:
        config = inputs.get("masterAuthorizedNetworksConfig")
        if config is None:
            return None
        assert config.get("gcpPublicCidrsAccessEnabled") is False
        return [block["cidrBlock"] for block in config.get("cidrBlocks", [])]
    if resource.type == CLUSTER_TYPES["aws"]:
        vpc = inputs["vpcConfig"]
        assert vpc["endpointPublicAccess"] is True
        return vpc.get("publicAccessCidrs")
    profile = inputs.get("apiServerAccessProfile")
    return None if profile is None else profile.get("authorizedIPRanges")


def ipv4(cidrs: list[str]) -> list[str]:
    return [cidr for cidr in cidrs if ipaddress.ip_network(cidr).version == 4]


def assert_restricted(cloud: str, spec: Path, run: StackRun) -> None:
    """The cluster's endpoint admits exactly the spec's IPv4 networks, and none of them is the whole internet."""
    (cluster,) = run.of_type(CLUSTER_TYPES[cloud])
    acl = endpoint_acl(cluster)
    wanted = ipv4(load_spec(spec).ssh.allowed_cidrs)
    assert acl is not None, f"{spec.name}: the {cloud} cluster endpoint has no ACL"
    assert acl == wanted, spec.name
    assert acl, spec.name
    assert not any(ipaddress.ip_network(c).prefixlen == 0 for c in acl), spec.name


def test_the_corpus_covers_every_mix_on_every_cloud() -> None:
    mixes: dict[str, set[str]] = {}
    for name, cloud in [*BUILDING.items(), *IPV6_ONLY.items()]:
        families = {ipaddress.ip_network(c).version for c in load_spec(SPECS / name).ssh.allowed_cidrs}
        mixes.setdefault(cloud, set()).add(
            {frozenset({4}): "v4", frozenset({6}): "v6"}.get(frozenset(families), "both")
        )
    mixes["aws"].add("both")  # examples/aws.yaml: 203.0.113.0/24 and 2001:db8::/48
    assert mixes == {cloud: {"v4", "v6", "both"} for cloud in CLUSTER_TYPES}
    cluster_specs = {p.name for p in SPECS.glob("*.yaml") if "node_pools" in p.read_text()}
    assert cluster_specs == set(BUILDING) | set(IPV6_ONLY), "a new cluster spec belongs in BUILDING or IPV6_ONLY"


def test_every_cloud_with_node_pools_knows_its_endpoint_acl() -> None:
    for name in registry.with_capability("node_pools"):
        endpoint = registry.get(name).cluster_endpoint
        assert endpoint is not None, name
        assert endpoint.families == frozenset({4}), name
        assert endpoint.source.startswith("https://"), name


@pytest.mark.parametrize(("name", "cloud"), sorted(BUILDING.items()))
def test_corpus_cluster_endpoint_admits_only_the_specs_ipv4_networks(name: str, cloud: str) -> None:
    run = run_stack(cloud, SPECS / name)
    assert_restricted(cloud, SPECS / name, run)
    assert policy_violations(run.resources) == []


def test_example_cluster_endpoint_is_restricted(examples: dict[str, StackRun]) -> None:
    # The AWS example is dual-stack: the IPv4 cluster's endpoint takes its IPv4 network; the IPv6 one cannot reach it.
    assert_restricted("aws", EXAMPLES / "aws.yaml", examples["aws"])
    clusters = [r for run in examples.values() for r in run.resources if r.type in CLUSTER_TYPES.values()]
    assert [r.type for r in clusters] == [CLUSTER_TYPES["aws"]]


@pytest.mark.parametrize(("name", "cloud"), sorted(IPV6_ONLY.items()))
def test_ipv6_only_networks_are_refused_at_plan_and_by_the_stack(name: str, cloud: str) -> None:
    spec = SPECS / name
    with pytest.raises(SpecError) as info:
        resolve(load_spec(spec), str(spec))
    (problem,) = info.value.problems
    service = {"gce": "GKE", "aws": "EKS", "azure": "AKS"}[cloud]
    assert problem.path == "ssh.allowed_cidrs"
    assert f"the {service} API endpoint" in problem.message
    assert "IPv4 only" in problem.message
    assert "IPv4 network you run kubectl from" in problem.fix
    run = StackRun([], [])
    with pytest.raises(pulumi.RunError, match=r"ssh\.allowed_cidrs: has no IPv4 network"):
        run_stack(cloud, spec, run)
    assert run.resources == []


@pytest.mark.parametrize(
    ("name", "cloud"), [("gke-ipv4.yaml", "gce"), ("eks-ipv4.yaml", "aws"), ("azure-aks.yaml", "azure")]
)
def test_world_open_endpoint_only_with_the_allow_world_marker(name: str, cloud: str, tmp_path: Path) -> None:
    """ssh.allow_world with 0.0.0.0/0: the endpoint is world-open, and the cluster carries the marker the policy
    reads; without the marker the same cluster is rejected."""
    document = yaml.safe_load((SPECS / name).read_text())
    document["ssh"].update(allowed_cidrs=["0.0.0.0/0", "::/0"], allow_world=True)
    spec = tmp_path / name
    spec.write_text(yaml.safe_dump(document))
    run = run_stack(cloud, spec)
    (cluster,) = run.of_type(CLUSTER_TYPES[cloud])
    assert endpoint_acl(cluster) == ["0.0.0.0/0"]
    assert policy_violations(run.resources) == []
    labels_key = "resourceLabels" if cloud == "gce" else "tags"
    unmarked = Resource(
        cluster.type,
        cluster.name,
        {
            **cluster.inputs,
            labels_key: {k: v for k, v in cluster.inputs[labels_key].items() if k != "devserver-allow-world"},
        },
    )
    found = policy_violations([unmarked])
    assert [(policy, res) for policy, res, _ in found] == [("devserver-no-world-cluster-endpoint", cluster.name)]
    assert "0.0.0.0/0" in found[0][2]
