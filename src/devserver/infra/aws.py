"""AWS: a GPU devserver (g4dn/g5/g6/p4d/p5, IMDSv2, encrypted EBS) and, when the spec has a ``kubernetes`` section,
an EKS cluster with GPU managed node groups on the NVIDIA AL2023 AMI."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from devserver.infra.common import (
    SSH_PORT,
    WORLD_CIDRS,
    DevserverComponent,
    DevserverOutputs,
    Taint,
    cidrs_by_family,
    cloud_init,
    exec_kubeconfig,
)
from devserver.plan import NodePoolPlan, Resolved
from devserver.registry.aws import CLUSTER_POLICIES, NODE_POLICIES, attachment_key
from devserver.spec import AwsCloud

VOLUME_TYPE = "gp3"
# Where the data volume is attached; on Nitro instances (every GPU type the catalog lists) the guest sees an NVMe
# device instead, whose model is "Amazon Elastic Block Store" and whose serial is the volume ID without its dash;
# systemd's 60-persistent-storage.rules link it as /dev/disk/by-id/nvme-<model>_<serial>, spaces made underscores
# (amazon-ec2-utils' ebsnvme-id reads the same volume ID back from the device).
DATA_DEVICE = "/dev/sdf"


def nvme_device(volume_id: str) -> str:
    """The stable path of EBS volume `volume_id` (vol-0123…) on a Nitro instance."""
    return f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"


# Untainted nodes for kube-system and the GPU operator's controllers: the GPU node groups are tainted.
SYSTEM_NODE_TYPE = "m6i.large"
GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
SYSTEM_AMI_TYPE = "AL2023_x86_64_STANDARD"
# The root device of the AL2023 EKS AMIs.
EKS_ROOT_DEVICE = "/dev/xvda"


def _assume_role_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class AwsDevserver(DevserverComponent):
    """A security group admitting SSH from the spec's CIDRs, a key pair, the GPU instance (IMDSv2 only, encrypted
    gp3 root, optional persistent spot), an encrypted EBS data volume and its attachment, an Elastic IP, and an EKS
    cluster with GPU node groups when the spec asks for them.

    Placement: the spec's subnet, or the region's default VPC (the default subnet of ``cloud.availability_zone``
    when given). The AMI is read from the SSM public parameter the catalog names, unless the spec gives an AMI ID.
    """

    RESOURCE_TYPE = "devserver:infra:AwsDevserver"

    def __init__(self, resolved: Resolved, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(resolved, opts)
        cloud = self.spec.cloud
        assert isinstance(cloud, AwsCloud)
        name = self.spec.name
        self.use_provider(aws.Provider(f"{name}-aws", region=cloud.region, opts=pulumi.ResourceOptions(parent=self)))
        vpc_id, subnet_id = self._placement(cloud)
        group = self._security_group(vpc_id)
        key = aws.ec2.KeyPair(
            self.names.name("key"), public_key=self.spec.ssh.public_keys[0], tags=self._tags("key"), opts=self.child()
        )
        ami = self._ami()
        instance, data_device = self._instance(ami, subnet_id, group, key)
        address = aws.ec2.Eip(
            self.names.name("ip"), domain="vpc", instance=instance.id, tags=self._tags("ip"), opts=self.child()
        )
        kubeconfig = self._cluster(cloud, vpc_id) if resolved.node_pools else None
        self.publish(
            DevserverOutputs(
                host=address.public_ip,
                ssh_user=self.spec.ssh.admin_user,
                ssh_port=SSH_PORT,
                instance_id=instance.id,
                gpu=resolved.gpu_summary,
                image=ami,
                kubeconfig=kubeconfig,
                data_device=data_device,
            )
        )

    def _tags(self, what: str) -> dict[str, str]:
        """The labels, plus the Name tag the EC2 console shows."""
        return {**self.labels, "Name": f"{self.spec.name}-{what}"}

    def _placement(self, cloud: AwsCloud) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """(VPC ID, subnet ID) for the instance."""
        invoke = self.invoke_opts()
        if cloud.subnet_id is not None:
            subnet = aws.ec2.get_subnet_output(id=cloud.subnet_id, opts=invoke)
            return subnet.vpc_id, subnet.id
        vpc_id = aws.ec2.get_vpc_output(default=True, opts=invoke).id
        if cloud.availability_zone is not None:
            subnet = aws.ec2.get_subnet_output(
                vpc_id=vpc_id, availability_zone=cloud.availability_zone, default_for_az=True, opts=invoke
            )
            return vpc_id, subnet.id
        default_subnets = vpc_id.apply(
            lambda vpc: [
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc]),
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ]
        )
        subnets = aws.ec2.get_subnets_output(filters=default_subnets, opts=invoke)
        return vpc_id, subnets.ids.apply(lambda ids: sorted(ids)[0])

    def _ami(self) -> pulumi.Output[str]:
        """The spec's AMI ID, or the one the catalog's SSM public parameter resolves to now."""
        if self.spec.image is not None:
            return pulumi.Output.from_input(self.spec.image.name)
        # Annotated so the type holds where mypy is told to skip the provider SDK (it would be Any there).
        ami: pulumi.Output[str] = aws.ssm.get_parameter_output(name=self.resolved.image, opts=self.invoke_opts()).value
        return ami

    def _security_group(self, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
        families = cidrs_by_family(self.spec.ssh.allowed_cidrs)
        return aws.ec2.SecurityGroup(
            self.names.name("ssh"),
            vpc_id=vpc_id,
            description=f"SSH to devserver {self.spec.name} from its allowed networks",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=SSH_PORT,
                    to_port=SSH_PORT,
                    cidr_blocks=families.get(4),
                    ipv6_cidr_blocks=families.get(6),
                    description="SSH",
                )
            ],
            # The host installs packages and pulls images; egress is open, ingress is what the policy guards.
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=[WORLD_CIDRS[0]],
                    ipv6_cidr_blocks=[WORLD_CIDRS[1]],
                )
            ],
            tags=self._tags("ssh"),
            opts=self.child(),
        )

    def _instance(
        self,
        ami: pulumi.Input[str],
        subnet_id: pulumi.Input[str],
        group: aws.ec2.SecurityGroup,
        key: aws.ec2.KeyPair,
    ) -> tuple[aws.ec2.Instance, pulumi.Output[str] | None]:
        """The instance, and the data volume's stable device path when the spec has one."""
        spec = self.spec
        spot = spec.machine.spot
        instance = aws.ec2.Instance(
            self.names.name("vm"),
            ami=ami,
            instance_type=self.machine.type,
            subnet_id=subnet_id,
            vpc_security_group_ids=[group.id],
            key_name=key.key_name,
            user_data=cloud_init(spec),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # Two hops so containers on the host (one bridge away) still reach IMDSv2.
                http_put_response_hop_limit=2,
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=spec.disks.boot_gb,
                volume_type=VOLUME_TYPE,
                encrypted=True,
                delete_on_termination=True,
                tags=self._tags("root"),
            ),
            # A persistent spot request that stops (not terminates) keeps the volumes across interruptions.
            instance_market_options=aws.ec2.InstanceInstanceMarketOptionsArgs(
                market_type="spot",
                spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
                    spot_instance_type="persistent", instance_interruption_behavior="stop"
                ),
            )
            if spot
            else None,
            tags=self._tags("vm"),
            opts=self.child(),
        )
        if spec.disks.data is not None:
            volume = aws.ebs.Volume(
                self.names.name("data"),
                availability_zone=instance.availability_zone,
                size=spec.disks.data.size_gb,
                type=VOLUME_TYPE,
                encrypted=True,
                tags=self._tags("data"),
                opts=self.child(),
            )
            aws.ec2.VolumeAttachment(
                self.names.name("data-attachment"),
                device_name=DATA_DEVICE,
                volume_id=volume.id,
                instance_id=instance.id,
                opts=self.child(),
            )
            # Annotated so the type holds where mypy is told to skip the provider SDK (it would be Any there).
            device: pulumi.Output[str] = volume.id.apply(nvme_device)
            return instance, device
        return instance, None

    def _role(self, what: str, service: str, policies: tuple[str, ...]) -> tuple[aws.iam.Role, list[pulumi.Resource]]:
        role = aws.iam.Role(
            self.names.name(what),
            assume_role_policy=_assume_role_policy(service),
            tags=self._tags(what),
            opts=self.child(),
        )
        attachments: list[pulumi.Resource] = [
            aws.iam.RolePolicyAttachment(
                self.names.name(attachment_key(what, arn)), role=role.name, policy_arn=arn, opts=self.child()
            )
            for arn in policies
        ]
        return role, attachments

    def _cluster(self, cloud: AwsCloud, vpc_id: pulumi.Input[str]) -> pulumi.Output[str]:
        """An EKS cluster (with its IAM roles): a small system node group plus one GPU node group per planned pool."""
        spec = self.spec
        assert spec.kubernetes is not None
        # EKS wants subnets in at least two availability zones: every subnet of the devserver's VPC.
        in_vpc = pulumi.Output.from_input(vpc_id).apply(
            lambda vpc: [aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc])]
        )
        subnet_ids = aws.ec2.get_subnets_output(filters=in_vpc, opts=self.invoke_opts()).ids
        cluster_role, cluster_attachments = self._role("eks-cluster", "eks.amazonaws.com", CLUSTER_POLICIES)
        node_role, node_attachments = self._role("eks-node", "ec2.amazonaws.com", NODE_POLICIES)
        cluster = aws.eks.Cluster(
            self.names.name("cluster"),
            role_arn=cluster_role.arn,
            version=spec.kubernetes.version,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=subnet_ids,
                # The public endpoint admits the spec's IPv4 networks only (an IPv4 cluster's endpoint takes no
                # IPv6 CIDRs; without any, EKS admits 0.0.0.0/0); nodes use the private endpoint.
                endpoint_public_access=True,
                endpoint_private_access=True,
                public_access_cidrs=self.endpoint_cidrs(),
            ),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True
            ),
            tags=self._tags("eks"),
            opts=self.child(depends_on=cluster_attachments),
        )
        template = self._node_template()
        launch_template = aws.eks.NodeGroupLaunchTemplateArgs(
            id=template.id, version=template.latest_version.apply(str)
        )
        aws.eks.NodeGroup(
            self.names.name("system-pool"),
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            ami_type=SYSTEM_AMI_TYPE,
            instance_types=[SYSTEM_NODE_TYPE],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(desired_size=1, min_size=1, max_size=1),
            launch_template=launch_template,
            tags=self._tags("system"),
            opts=self.child(depends_on=node_attachments),
        )
        for pool in self.resolved.node_pools:
            self._gpu_node_group(cluster, node_role, subnet_ids, launch_template, pool, node_attachments)
        ca_data = cluster.certificate_authority.apply(lambda authority: authority.data or "")
        kubeconfig = pulumi.Output.all(cluster.name, cluster.endpoint, ca_data).apply(
            lambda parts: exec_kubeconfig(
                cluster=parts[0],
                server=parts[1],
                ca_data=parts[2],
                command="aws",
                args=["eks", "get-token", "--cluster-name", parts[0], "--region", cloud.region, "--output", "json"],
                install_hint="install the AWS CLI v2: https://docs.aws.amazon.com/cli/",
            )
        )
        return pulumi.Output.secret(kubeconfig)

    def _node_template(self) -> aws.ec2.LaunchTemplate:
        """Launch template for every node group: IMDSv2 only and an encrypted root volume, as on the devserver."""
        tags = self._tags("eks-node")
        return aws.ec2.LaunchTemplate(
            self.names.name("node-template"),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # Pods are one hop further than the node: two hops keep IMDSv2 reachable from them.
                http_put_response_hop_limit=2,
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=EKS_ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=self.spec.disks.boot_gb,
                        volume_type=VOLUME_TYPE,
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            tags=tags,
            opts=self.child(),
        )

    def _gpu_node_group(
        self,
        cluster: aws.eks.Cluster,
        node_role: aws.iam.Role,
        subnet_ids: pulumi.Input[list[str]],
        launch_template: aws.eks.NodeGroupLaunchTemplateArgs,
        pool: NodePoolPlan,
        depends_on: list[pulumi.Resource],
    ) -> None:
        taints = [Taint.parse(text) for text in pool.taints]
        aws.eks.NodeGroup(
            self.names.name(f"pool-{pool.name}"),
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            # The NVIDIA AL2023 AMI carries the driver and container toolkit; the GPU operator runs without them.
            ami_type=GPU_AMI_TYPE,
            instance_types=[pool.machine.type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                desired_size=pool.node_count, min_size=pool.node_count, max_size=max(1, pool.node_count)
            ),
            taints=[aws.eks.NodeGroupTaintArgs(key=t.key, value=t.value, effect=t.upper_effect) for t in taints],
            launch_template=launch_template,
            tags=self._tags(pool.name),
            opts=self.child(depends_on=depends_on),
        )
