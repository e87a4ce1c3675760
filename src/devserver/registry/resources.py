"""What a stack creates, by name: the value types of every cloud entry's ``resources`` function.

A cloud's ``resources(resolved)`` returns, in the order people read them, every resource its Pulumi stack registers
for that spec (type token and name, exactly as registered) plus the existing cloud objects the stack only looks up
(``existing``: a given network, the default VPC). The stack asks :meth:`ResourcePlan.name` for each name it
registers, and ``devserver plan`` prints the same list, so the two cannot drift apart. Nothing here imports Pulumi.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devserver.plan import NodePoolPlan, Resolved

SSH_PORT = 22
#: Label/tag key every resource carries; its value is the spec's name. The policy pack requires it.
NAME_LABEL = "devserver"
#: Label/tag (or, on resources without labels, description marker) saying the spec set ``ssh.allow_world``.
#: The policy pack lets a world-open SSH rule through only on resources that carry it.
ALLOW_WORLD_LABEL = "devserver-allow-world"
#: The label keys devserver sets itself: a spec's ``labels`` may not name them.
RESERVED_LABELS = (NAME_LABEL, ALLOW_WORLD_LABEL)


@dataclass(frozen=True)
class PlannedResource:
    """One resource a stack creates (or, `existing`, only looks up), for people to review.

    `kind`: what it is, in words. `name`: the Pulumi resource name the stack registers (for an existing object, the
    cloud's name of it). `key`: how the stack asks for the name (unique within a plan). `type`: the Pulumi type
    token it is registered as ("" when `existing`).
    """

    kind: str
    name: str
    details: dict[str, str] = field(default_factory=dict)
    key: str = ""
    type: str = ""
    existing: bool = False


@dataclass(frozen=True)
class ResourcePlan:
    """A cloud's planned resources, looked up by key."""

    resources: tuple[PlannedResource, ...]

    def name(self, key: str) -> str:
        """The name of the created resource `key`; KeyError when the plan lists none (so a stack cannot register
        a resource `devserver plan` does not show)."""
        for resource in self.resources:
            if resource.key == key and not resource.existing:
                return resource.name
        known = ", ".join(r.key for r in self.created())
        raise KeyError(f"the plan lists no resource {key!r}; it lists {known}")

    def created(self) -> tuple[PlannedResource, ...]:
        """The resources the stack registers (not the existing ones it looks up)."""
        return tuple(r for r in self.resources if not r.existing)


def cidrs_by_family(cidrs: Sequence[str]) -> dict[int, list[str]]:
    """{4: [...], 6: [...]} with only the families present: GCE, Azure and OpenStack rules take one family each."""
    out: dict[int, list[str]] = {}
    for cidr in cidrs:
        out.setdefault(ipaddress.ip_network(cidr).version, []).append(cidr)
    return out


def ssh_details(cidrs: Sequence[str]) -> dict[str, str]:
    return {"allow": f"tcp/{SSH_PORT}", "from": ", ".join(cidrs) or "(none)"}


def vm_details(resolved: Resolved) -> dict[str, str]:
    """The GPU VM's details every cloud shows; entries add their own (maintenance policy, metadata service)."""
    spec, machine = resolved.spec, resolved.machine
    assert machine is not None
    details = {
        "machine type": machine.type,
        "gpu": resolved.gpu_summary,
        "image": resolved.image,
        "boot disk": f"{spec.disks.boot_gb} GiB, encrypted",
        "spot": "yes" if spec.machine.spot else "no",
        "admin user": spec.ssh.admin_user,
    }
    if machine.accelerator:
        details["accelerator"] = f"{machine.gpu_count}x {machine.accelerator}"
    if machine.hyperv_generation:
        details["hyper-v generation"] = f"V{machine.hyperv_generation}"
    return details


def data_details(resolved: Resolved) -> dict[str, str]:
    data = resolved.spec.disks.data
    assert data is not None
    return {
        "size": f"{data.size_gb} GiB",
        "mount": data.mount_point,
        "filesystem": data.filesystem,
        "docker data-root": "yes" if data.docker_data_root else "no",
    }


def cluster_details(resolved: Resolved) -> dict[str, str]:
    kubernetes = resolved.spec.kubernetes
    assert kubernetes is not None
    # the GPU operator's release is listed on its own, with its resolved modes (devserver.kubernetes)
    return {"version": kubernetes.version or "cloud default"}


def pool_details(pool: NodePoolPlan) -> dict[str, str]:
    return {
        "machine type": pool.machine.type,
        "gpu": f"{pool.machine.gpu_count}x {pool.machine.gpu}",
        "nodes": str(pool.node_count),
        "taints": ", ".join(pool.taints) or "(none)",
    }


def gpu_pools(resolved: Resolved, kind: str, type_token: str) -> list[PlannedResource]:
    """One resource per planned GPU node pool, named ``<spec>-<pool>`` and keyed ``pool-<pool>``."""
    return [
        PlannedResource(kind, f"{resolved.spec.name}-{pool.name}", pool_details(pool), f"pool-{pool.name}", type_token)
        for pool in resolved.node_pools
    ]
