"""Azure: a GPU devserver (NC/ND size, gen2 image, encryption at host) and, when the spec has a ``kubernetes``
section, an AKS cluster with GPU agent pools."""

from __future__ import annotations

import base64

import pulumi
import pulumi_azure_native as azure_native
from pulumi_azure_native import compute, containerservice, network, resources

from devserver.infra.common import (
    SSH_PORT,
    DevserverComponent,
    DevserverOutputs,
    Taint,
    cidrs_by_family,
    cloud_init,
)
from devserver.plan import NodePoolPlan, Resolved
from devserver.spec import AzureCloud

VNET_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.1.0/24"
# Untainted nodes for kube-system and the GPU operator's controllers: the GPU pools are tainted. AKS requires a
# System-mode pool anyway.
SYSTEM_POOL_SIZE = "Standard_D4s_v5"
# Every NC/ND size supports premium SSDs.
DISK_SKU = "Premium_LRS"
# The data disk's LUN. The Azure Linux agent's udev rules (walinuxagent/waagent, in Azure's Debian and Ubuntu
# images) link a data disk on the SCSI controller as /dev/disk/azure/scsi1/lun<N>.
# https://learn.microsoft.com/troubleshoot/azure/virtual-machines/linux/troubleshoot-device-names-problems
DATA_LUN = 0
DATA_DEVICE = f"/dev/disk/azure/scsi1/lun{DATA_LUN}"


def image_reference(resolved: Resolved) -> compute.ImageReferenceArgs:
    """The boot image: a resource ID given in the spec's ``image.name``, or a marketplace URN
    ``publisher:offer:sku:version`` (the catalog's gen2 images)."""
    image = resolved.image
    if image.startswith("/"):
        return compute.ImageReferenceArgs(id=image)
    publisher, offer, sku, version = image.split(":")
    return compute.ImageReferenceArgs(publisher=publisher, offer=offer, sku=sku, version=version)


