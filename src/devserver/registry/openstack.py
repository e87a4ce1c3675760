"""OpenStack (CSC cPouta first): images as qcow2 in Glance, the openstack Packer source and the users its stock
images log in as, and what the stack creates (a security group with one rule per allowed CIDR, a port on the
spec's project network, which is looked up, a key pair, the server, a floating IP and its association, and a
Cinder data volume and its attachment). No managed Kubernetes, no spot capacity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devserver.registry import Capabilities, Cloud, Lazy, LoginFacts, PackerFacts
from devserver.registry import resources as r
from devserver.registry.resources import PlannedResource

# The spec models and the catalog are imported inside the functions: importing the registry stays cheap, as
# `devserver --help` imports it and must not load pydantic or the catalog.
if TYPE_CHECKING:
    from devserver.plan import Resolved

# The default user of each OS's Glance image on cPouta: Packer logs in as it.
LOGIN_USERS = {"debian-12": "debian", "ubuntu-22.04": "ubuntu", "ubuntu-24.04": "ubuntu"}


# Nova's keypair import parses the key with pyca/cryptography's load_ssh_public_key (nova/crypto.py): RSA, ECDSA and
# ED25519. FIDO (sk-*) keys load only with cryptography 43 or newer (pyca/cryptography#10608), which a site's Nova
# may not run, so they are refused. Nova documents no reserved user names.
LOGIN = LoginFacts(
    key_types=frozenset({"ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"})
)


def resources(resolved: Resolved) -> tuple[PlannedResource, ...]:
    from devserver.spec import OpenStackCloud

    spec = resolved.spec
    cloud = spec.cloud
    assert isinstance(cloud, OpenStackCloud)
    name = spec.name
    net = "openstack:networking"
    cidrs = spec.ssh.allowed_cidrs
    # The boot disk is a Cinder volume of the site's default volume type; whether that type encrypts is the site's.
    details = {
        **r.vm_details(resolved),
        "boot disk": f"{spec.disks.boot_gb} GiB Cinder volume, encryption: the site's volume type decides",
    }
    out = [
        PlannedResource("network", cloud.network, {"state": "existing"}, existing=True),
        PlannedResource("security group", f"{name}-ssh", r.ssh_details(cidrs), "ssh", f"{net}/secGroup:SecGroup"),
        *(
            PlannedResource(
                "security group rule",
                f"{name}-ssh-{index}",
                r.ssh_details([cidr]),
                f"ssh-{index}",
                f"{net}/secGroupRule:SecGroupRule",
            )
            for index, cidr in enumerate(cidrs)
        ),
        PlannedResource("port", f"{name}-port", {"network": cloud.network}, "port", f"{net}/port:Port"),
        PlannedResource("key pair", f"{name}-key", {}, "key", "openstack:compute/keypair:Keypair"),
        PlannedResource("GPU VM", f"{name}-vm", details, "vm", "openstack:compute/instance:Instance"),
        PlannedResource(
            "floating IP", f"{name}-ip", {"pool": cloud.external_network}, "ip", f"{net}/floatingIp:FloatingIp"
        ),
        PlannedResource(
            "floating IP association",
            f"{name}-ip",
            {},
            "ip-association",
            f"{net}/floatingIpAssociate:FloatingIpAssociate",
        ),
    ]
    if spec.disks.data is not None:
        out += [
            PlannedResource(
                "data volume", f"{name}-data", r.data_details(resolved), "data", "openstack:blockstorage/volume:Volume"
            ),
            PlannedResource(
                "volume attachment",
                f"{name}-data",
                {},
                "data-attachment",
                "openstack:compute/volumeAttach:VolumeAttach",
            ),
        ]
    return tuple(out)


def packer_variables(resolved: Resolved) -> dict[str, object]:
    """The openstack source's variables: the clouds.yaml entry, region, flavor, stock image, floating IP network."""
    from devserver import catalog as catalog_module
    from devserver.spec import OpenStackCloud

    spec, machine = resolved.spec, resolved.machine
    cloud = spec.cloud
    assert isinstance(cloud, OpenStackCloud)
    assert machine is not None
    return {
        "openstack_cloud": cloud.cloud,
        "openstack_region": cloud.region,
        "openstack_flavor": machine.type,
        "openstack_source_image": catalog_module.load().clouds[cloud.provider].images[spec.os],
        "openstack_floating_ip_network": cloud.external_network,
    }


CLOUD = Cloud(
    name="openstack",
    title="OpenStack",
    image_formats=(("qcow2", "disk.qcow2"),),
    region_field="cloud.region",
    capabilities=Capabilities(),
    resources=resources,
    packer=PackerFacts("openstack", packer_variables, login_users=LOGIN_USERS),
    component=Lazy("devserver.infra.openstack", "OpenStackDevserver", extra="openstack"),
    uploader=Lazy("devserver.clouds.openstack", "from_options", extra="openstack"),
    upload_sdk=("openstack",),
    login=LOGIN,
)
