"""Google Compute Engine: a GPU devserver (N1 with attached accelerators, or a machine type with GPUs built in)
and, when the spec has a ``kubernetes`` section, a GKE cluster with GPU node pools."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from devserver.infra.common import (
    SSH_PORT,
    DevserverComponent,
    DevserverOutputs,
    Taint,
    cidrs_by_family,
    cloud_init,
    exec_kubeconfig,
    rule_description,
)
from devserver.plan import MachineChoice, NodePoolPlan, Resolved
from devserver.spec import GceCloud

SUBNET_CIDR = "10.42.0.0/20"
# Untainted nodes for kube-system and the GPU operator's controllers: the GPU pools are tainted.
SYSTEM_POOL_MACHINE = "e2-standard-4"
# GKE wants the accelerator named even for machine types that carry their GPUs; the catalog names it only for
# GPUs attached to N1. Longest prefix first. https://cloud.google.com/compute/docs/gpus
_BUNDLED_ACCELERATORS = (
    ("a2-ultragpu-", "nvidia-a100-80gb"),
    ("a2-highgpu-", "nvidia-tesla-a100"),
    ("a2-megagpu-", "nvidia-tesla-a100"),
    ("a3-megagpu-", "nvidia-h100-mega-80gb"),
    ("a3-highgpu-", "nvidia-h100-80gb"),
    ("a3-ultragpu-", "nvidia-h200-141gb"),
    ("a4-highgpu-", "nvidia-b200"),
    ("a4x-highgpu-", "nvidia-gb200"),
    ("a4x-maxgpu-", "nvidia-gb300"),
    ("g2-", "nvidia-l4"),
    ("g4-", "nvidia-rtx-pro-6000"),
)
# A3 Ultra, A4, A4X and G4 machines attach only Hyperdisk; A3, A4, A4X and G4 need the gVNIC network interface.
# https://cloud.google.com/compute/docs/accelerator-optimized-machines
_HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "g4-")
_GVNIC_REQUIRED = ("a3-", "a4-", "a4x-", "g4-")
# The data disk's device_name; the guest environment's udev rules (google-guest-configs' 65-gce-disk-naming.rules,
# in GCE's Debian and Ubuntu images) link an attached disk as /dev/disk/by-id/google-<device_name>.
# https://github.com/GoogleCloudPlatform/guest-configs/blob/master/src/lib/udev/rules.d/65-gce-disk-naming.rules
DATA_DEVICE_NAME = "data"
DATA_DEVICE = f"/dev/disk/by-id/google-{DATA_DEVICE_NAME}"


def accelerator_type(machine: MachineChoice) -> str:
    """The GCE accelerator type of `machine`'s GPUs (attached on N1, or built into the machine type)."""
    if machine.accelerator is not None:
        return machine.accelerator
    for prefix, accelerator in _BUNDLED_ACCELERATORS:
        if machine.type.startswith(prefix):
            return accelerator
    raise ValueError(f"{machine.type}: no GCE accelerator type known for this machine family")


def disk_type(machine_type: str) -> str:
    return "hyperdisk-balanced" if machine_type.startswith(_HYPERDISK_ONLY) else "pd-balanced"


