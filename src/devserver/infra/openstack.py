"""OpenStack (CSC cPouta first): a GPU devserver on a GPU flavor, reached through a floating IP.

OpenStack has no managed Kubernetes node pools here; the spec model rejects a ``kubernetes`` section for it.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_openstack as openstack

from devserver.infra.common import (
    SSH_PORT,
    DevserverComponent,
    DevserverOutputs,
    cloud_init,
    rule_description,
)
from devserver.plan import Resolved
from devserver.spec import OpenStackCloud

# Nova gives an attached volume's disk the volume ID as serial
# (https://specs.openstack.org/openstack/nova-specs/specs/rocky/approved/local-disk-serial-numbers.html), which
# virtio-blk cuts to 20 bytes (VIRTIO_BLK_ID_BYTES); systemd's 60-persistent-storage.rules link the disk as
# /dev/disk/by-id/virtio-<serial>.
VIRTIO_SERIAL_LENGTH = 20


def virtio_device(volume_id: str) -> str:
    """The stable path of Cinder volume `volume_id` attached over virtio-blk."""
    return f"/dev/disk/by-id/virtio-{volume_id[:VIRTIO_SERIAL_LENGTH]}"


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class OpenStackDevserver(DevserverComponent):
    """A key pair, a security group with one SSH rule per allowed CIDR, a port on the spec's project network, the
    GPU server booted from a Cinder volume of ``disks.boot_gb`` (the flavor's own root disk is fixed), a floating
    IP from ``cloud.external_network`` associated with the port, and a Cinder data volume attached to the server.

    Auth comes from clouds.yaml (the ``cloud.cloud`` entry) or ``OS_*`` variables. Cinder encryption depends on
    the site's volume types; cPouta's default type is used.
    """

    RESOURCE_TYPE = "devserver:infra:OpenStackDevserver"

    def __init__(self, resolved: Resolved, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(resolved, opts)
        cloud = self.spec.cloud
        assert isinstance(cloud, OpenStackCloud)
        name = self.spec.name
        self.use_provider(
            openstack.Provider(
                f"{name}-openstack", cloud=cloud.cloud, region=cloud.region, opts=pulumi.ResourceOptions(parent=self)
            )
        )
        tags = [f"{key}={value}" for key, value in self.labels.items()]
        group = openstack.networking.SecGroup(
            self.names.name("ssh"), description=f"SSH to devserver {name}", tags=tags, opts=self.child()
        )
        for index, cidr in enumerate(self.spec.ssh.allowed_cidrs):
            openstack.networking.SecGroupRule(
                self.names.name(f"ssh-{index}"),
                security_group_id=group.id,
                direction="ingress",
                ethertype="IPv6" if ":" in cidr else "IPv4",
                protocol="tcp",
                port_range_min=SSH_PORT,
                port_range_max=SSH_PORT,
                remote_ip_prefix=cidr,
                description=rule_description(self.spec, f"SSH from {cidr}"),
                opts=self.child(),
            )
        network = openstack.networking.get_network_output(name=cloud.network, opts=self.invoke_opts())
        port = openstack.networking.Port(
            self.names.name("port"),
            network_id=network.id,
            security_group_ids=[group.id],
            tags=tags,
            opts=self.child(),
        )
        key = openstack.compute.Keypair(
            self.names.name("key"), public_key=self.spec.ssh.public_keys[0], opts=self.child()
        )
        server = openstack.compute.Instance(
            self.names.name("vm"),
            flavor_name=self.machine.type,
            key_pair=key.name,
            networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
            block_devices=[
                openstack.compute.InstanceBlockDeviceArgs(
                    source_type="image",
                    uuid=self._image_id(),
                    destination_type="volume",
                    volume_size=self.spec.disks.boot_gb,
                    boot_index=0,
                    delete_on_termination=True,
                )
            ],
            user_data=cloud_init(self.spec),
            metadata=self.labels,
            tags=tags,
            opts=self.child(),
        )
        floating_ip = openstack.networking.FloatingIp(
            self.names.name("ip"), pool=cloud.external_network, tags=tags, opts=self.child()
        )
        openstack.networking.FloatingIpAssociate(
            self.names.name("ip-association"), floating_ip=floating_ip.address, port_id=port.id, opts=self.child()
        )
        data_device: pulumi.Output[str] | None = None
        if self.spec.disks.data is not None:
            volume = openstack.blockstorage.Volume(
                self.names.name("data"),
                size=self.spec.disks.data.size_gb,
                description=f"data volume of devserver {name}",
                metadata=self.labels,
                opts=self.child(),
            )
            openstack.compute.VolumeAttach(
                self.names.name("data-attachment"), instance_id=server.id, volume_id=volume.id, opts=self.child()
            )
            data_device = volume.id.apply(virtio_device)
        self.publish(
            DevserverOutputs(
                host=floating_ip.address,
                ssh_user=self.spec.ssh.admin_user,
                ssh_port=SSH_PORT,
                instance_id=server.id,
                gpu=resolved.gpu_summary,
                image=resolved.image,
                data_device=data_device,
            )
        )

    def _image_id(self) -> pulumi.Input[str]:
        """Glance image ID: the spec's ``image.name`` when it is one, else the newest image of that name."""
        image = self.resolved.image
        if _UUID.match(image):
            return image
        # Annotated so the type holds where mypy is told to skip the provider SDK (it would be Any there).
        found: pulumi.Output[str] = openstack.images.get_image_output(
            name=image, most_recent=True, opts=self.invoke_opts()
        ).id
        return found