class AzureDevserver(DevserverComponent):
    """A resource group with a vnet/subnet, an NSG admitting SSH from the spec's CIDRs, a static public IP, a NIC,
    the GPU VM (gen2 image, encryption at host, optional Trusted Launch and Spot), a managed data disk, and AKS
    GPU agent pools when the spec asks for them.

    Encryption at host needs the subscription feature ``Microsoft.Compute/EncryptionAtHost`` registered once.
    The resource group named in the spec is created by the stack (import it first if it already exists).
    """

    RESOURCE_TYPE = "devserver:infra:AzureDevserver"

    def __init__(self, resolved: Resolved, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(resolved, opts)
        cloud = self.spec.cloud
        assert isinstance(cloud, AzureCloud)
        name = self.spec.name
        self.use_provider(
            azure_native.Provider(
                f"{name}-azure",
                subscription_id=cloud.subscription_id,
                location=cloud.location,
                opts=pulumi.ResourceOptions(parent=self),
            )
        )
        group = resources.ResourceGroup(
            self.names.name("group"),
            resource_group_name=cloud.resource_group,
            location=cloud.location,
            tags=self.labels,
            opts=self.child(),
        )
        nic, public_ip = self._network(cloud, group)
        vm = self._vm(cloud, group, nic)
        kubeconfig = self._cluster(cloud, group) if resolved.node_pools else None
        self.publish(
            DevserverOutputs(
                host=public_ip.ip_address.apply(lambda ip: ip or ""),
                ssh_user=self.spec.ssh.admin_user,
                ssh_port=SSH_PORT,
                instance_id=vm.id,
                gpu=resolved.gpu_summary,
                image=resolved.image,
                kubeconfig=kubeconfig,
                data_device=DATA_DEVICE if self.spec.disks.data is not None else None,
            )
        )

    def _network(
        self, cloud: AzureCloud, group: resources.ResourceGroup
    ) -> tuple[network.NetworkInterface, network.PublicIPAddress]:
        name = self.spec.name
        vnet = network.VirtualNetwork(
            self.names.name("vnet"),
            resource_group_name=group.name,
            location=cloud.location,
            address_space=network.AddressSpaceArgs(address_prefixes=[VNET_CIDR]),
            tags=self.labels,
            opts=self.child(),
        )
        subnet = network.Subnet(
            self.names.name("subnet"),
            resource_group_name=group.name,
            virtual_network_name=vnet.name,
            address_prefix=SUBNET_CIDR,
            opts=self.child(),
        )
        # One rule per address family: an NSG rule cannot mix IPv4 and IPv6 prefixes.
        rules = [
            network.SecurityRuleArgs(
                name=f"ssh-ipv{family}",
                priority=100 + index,
                direction="Inbound",
                access="Allow",
                protocol="Tcp",
                source_address_prefixes=cidrs,
                source_port_range="*",
                destination_address_prefix="*",
                destination_port_range=str(SSH_PORT),
                description=f"SSH from allowed IPv{family} networks for devserver {name}",
            )
            for index, (family, cidrs) in enumerate(sorted(cidrs_by_family(self.spec.ssh.allowed_cidrs).items()))
        ]
        nsg = network.NetworkSecurityGroup(
            self.names.name("nsg"),
            resource_group_name=group.name,
            location=cloud.location,
            security_rules=rules,
            tags=self.labels,
            opts=self.child(),
        )
        public_ip = network.PublicIPAddress(
            self.names.name("ip"),
            resource_group_name=group.name,
            location=cloud.location,
            sku=network.PublicIPAddressSkuArgs(name="Standard"),
            public_ip_allocation_method="Static",
            tags=self.labels,
            opts=self.child(),
        )
        nic = network.NetworkInterface(
            self.names.name("nic"),
            resource_group_name=group.name,
            location=cloud.location,
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            ip_configurations=[
                network.NetworkInterfaceIPConfigurationArgs(
                    name="primary",
                    primary=True,
                    subnet=network.SubnetArgs(id=subnet.id),
                    public_ip_address=network.PublicIPAddressArgs(id=public_ip.id),
                    private_ip_allocation_method="Dynamic",
                )
            ],
            tags=self.labels,
            opts=self.child(),
        )
        return nic, public_ip

    def _vm(
        self, cloud: AzureCloud, group: resources.ResourceGroup, nic: network.NetworkInterface
    ) -> compute.VirtualMachine:
        spec = self.spec
        admin = spec.ssh.admin_user
        data_disks: list[compute.DataDiskArgs] = []
        if spec.disks.data is not None:
            disk = compute.Disk(
                self.names.name("data"),
                resource_group_name=group.name,
                location=cloud.location,
                creation_data=compute.CreationDataArgs(create_option="Empty"),
                disk_size_gb=spec.disks.data.size_gb,
                sku=compute.DiskSkuArgs(name=DISK_SKU),
                tags=self.labels,
                opts=self.child(),
            )
            # The guest sees it as DATA_DEVICE.
            data_disks.append(
                compute.DataDiskArgs(
                    lun=DATA_LUN,
                    create_option="Attach",
                    managed_disk=compute.ManagedDiskParametersArgs(id=disk.id),
                    caching=compute.CachingTypes.READ_ONLY,
                )
            )
        security = compute.SecurityProfileArgs(encryption_at_host=True)
        if cloud.trusted_launch:
            security = compute.SecurityProfileArgs(
                encryption_at_host=True,
                security_type="TrustedLaunch",
                uefi_settings=compute.UefiSettingsArgs(secure_boot_enabled=True, v_tpm_enabled=True),
            )
        spot = spec.machine.spot
        return compute.VirtualMachine(
            self.names.name("vm"),
            resource_group_name=group.name,
            location=cloud.location,
            hardware_profile=compute.HardwareProfileArgs(vm_size=self.machine.type),
            storage_profile=compute.StorageProfileArgs(
                image_reference=image_reference(self.resolved),
                os_disk=compute.OSDiskArgs(
                    create_option="FromImage",
                    disk_size_gb=spec.disks.boot_gb,
                    caching=compute.CachingTypes.READ_WRITE,
                    delete_option="Delete",
                    managed_disk=compute.ManagedDiskParametersArgs(storage_account_type=DISK_SKU),
                ),
                data_disks=data_disks,
            ),
            os_profile=compute.OSProfileArgs(
                computer_name=spec.name,
                admin_username=admin,
                custom_data=base64.b64encode(cloud_init(spec).encode()).decode(),
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=True,
                    provision_vm_agent=True,
                    ssh=compute.SshConfigurationArgs(
                        public_keys=[
                            compute.SshPublicKeyArgs(key_data=key, path=f"/home/{admin}/.ssh/authorized_keys")
                            for key in spec.ssh.public_keys
                        ]
                    ),
                ),
            ),
            network_profile=compute.NetworkProfileArgs(
                network_interfaces=[compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]
            ),
            security_profile=security,
            priority="Spot" if spot else None,
            # Deallocate keeps the disks when Azure evicts a spot VM; -1 caps the price at the pay-as-you-go one.
            eviction_policy="Deallocate" if spot else None,
            billing_profile=compute.BillingProfileArgs(max_price=-1) if spot else None,
            tags=self.labels,
            opts=self.child(),
        )

    def _cluster(self, cloud: AzureCloud, group: resources.ResourceGroup) -> pulumi.Output[str]:
        """An AKS cluster: a small System pool plus one GPU User pool per planned node pool."""
        spec = self.spec
        assert spec.kubernetes is not None
        cluster = containerservice.ManagedCluster(
            self.names.name("cluster"),
            resource_group_name=group.name,
            location=cloud.location,
            dns_prefix=spec.name,
            kubernetes_version=spec.kubernetes.version,
            identity=containerservice.ManagedClusterIdentityArgs(
                type=containerservice.ResourceIdentityType.SYSTEM_ASSIGNED
            ),
            agent_pool_profiles=[
                containerservice.ManagedClusterAgentPoolProfileArgs(
                    name="system",
                    mode="System",
                    os_type="Linux",
                    vm_size=SYSTEM_POOL_SIZE,
                    count=1,
                    os_disk_size_gb=spec.disks.boot_gb,
                    enable_encryption_at_host=True,
                    tags=self.labels,
                )
            ],
            # The API server admits the spec's IPv4 networks only (the cluster is single-stack IPv4; AKS adds its
            # own egress IP itself). Without the ranges it would admit everyone.
            api_server_access_profile=containerservice.ManagedClusterAPIServerAccessProfileArgs(
                authorized_ip_ranges=self.endpoint_cidrs()
            ),
            tags=self.labels,
            opts=self.child(),
        )
        for pool in self.resolved.node_pools:
            self._gpu_pool(group, cluster, pool)
        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=group.name, resource_name=cluster.name, opts=self.invoke_opts()
        )
        kubeconfig = credentials.apply(lambda c: base64.b64decode(c.kubeconfigs[0].value).decode())
        return pulumi.Output.secret(kubeconfig)

    def _gpu_pool(
        self, group: resources.ResourceGroup, cluster: containerservice.ManagedCluster, pool: NodePoolPlan
    ) -> None:
        # AKS installs the NVIDIA driver on GPU sizes; the GPU operator then runs with its driver disabled.
        containerservice.AgentPool(
            self.names.name(f"pool-{pool.name}"),
            resource_group_name=group.name,
            resource_name_=cluster.name,
            agent_pool_name=pool.name,
            mode="User",
            os_type="Linux",
            vm_size=pool.machine.type,
            count=pool.node_count,
            node_taints=[str(Taint.parse(text)) for text in pool.taints],
            os_disk_size_gb=self.spec.disks.boot_gb,
            enable_encryption_at_host=True,
            tags=self.labels,
            opts=self.child(),
        )
