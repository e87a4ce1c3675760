"""Google Compute Engine: images as a GCS-imported tar, the googlecompute Packer source, and what the stack creates
(a VPC unless the spec names one, an SSH firewall per address family, a static IP, the VM, its data disk, and a
GKE cluster with a system pool and the GPU pools)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devserver.registry import Capabilities, Cloud, ClusterEndpoint, Lazy, LoginFacts, PackerFacts
from devserver.registry import resources as r
from devserver.registry.resources import PlannedResource

# The spec models and the catalog are imported inside the functions: importing the registry stays cheap, as
# `devserver --help` imports it and must not load pydantic or the catalog.
if TYPE_CHECKING:
    from devserver.plan import Resolved


# Metadata SSH keys are written to authorized_keys by the guest agent, so every OpenSSH key type works; "SSH access
# to instances as the root user is disabled even if you specify an SSH key in project or instance metadata for root"
# (cloud.google.com/compute/docs/instances/adding-removing-ssh-keys). root is refused for every cloud already.
LOGIN = LoginFacts()


def resources(resolved: Resolved) -> tuple[PlannedResource, ...]:
    from devserver.spec import GceCloud

    spec = resolved.spec
    cloud = spec.cloud
    assert isinstance(cloud, GceCloud)
    name = spec.name
    out: list[PlannedResource] = []
    if cloud.network is not None:
        out.append(PlannedResource("VPC network", cloud.network, {"state": "existing"}, existing=True))
    else:
        out += [
            PlannedResource("VPC network", f"{name}-net", {"state": "new"}, "net", "gcp:compute/network:Network"),
            PlannedResource("subnetwork", f"{name}-subnet", {}, "subnet", "gcp:compute/subnetwork:Subnetwork"),
        ]
    for family, cidrs in sorted(r.cidrs_by_family(spec.ssh.allowed_cidrs).items()):
        out.append(
            PlannedResource(
                "firewall rule",
                f"{name}-ssh-v{family}",
                r.ssh_details(cidrs),
                f"ssh-v{family}",
                "gcp:compute/firewall:Firewall",
            )
        )
    out.append(PlannedResource("static IP", f"{name}-ip", {}, "ip", "gcp:compute/address:Address"))
    # GPU VMs cannot live-migrate: the stack sets TERMINATE, as GCE requires.
    details = {**r.vm_details(resolved), "on host maintenance": "TERMINATE"}
    out.append(PlannedResource("GPU VM", f"{name}-vm", details, "vm", "gcp:compute/instance:Instance"))
    if spec.disks.data is not None:
        out.append(
            PlannedResource("data volume", f"{name}-data", r.data_details(resolved), "data", "gcp:compute/disk:Disk")
        )
    if resolved.node_pools:
        out += [
            PlannedResource(
                "GKE cluster", f"{name}-gke", r.cluster_details(resolved), "cluster", "gcp:container/cluster:Cluster"
            ),
            PlannedResource("system node pool", f"{name}-system", {}, "system-pool", "gcp:container/nodePool:NodePool"),
            *r.gpu_pools(resolved, "GPU node pool", "gcp:container/nodePool:NodePool"),
        ]
    return tuple(out)


def packer_variables(resolved: Resolved) -> dict[str, object]:
    """The googlecompute source's variables: where to build, on which machine, from which stock image family."""
    from devserver import catalog as catalog_module
    from devserver.spec import GceCloud

    spec, machine = resolved.spec, resolved.machine
    cloud = spec.cloud
    assert isinstance(cloud, GceCloud)
    assert machine is not None
    # projects/<project>/global/images/family/<family>
    parts = catalog_module.load().clouds[cloud.provider].images[spec.os].split("/")
    accelerator = ""
    if machine.accelerator:
        accelerator = f"projects/{cloud.project}/zones/{cloud.zone}/acceleratorTypes/{machine.accelerator}"
    return {
        "gce_project": cloud.project,
        "gce_zone": cloud.zone,
        "gce_machine_type": machine.type,
        "gce_accelerator_type": accelerator,
        "gce_accelerator_count": machine.gpu_count if machine.accelerator else 0,
        "gce_source_image_project": parts[1],
        "gce_source_image_family": parts[-1],
    }


# The stack's GKE cluster is IPv4 (the IP allocation policy's default stack type): its control plane's public endpoint
# has an IPv4 address only, so only IPv4 networks can be authorized to reach it. With authorized networks enabled,
# GKE admits only the listed blocks (plus Google's own management addresses; access from every Google Cloud VM's
# public IP stays off). https://cloud.google.com/kubernetes-engine/docs/how-to/authorized-networks
CLUSTER_ENDPOINT = ClusterEndpoint(
    service="GKE",
    acl="master authorized networks",
    families=frozenset({4}),
    source="https://cloud.google.com/kubernetes-engine/docs/how-to/authorized-networks",
)


CLOUD = Cloud(
    name="gce",
    title="Google Compute Engine",
    # GCE imports a tar.gz holding one file named disk.raw, written in oldgnu format with sparse files.
    image_formats=(("gce-tar", "disk.raw.tar.gz"),),
    region_field="cloud.zone",
    capabilities=Capabilities(node_pools=True, spot=True, image_project=True),
    resources=resources,
    packer=PackerFacts("googlecompute", packer_variables),
    component=Lazy("devserver.infra.gce", "GceDevserver", extra="gce"),
    uploader=Lazy("devserver.clouds.gce", "from_options", extra="gce"),
    upload_sdk=("google.cloud.storage", "google.cloud.compute_v1"),
    login=LOGIN,
    cluster_endpoint=CLUSTER_ENDPOINT,
)
