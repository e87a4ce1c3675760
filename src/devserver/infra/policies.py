"""The devserver policy pack's policies, importable so tests can call each one's ``validate`` directly.

``policy/__main__.py`` builds the :class:`pulumi_policy.PolicyPack` from :data:`POLICIES` (building one in-process
starts the analyzer server and blocks, so only that file does). Each check reads the resource's inputs as the Pulumi
engine sends them (camelCase property names), which is also what ``pulumi.runtime.Mocks`` records.

The checks:

- no ingress from the whole internet (0.0.0.0/0, ::/0, Azure's ``*``/``Internet``, or an OpenStack/GCE rule with
  no source at all) unless the resource carries the allow-world marker the components set for
  ``ssh.allow_world: true``;
- no managed Kubernetes API endpoint (GKE, EKS, AKS) reachable from the whole internet — no ACL at all, or one
  admitting 0.0.0.0/0 or ::/0 — unless the cluster carries the same allow-world marker;
- disks encrypted (EBS root/data volumes and launch templates; Azure encryption at host; GCE encrypts every disk
  with Google-managed keys, so there is nothing to check there);
- GCE GPU VMs use ``onHostMaintenance = TERMINATE``;
- AWS instances and launch templates require IMDSv2;
- the ``devserver`` label/tag on every resource type that takes labels.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeGuard

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from devserver import catalog
from devserver.infra.common import ALLOW_WORLD_LABEL, ALLOW_WORLD_MARKER, NAME_LABEL

Props = Mapping[str, Any]

# Helpers.


def _is_world(prefix: object) -> bool:
    """True for a source meaning 'anyone': a /0 network of either family, or Azure's '*', 'Internet', 'Any'."""
    if not isinstance(prefix, str):
        return False
    if prefix.strip().lower() in {"*", "internet", "any"}:
        return True
    try:
        return ipaddress.ip_network(prefix.strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def _world(sources: Iterable[object]) -> list[str]:
    """The world-open entries among `sources`."""
    return [str(source) for source in sources if _is_world(source)]


def _allows_world(props: Props) -> bool:
    """Whether the resource carries the allow-world marker: a label/tag (mapping or OpenStack 'k=v' list), or the
    marker in its description on resources that take no labels."""
    for key in ("labels", "tags", "resourceLabels"):
        value = props.get(key)
        if _mapping(value).get(ALLOW_WORLD_LABEL) == "true" or ALLOW_WORLD_MARKER in _list(value):
            return True
    description = props.get("description")
    return isinstance(description, str) and ALLOW_WORLD_MARKER in description


# Engine property values are JSON-like data: lists and string-keyed mappings of anything.
def _is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def _is_mapping(value: object) -> TypeGuard[Props]:
    return isinstance(value, Mapping)


def _list(value: object) -> list[Any]:
    """`value` if it is a list, else an empty list."""
    return value if _is_list(value) else []


def _mapping(value: object) -> Props:
    """`value` if it is a mapping, else an empty one."""
    return value if _is_mapping(value) else {}


def _get(props: Props, *path: str) -> object:
    """props[path[0]][path[1]]..., or None where a level is missing."""
    value: object = props
    for key in path:
        value = _mapping(value).get(key)
    return value


# No world-open ingress.


def _world_sources(resource_type: str, props: Props) -> list[str]:
    """The world-open sources of the ingress rules in a firewall-like resource (empty when there are none)."""
    found: list[str] = []
    if resource_type == "gcp:compute/firewall:Firewall":
        if props.get("direction", "INGRESS") == "INGRESS" and _list(props.get("allows")):
            sources = _list(props.get("sourceRanges"))
            if not sources and not props.get("sourceTags") and not props.get("sourceServiceAccounts"):
                found.append("no source (GCE defaults to 0.0.0.0/0)")
            found += _world(sources)
    elif resource_type == "azure-native:network:NetworkSecurityGroup":
        for rule in _list(props.get("securityRules")):
            found += _nsg_rule_world(rule)
    elif resource_type == "azure-native:network:SecurityRule":
        found += _nsg_rule_world(props)
    elif resource_type == "aws:ec2/securityGroup:SecurityGroup":
        for rule in _list(props.get("ingress")):
            found += _world(_list(rule.get("cidrBlocks")) + _list(rule.get("ipv6CidrBlocks")))
    elif resource_type == "aws:ec2/securityGroupRule:SecurityGroupRule":
        if props.get("type") == "ingress":
            found += _world(_list(props.get("cidrBlocks")) + _list(props.get("ipv6CidrBlocks")))
    elif resource_type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        found += _world((props.get("cidrIpv4"), props.get("cidrIpv6")))
    elif resource_type == "openstack:networking/secGroupRule:SecGroupRule" and props.get("direction") == "ingress":
        prefix = props.get("remoteIpPrefix")
        if not prefix and not props.get("remoteGroupId") and not props.get("remoteAddressGroupId"):
            found.append("no remote prefix (OpenStack admits everyone)")
        else:
            found += _world([prefix])
    return found


def _nsg_rule_world(rule: Mapping[str, Any]) -> list[str]:
    """The world-open prefixes an inbound Allow rule of a network security group admits."""
    if rule.get("direction") != "Inbound" or rule.get("access") != "Allow":
        return []
    return _world([rule.get("sourceAddressPrefix"), *_list(rule.get("sourceAddressPrefixes"))])


def no_world_ingress(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Reject ingress rules open to the whole internet unless the spec allowed it (``ssh.allow_world``)."""
    world = _world_sources(args.resource_type, args.props)
    if world and not _allows_world(args.props):
        report_violation(
            f"{args.name} admits ingress from the whole internet ({', '.join(world)}); list your networks in "
            f"ssh.allowed_cidrs, or set ssh.allow_world: true if you really mean it",
            None,
        )


# No cluster API endpoint open to the internet.


def _open_endpoint(resource_type: str, props: Props) -> list[str]:
    """Why a managed cluster's public API endpoint admits the whole internet (empty when it does not)."""
    found: list[str] = []
    if resource_type == "gcp:container/cluster:Cluster":
        private = _get(props, "privateClusterConfig", "enablePrivateEndpoint") is True
        ip_endpoint_off = _get(props, "controlPlaneEndpointsConfig", "ipEndpointsConfig", "enabled") is False
        if not private and not ip_endpoint_off:
            config = props.get("masterAuthorizedNetworksConfig")
            if not _is_mapping(config):
                found.append("no master authorized networks (GKE admits every address)")
            else:
                found += _world(_mapping(block).get("cidrBlock") for block in _list(config.get("cidrBlocks")))
                if config.get("gcpPublicCidrsAccessEnabled") is True:
                    found.append("gcpPublicCidrsAccessEnabled (any Google Cloud VM's public IP)")
        if _get(props, "controlPlaneEndpointsConfig", "dnsEndpointConfig", "allowExternalTraffic") is True:
            found.append("the DNS endpoint allows external traffic")
    elif resource_type == "aws:eks/cluster:Cluster":
        vpc = _mapping(props.get("vpcConfig"))
        if vpc.get("endpointPublicAccess") is not False:
            cidrs = _list(vpc.get("publicAccessCidrs"))
            found += _world(cidrs) if cidrs else ["no publicAccessCidrs (EKS defaults to 0.0.0.0/0)"]
    elif resource_type == "azure-native:containerservice:ManagedCluster":
        profile = _mapping(props.get("apiServerAccessProfile"))
        if profile.get("enablePrivateCluster") is not True:
            ranges = _list(profile.get("authorizedIPRanges"))
            found += _world(ranges) if ranges else ["no authorizedIPRanges (AKS admits every address)"]
    return found


def no_world_cluster_endpoint(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Reject a managed Kubernetes API endpoint reachable from the whole internet unless the spec allowed it."""
    reasons = _open_endpoint(args.resource_type, args.props)
    if reasons and not _allows_world(args.props):
        report_violation(
            f"{args.name}: the cluster API endpoint is reachable from the whole internet ({', '.join(reasons)}); "
            f"list your networks in ssh.allowed_cidrs, or set ssh.allow_world: true if you really mean it",
            None,
        )


# Disks encrypted.


def _unencrypted_disks(resource_type: str, props: Props) -> list[str]:
    if resource_type == "aws:ec2/instance:Instance":
        bad = [] if _get(props, "rootBlockDevice", "encrypted") is True else ["root volume"]
        bad += [
            f"EBS volume {d.get('deviceName', '?')}"
            for d in _list(props.get("ebsBlockDevices"))
            if d.get("encrypted") is not True
        ]
        return bad
    if resource_type == "aws:ebs/volume:Volume":
        return [] if props.get("encrypted") is True else ["the volume"]
    if resource_type == "aws:ec2/launchTemplate:LaunchTemplate":
        mappings = _list(props.get("blockDeviceMappings"))
        if not mappings:
            return ["the root volume (no block device mapping sets encrypted)"]
        return [
            f"block device {m.get('deviceName', '?')}"
            for m in mappings
            if str(_get(m, "ebs", "encrypted")).lower() != "true"
        ]
    if resource_type == "azure-native:compute:VirtualMachine":
        return [] if _get(props, "securityProfile", "encryptionAtHost") is True else ["host (encryptionAtHost)"]
    if resource_type == "azure-native:containerservice:AgentPool":
        return [] if props.get("enableEncryptionAtHost") is True else ["node hosts (enableEncryptionAtHost)"]
    if resource_type == "azure-native:containerservice:ManagedCluster":
        return [
            f"agent pool {p.get('name', '?')} (enableEncryptionAtHost)"
            for p in _list(props.get("agentPoolProfiles"))
            if p.get("enableEncryptionAtHost") is not True
        ]
    return []


def disks_encrypted(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Require encryption on every disk where the cloud leaves it optional."""
    bad = _unencrypted_disks(args.resource_type, args.props)
    if bad:
        report_violation(f"{args.name}: not encrypted: {', '.join(bad)}", None)


# GCE GPU VMs terminate on maintenance.


def _gce_gpu_machine(machine_type: object) -> bool:
    """Whether a GCE machine type carries GPUs of its own (per the catalog)."""
    if not isinstance(machine_type, str):
        return False
    return machine_type.rsplit("/", 1)[-1] in catalog.load().clouds["gce"].machines


def gce_gpu_terminate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """GPU VMs cannot live-migrate: GCE needs ``scheduling.onHostMaintenance = TERMINATE`` for them."""
    if args.resource_type != "gcp:compute/instance:Instance":
        return
    props = args.props
    if not _list(props.get("guestAccelerators")) and not _gce_gpu_machine(props.get("machineType")):
        return
    if _get(props, "scheduling", "onHostMaintenance") != "TERMINATE":
        report_violation(f"{args.name} has GPUs but does not set scheduling.onHostMaintenance = TERMINATE", None)


# AWS IMDSv2.


def aws_imdsv2(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Instances and launch templates must require IMDSv2 session tokens (``httpTokens = required``)."""
    if args.resource_type not in ("aws:ec2/instance:Instance", "aws:ec2/launchTemplate:LaunchTemplate"):
        return
    if _get(args.props, "metadataOptions", "httpTokens") != "required":
        report_violation(f"{args.name} allows IMDSv1: set metadata_options.http_tokens = 'required'", None)


# Required labels.

#: Where each labelled resource type keeps its labels/tags (a mapping, or an OpenStack list of 'key=value').
LABEL_PATHS: Mapping[str, tuple[str, ...]] = {
    "gcp:compute/instance:Instance": ("labels",),
    "gcp:compute/disk:Disk": ("labels",),
    "gcp:compute/address:Address": ("labels",),
    "gcp:container/cluster:Cluster": ("resourceLabels",),
    "gcp:container/nodePool:NodePool": ("nodeConfig", "resourceLabels"),
    **{
        f"azure-native:{kind}": ("tags",)
        for kind in (
            "resources:ResourceGroup",
            "network:VirtualNetwork",
            "network:NetworkSecurityGroup",
            "network:PublicIPAddress",
            "network:NetworkInterface",
            "compute:VirtualMachine",
            "compute:Disk",
            "containerservice:ManagedCluster",
            "containerservice:AgentPool",
        )
    },
    **{
        f"aws:{kind}": ("tags",)
        for kind in (
            "ec2/instance:Instance",
            "ebs/volume:Volume",
            "ec2/securityGroup:SecurityGroup",
            "ec2/keyPair:KeyPair",
            "ec2/eip:Eip",
            "ec2/launchTemplate:LaunchTemplate",
            "iam/role:Role",
            "eks/cluster:Cluster",
            "eks/nodeGroup:NodeGroup",
        )
    },
    "openstack:compute/instance:Instance": ("metadata",),
    "openstack:blockstorage/volume:Volume": ("metadata",),
    "openstack:networking/secGroup:SecGroup": ("tags",),
    "openstack:networking/port:Port": ("tags",),
    "openstack:networking/floatingIp:FloatingIp": ("tags",),
}


def _name_label(labels: object) -> str | None:
    """The devserver name in a label mapping or an OpenStack list of 'key=value' tags."""
    entries = [f"{key}={value}" for key, value in _mapping(labels).items()] + [str(e) for e in _list(labels)]
    for entry in entries:
        key, _, value = entry.partition("=")
        if key == NAME_LABEL and value:
            return value
    return None


def required_labels(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every labelled resource names its devserver (label/tag ``devserver``), so costs and leftovers trace back."""
    path = LABEL_PATHS.get(args.resource_type)
    if path is not None and _name_label(_get(args.props, *path)) is None:
        report_violation(f"{args.name} lacks the '{NAME_LABEL}' label/tag in {'.'.join(path)}", None)


# The pack's contents.

Validate = Callable[[ResourceValidationArgs, ReportViolation], None]


def _policy(name: str, validate: Validate) -> ResourceValidationPolicy:
    description = (validate.__doc__ or name).strip()
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES: tuple[ResourceValidationPolicy, ...] = (
    _policy("devserver-no-world-ingress", no_world_ingress),
    _policy("devserver-no-world-cluster-endpoint", no_world_cluster_endpoint),
    _policy("devserver-disks-encrypted", disks_encrypted),
    _policy("devserver-gce-gpu-terminate", gce_gpu_terminate),
    _policy("devserver-aws-imdsv2", aws_imdsv2),
    _policy("devserver-required-labels", required_labels),
)
