"""Azure: images as a fixed VHD page blob, the azure-arm Packer source, Hyper-V generations and Trusted Launch, and
what the stack creates (the resource group, a vnet and subnet, an NSG, a static public IP, a NIC, the VM, its data
disk, and an AKS cluster, whose system pool is part of it, with the GPU agent pools)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devserver.registry import Capabilities, Cloud, ClusterEndpoint, Lazy, LoginFacts, PackerFacts
from devserver.registry import resources as r
from devserver.registry.resources import PlannedResource

# The spec models and the catalog are imported inside the functions: importing the registry stays cheap, as
# `devserver --help` imports it and must not load pydantic or the catalog.
if TYPE_CHECKING:
    from devserver.plan import Resolved


# Key types: "Supported SSH key formats" in learn.microsoft.com/azure/virtual-machines/linux/create-ssh-keys-detailed
# (SSH-2 RSA of at least 2048 bits, and ED25519; ECDSA and FIDO keys are refused).
# Admin names: the "Disallowed values" of osProfile.adminUsername in the Compute REST reference
# (learn.microsoft.com/rest/api/compute/virtual-machines/create-or-update#osprofile).
LOGIN = LoginFacts(
    key_types=frozenset({"ssh-rsa", "ssh-ed25519"}),
    min_rsa_bits=2048,
    reserved_users=frozenset(
        {
            "administrator",
            "admin",
            "user",
            "user1",
            "test",
            "user2",
            "test1",
            "user3",
            "admin1",
            "1",
            "123",
            "a",
            "actuser",
            "adm",
            "admin2",
            "aspnet",
            "backup",
            "console",
            "david",
            "guest",
            "john",
            "owner",
            "root",
            "server",
            "sql",
            "support",
            "support_388945a0",
            "sys",
            "test2",
            "test3",
            "user4",
            "user5",
        }
    ),
)


def resources(resolved: Resolved) -> tuple[PlannedResource, ...]:
    from devserver.spec import AzureCloud

    spec = resolved.spec
    cloud = spec.cloud
    assert isinstance(cloud, AzureCloud)
    name = spec.name
    net = "azure-native:network"
    # The NSG carries one inline rule per address family; the rules are not resources of their own.
    out = [
        PlannedResource(
            "resource group",
            f"{name}-rg",
            {"azure name": cloud.resource_group},
            "group",
            "azure-native:resources:ResourceGroup",
        ),
        PlannedResource("virtual network", f"{name}-vnet", {"state": "new"}, "vnet", f"{net}:VirtualNetwork"),
        PlannedResource("subnet", f"{name}-subnet", {}, "subnet", f"{net}:Subnet"),
        PlannedResource(
            "network security group",
            f"{name}-nsg",
            r.ssh_details(spec.ssh.allowed_cidrs),
            "nsg",
            f"{net}:NetworkSecurityGroup",
        ),
        PlannedResource("public IP", f"{name}-ip", {}, "ip", f"{net}:PublicIPAddress"),
        PlannedResource("network interface", f"{name}-nic", {}, "nic", f"{net}:NetworkInterface"),
        PlannedResource("GPU VM", f"{name}-vm", r.vm_details(resolved), "vm", "azure-native:compute:VirtualMachine"),
    ]
    if spec.disks.data is not None:
        out.append(
            PlannedResource(
                "data volume", f"{name}-data", r.data_details(resolved), "data", "azure-native:compute:Disk"
            )
        )
    if resolved.node_pools:
        service = "azure-native:containerservice"
        out.append(
            PlannedResource(
                "AKS cluster", f"{name}-aks", r.cluster_details(resolved), "cluster", f"{service}:ManagedCluster"
            )
        )
        out += r.gpu_pools(resolved, "GPU node pool", f"{service}:AgentPool")
    return tuple(out)


def packer_variables(resolved: Resolved) -> dict[str, object]:
    """The azure-arm source's variables: subscription, place, size, and the marketplace image of the size's
    Hyper-V generation."""
    from devserver import catalog as catalog_module
    from devserver.spec import AzureCloud

    spec, machine = resolved.spec, resolved.machine
    cloud = spec.cloud
    assert isinstance(cloud, AzureCloud)
    assert machine is not None
    generation = machine.hyperv_generation or 2
    publisher, offer, sku, _version = catalog_module.load().clouds[cloud.provider].images[spec.os].split(":")
    return {
        "azure_subscription_id": cloud.subscription_id,
        "azure_location": cloud.location,
        "azure_resource_group": cloud.resource_group,
        "azure_vm_size": machine.type,
        "azure_image_publisher": publisher,
        "azure_image_offer": offer,
        "azure_image_sku": sku if generation == 2 else gen1_sku(sku),
        "azure_hyperv_generation": f"V{generation}",
    }


def gen1_sku(sku: str) -> str:
    """The Hyper-V generation 1 SKU beside a gen2 one: Debian's ``12-gen2`` → ``12``; Ubuntu 24.04's gen2 ``server``
    → ``server-gen1`` (Canonical flipped the default with 24.04)."""
    if sku.endswith("-gen2"):
        return sku.removesuffix("-gen2")
    return f"{sku}-gen1"


# Without authorized IP ranges the AKS API server's public IP admits everyone. The stack's AKS cluster is
# single-stack IPv4 (the network profile's default IP family), so its API server has an IPv4 address only and only
# IPv4 ranges can let anyone in. https://learn.microsoft.com/azure/aks/api-server-authorized-ip-ranges
CLUSTER_ENDPOINT = ClusterEndpoint(
    service="AKS",
    acl="API server authorized IP ranges",
    families=frozenset({4}),
    source="https://learn.microsoft.com/azure/aks/api-server-authorized-ip-ranges",
)


CLOUD = Cloud(
    name="azure",
    title="Azure",
    # Azure takes a fixed VHD (raw data + 512-byte footer), virtual size a whole MiB, as a page blob.
    image_formats=(("vhd-fixed", "disk.vhd"),),
    region_field="cloud.location",
    capabilities=Capabilities(node_pools=True, spot=True, trusted_launch=True, hyperv_generations=True),
    resources=resources,
    packer=PackerFacts("azure-arm", packer_variables),
    component=Lazy("devserver.infra.azure", "AzureDevserver", extra="azure"),
    uploader=Lazy("devserver.clouds.azure", "from_options", extra="azure"),
    upload_sdk=("azure.storage.blob", "azure.mgmt.compute", "azure.identity"),
    login=LOGIN,
    cluster_endpoint=CLUSTER_ENDPOINT,
)