class GceDevserver(DevserverComponent):
    """A GPU VM with a static external IP, an SSH firewall for the spec's CIDRs, a separate data disk, and GKE GPU
    node pools when the spec asks for them.

    GPU VMs cannot live-migrate, so ``on_host_maintenance`` is always TERMINATE; spot VMs stop (keeping their
    disks) when preempted. Disks are encrypted at rest by GCE itself (Google-managed keys).
    """

    RESOURCE_TYPE = "devserver:infra:GceDevserver"

    def __init__(self, resolved: Resolved, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(resolved, opts)
        cloud = self.spec.cloud
        assert isinstance(cloud, GceCloud)
        name = self.spec.name
        self.use_provider(
            gcp.Provider(
                f"{name}-gcp",
                project=cloud.project,
                region=cloud.region,
                zone=cloud.zone,
                opts=pulumi.ResourceOptions(parent=self),
            )
        )
        network, subnetwork = self._network(cloud)
        ssh_tag = f"devserver-{name}"
        for family, cidrs in sorted(cidrs_by_family(self.spec.ssh.allowed_cidrs).items()):
            gcp.compute.Firewall(
                self.names.name(f"ssh-v{family}"),
                network=network,
                direction="INGRESS",
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(SSH_PORT)])],
                source_ranges=cidrs,
                target_tags=[ssh_tag],
                description=rule_description(self.spec, f"SSH from allowed IPv{family} networks"),
                opts=self.child(),
            )
        address = gcp.compute.Address(
            self.names.name("ip"), region=cloud.region, address_type="EXTERNAL", labels=self.labels, opts=self.child()
        )
        instance = self._instance(cloud, network, subnetwork, address, ssh_tag)
        kubeconfig = self._cluster(cloud, network, subnetwork) if resolved.node_pools else None
        self.publish(
            DevserverOutputs(
                host=address.address,
                ssh_user=self.spec.ssh.admin_user,
                ssh_port=SSH_PORT,
                instance_id=instance.id,
                gpu=resolved.gpu_summary,
                image=self._image(),
                kubeconfig=kubeconfig,
                data_device=DATA_DEVICE if self.spec.disks.data is not None else None,
            )
        )

    def _image(self) -> str:
        image = self.spec.image
        if image is not None and image.project is not None and "/" not in image.name:
            return f"projects/{image.project}/global/images/{image.name}"
        return self.resolved.image

    def _network(self, cloud: GceCloud) -> tuple[pulumi.Input[str], pulumi.Input[str] | None]:
        """The spec's existing network (auto-mode: GCE picks the zone's subnetwork), or a new VPC with one subnet."""
        if cloud.network is not None:
            return cloud.network, None
        network = gcp.compute.Network(
            self.names.name("net"),
            auto_create_subnetworks=False,
            description=f"devserver {self.spec.name}",
            opts=self.child(),
        )
        subnetwork = gcp.compute.Subnetwork(
            self.names.name("subnet"),
            network=network.id,
            region=cloud.region,
            ip_cidr_range=SUBNET_CIDR,
            private_ip_google_access=True,
            opts=self.child(),
        )
        return network.id, subnetwork.id

    def _instance(
        self,
        cloud: GceCloud,
        network: pulumi.Input[str],
        subnetwork: pulumi.Input[str] | None,
        address: gcp.compute.Address,
        ssh_tag: str,
    ) -> gcp.compute.Instance:
        spec, machine = self.spec, self.machine
        spot = spec.machine.spot
        attached: list[gcp.compute.InstanceAttachedDiskArgs] = []
        if spec.disks.data is not None:
            data = gcp.compute.Disk(
                self.names.name("data"),
                zone=cloud.zone,
                size=spec.disks.data.size_gb,
                type=disk_type(machine.type),
                labels=self.labels,
                opts=self.child(),
            )
            # device_name makes it DATA_DEVICE on the guest.
            attached.append(gcp.compute.InstanceAttachedDiskArgs(source=data.id, device_name=DATA_DEVICE_NAME))
        accelerators = (
            [gcp.compute.InstanceGuestAcceleratorArgs(type=machine.accelerator, count=machine.gpu_count)]
            if machine.accelerator is not None
            else None
        )
        keys = "\n".join(f"{spec.ssh.admin_user}:{key}" for key in spec.ssh.public_keys)
        return gcp.compute.Instance(
            self.names.name("vm"),
            zone=cloud.zone,
            machine_type=machine.type,
            guest_accelerators=accelerators,
            scheduling=gcp.compute.InstanceSchedulingArgs(
                # GPU VMs cannot live-migrate: GCE refuses them unless maintenance terminates them.
                on_host_maintenance="TERMINATE",
                automatic_restart=not spot,
                preemptible=spot,
                provisioning_model="SPOT" if spot else "STANDARD",
                instance_termination_action="STOP" if spot else None,
            ),
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=self._image(),
                    size=spec.disks.boot_gb,
                    type=disk_type(machine.type),
                    labels=self.labels,
                ),
            ),
            attached_disks=attached,
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    network=network,
                    subnetwork=subnetwork,
                    nic_type="GVNIC" if machine.type.startswith(_GVNIC_REQUIRED) else None,
                    access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=address.address)],
                )
            ],
            metadata={
                # Images with cloud-init (Ubuntu) read user-data; Debian's GCE images have only the guest agent,
                # which creates the user from ssh-keys (with passwordless sudo). OS Login would ignore both.
                "user-data": cloud_init(spec),
                "ssh-keys": keys,
                "enable-oslogin": "FALSE",
            },
            tags=[ssh_tag],
            labels=self.labels,
            allow_stopping_for_update=True,
            opts=self.child(),
        )

    def _cluster(
        self, cloud: GceCloud, network: pulumi.Input[str], subnetwork: pulumi.Input[str] | None
    ) -> pulumi.Output[str]:
        """A zonal GKE cluster: a small untainted system pool plus one GPU pool per planned node pool."""
        spec = self.spec
        assert spec.kubernetes is not None
        # The control plane admits the spec's networks of the families the registry says GKE can authorize (IPv4),
        # and not every Google Cloud VM's public IP.
        authorized = gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
            cidr_blocks=[
                gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(cidr_block=cidr)
                for cidr in self.endpoint_cidrs()
            ],
            gcp_public_cidrs_access_enabled=False,
        )
        cluster = gcp.container.Cluster(
            self.names.name("cluster"),
            location=cloud.zone,
            network=network,
            subnetwork=subnetwork,
            min_master_version=spec.kubernetes.version,
            # Pools are managed as separate resources; GKE insists on creating a default one first.
            remove_default_node_pool=True,
            initial_node_count=1,
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(),
            master_authorized_networks_config=authorized,
            resource_labels=self.labels,
            # A devserver cluster is meant to be torn down with `pulumi destroy`.
            deletion_protection=False,
            opts=self.child(),
        )
        gcp.container.NodePool(
            self.names.name("system-pool"),
            cluster=cluster.name,
            location=cloud.zone,
            node_count=1,
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=SYSTEM_POOL_MACHINE,
                disk_size_gb=spec.disks.boot_gb,
                resource_labels=self.labels,
            ),
            opts=self.child(),
        )
        for pool in self.resolved.node_pools:
            self._gpu_pool(cloud, cluster, pool)
        ca_data = cluster.master_auth.apply(lambda auth: auth.cluster_ca_certificate or "")
        kubeconfig = pulumi.Output.all(cluster.name, cluster.endpoint, ca_data).apply(
            lambda parts: exec_kubeconfig(
                cluster=f"gke_{cloud.project}_{cloud.zone}_{parts[0]}",
                server=f"https://{parts[1]}",
                ca_data=parts[2],
                command="gke-gcloud-auth-plugin",
                args=[],
                install_hint="gcloud components install gke-gcloud-auth-plugin",
            )
        )
        return pulumi.Output.secret(kubeconfig)

    def _gpu_pool(self, cloud: GceCloud, cluster: gcp.container.Cluster, pool: NodePoolPlan) -> None:
        taints = [Taint.parse(text) for text in pool.taints]
        gcp.container.NodePool(
            self.names.name(f"pool-{pool.name}"),
            cluster=cluster.name,
            location=cloud.zone,
            node_count=pool.node_count,
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=pool.machine.type,
                guest_accelerators=[
                    gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
                        type=accelerator_type(pool.machine),
                        count=pool.machine.gpu_count,
                        # GKE installs its default driver; the GPU operator then runs with its driver disabled,
                        # as on AKS and on EKS's NVIDIA AMI.
                        gpu_driver_installation_config=(
                            gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                                gpu_driver_version="DEFAULT"
                            )
                        ),
                    )
                ],
                taints=[
                    gcp.container.NodePoolNodeConfigTaintArgs(key=t.key, value=t.value, effect=t.upper_effect)
                    for t in taints
                ],
                disk_size_gb=self.spec.disks.boot_gb,
                disk_type=disk_type(pool.machine.type),
                resource_labels=self.labels,
            ),
            opts=self.child(),
        )
