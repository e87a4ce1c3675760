"""AWS: images as raw EBS snapshot blocks (or a streamOptimized VMDK for VM Import), the amazon-ebs Packer source
and the stock AMIs it starts from, and what the stack creates (an SSH security group, a key pair, the instance, its
data volume and attachment, an Elastic IP, and an EKS cluster with its IAM roles, launch template, system node
group and GPU node groups). The instance goes into the spec's subnet or the default VPC, which are looked up."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from devserver.registry import Capabilities, Cloud, ClusterEndpoint, Lazy, LoginFacts, PackerFacts
from devserver.registry import resources as r
from devserver.registry.resources import PlannedResource

# The spec models and the catalog are imported inside the functions: importing the registry stays cheap, as
# `devserver --help` imports it and must not load pydantic or the catalog.
if TYPE_CHECKING:
    from devserver.plan import Resolved


class StockAmi(NamedTuple):
    """Where Packer finds an OS's stock AMI, and what that AMI fixes: the user it logs in as, its root device."""

    name_pattern: str
    owner: str
    login_user: str
    root_device: str


# Debian: wiki.debian.org/Cloud/AmazonEC2Image; Ubuntu: documentation.ubuntu.com/aws/en/latest/aws-how-to/instances/
# find-ubuntu-images/
STOCK_AMIS: dict[str, StockAmi] = {
    "debian-12": StockAmi("debian-12-amd64-*", "136693071363", "admin", "/dev/xvda"),
    "ubuntu-22.04": StockAmi(
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*", "099720109477", "ubuntu", "/dev/sda1"
    ),
    "ubuntu-24.04": StockAmi(
        "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*", "099720109477", "ubuntu", "/dev/sda1"
    ),
}

# The managed policies of the EKS cluster role and the node role; each attachment is named after its policy.
CLUSTER_POLICIES = ("arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",)
NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)


# Key types: ImportKeyPair "imports the public key from an RSA or ED25519 key pair"
# (docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ImportKeyPair.html); ECDSA and FIDO keys are refused.
# AWS documents no reserved user names; the stock AMIs' own users (admin, ubuntu) are refused for every cloud.
LOGIN = LoginFacts(key_types=frozenset({"ssh-rsa", "ssh-ed25519"}))


def attachment_key(role: str, policy_arn: str) -> str:
    return f"{role}-{policy_arn.rsplit('/', 1)[-1]}"


def resources(resolved: Resolved) -> tuple[PlannedResource, ...]:
    from devserver.spec import AwsCloud

    spec = resolved.spec
    cloud = spec.cloud
    assert isinstance(cloud, AwsCloud)
    name = spec.name
    placement = (
        PlannedResource("subnet", cloud.subnet_id, {"state": "existing"}, existing=True)
        if cloud.subnet_id is not None
        else PlannedResource("VPC", "default VPC", {"state": "existing"}, existing=True)
    )
    details = {**r.vm_details(resolved), "metadata": "IMDSv2 required"}
    out = [
        placement,
        PlannedResource(
            "security group",
            f"{name}-ssh",
            r.ssh_details(spec.ssh.allowed_cidrs),
            "ssh",
            "aws:ec2/securityGroup:SecurityGroup",
        ),
        PlannedResource("key pair", f"{name}-key", {}, "key", "aws:ec2/keyPair:KeyPair"),
        PlannedResource("GPU VM", f"{name}-vm", details, "vm", "aws:ec2/instance:Instance"),
        PlannedResource("Elastic IP", f"{name}-ip", {}, "ip", "aws:ec2/eip:Eip"),
    ]
    if spec.disks.data is not None:
        out += [
            PlannedResource("data volume", f"{name}-data", r.data_details(resolved), "data", "aws:ebs/volume:Volume"),
            PlannedResource(
                "volume attachment", f"{name}-data", {}, "data-attachment", "aws:ec2/volumeAttachment:VolumeAttachment"
            ),
        ]
    if resolved.node_pools:
        for role, policies in (("eks-cluster", CLUSTER_POLICIES), ("eks-node", NODE_POLICIES)):
            out.append(PlannedResource("IAM role", f"{name}-{role}", {}, role, "aws:iam/role:Role"))
            out += [
                PlannedResource(
                    "IAM policy attachment",
                    f"{name}-{attachment_key(role, arn)}",
                    {"policy": arn},
                    attachment_key(role, arn),
                    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                )
                for arn in policies
            ]
        out += [
            PlannedResource(
                "EKS cluster", f"{name}-eks", r.cluster_details(resolved), "cluster", "aws:eks/cluster:Cluster"
            ),
            PlannedResource(
                "launch template", f"{name}-eks-node", {}, "node-template", "aws:ec2/launchTemplate:LaunchTemplate"
            ),
            PlannedResource("system node group", f"{name}-system", {}, "system-pool", "aws:eks/nodeGroup:NodeGroup"),
            *r.gpu_pools(resolved, "GPU node group", "aws:eks/nodeGroup:NodeGroup"),
        ]
    return tuple(out)


def packer_variables(resolved: Resolved) -> dict[str, object]:
    """The amazon-ebs source's variables: region, instance type, subnet, the stock AMI, spot."""
    from devserver.spec import AwsCloud

    spec, machine = resolved.spec, resolved.machine
    cloud = spec.cloud
    assert isinstance(cloud, AwsCloud)
    assert machine is not None
    ami = STOCK_AMIS[spec.os]
    return {
        "aws_region": cloud.region,
        "aws_instance_type": machine.type,
        "aws_subnet_id": cloud.subnet_id or "",
        "aws_source_ami_name": ami.name_pattern,
        "aws_source_ami_owner": ami.owner,
        "aws_root_device": ami.root_device,
        "aws_spot": spec.machine.spot,
    }


# publicAccessCidrs defaults to 0.0.0.0/0, and "You can't add IPv6 CIDR blocks to IPv4 clusters" (only IPv6
# clusters made after October 2024 have a dual-stack endpoint); the stack's EKS cluster is IPv4.
# https://docs.aws.amazon.com/eks/latest/APIReference/API_VpcConfigRequest.html
CLUSTER_ENDPOINT = ClusterEndpoint(
    service="EKS",
    acl="public access CIDRs",
    families=frozenset({4}),
    source="https://docs.aws.amazon.com/eks/latest/APIReference/API_VpcConfigRequest.html",
)


CLOUD = Cloud(
    name="aws",
    title="AWS",
    # EBS direct API snapshots take raw blocks; VM Import takes a streamOptimized VMDK.
    image_formats=(("raw", "disk.raw"), ("vmdk-stream", "disk.vmdk")),
    region_field="cloud.region",
    capabilities=Capabilities(node_pools=True, spot=True),
    resources=resources,
    packer=PackerFacts(
        "amazon-ebs", packer_variables, login_users={os: ami.login_user for os, ami in STOCK_AMIS.items()}
    ),
    component=Lazy("devserver.infra.aws", "AwsDevserver", extra="aws"),
    uploader=Lazy("devserver.clouds.aws", "from_options", extra="aws"),
    upload_sdk=("boto3",),
    login=LOGIN,
    cluster_endpoint=CLUSTER_ENDPOINT,
)
