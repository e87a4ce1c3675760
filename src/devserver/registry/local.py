"""A local qemu VM: the image target `devserver image build --target local` writes (qcow2) and `image boot` runs.
No stack, no uploader, no catalog section, no GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devserver.registry import Capabilities, Cloud
from devserver.registry.resources import PlannedResource

# The spec models and the catalog are imported inside the functions: importing the registry stays cheap, as
# `devserver --help` imports it and must not load pydantic or the catalog.
if TYPE_CHECKING:
    from devserver.plan import Resolved


def resources(resolved: Resolved) -> tuple[PlannedResource, ...]:
    """The VM `devserver image boot` starts (nothing in a cloud)."""
    from devserver.spec import LocalCloud

    spec = resolved.spec
    cloud = spec.cloud
    assert isinstance(cloud, LocalCloud)
    details = {
        "cpus": str(cloud.cpus),
        "memory": f"{cloud.memory_gb} GiB",
        "image": resolved.image,
        "disk": f"{spec.disks.boot_gb} GiB qcow2",
        "ssh": "127.0.0.1 (forwarded port)",
    }
    out = [PlannedResource("qemu VM", spec.name, details, "vm")]
    return tuple(out)


CLOUD = Cloud(
    name="local",
    title="local qemu VM",
    image_formats=(("qcow2", "disk.qcow2"),),
    region_field="",
    capabilities=Capabilities(gpus=False),
    resources=resources,
    in_catalog=False,
)
