"""The clouds devserver knows, one :class:`Cloud` entry each: the only list of cloud names in the product.

Every fact that differs between clouds lives in that cloud's entry (``registry/<cloud>.py``): the image formats its
upload takes, the Packer source that builds its images and that source's variables, the users its stock images log
in as, where its spec keeps the region, what it offers (node pools, spot, Trusted Launch…), the resources its stack
creates and their names, and — as lazy module paths — its Pulumi component and its uploader. Consumers ask the
registry (:func:`get`, :func:`names`, :func:`with_capability`) instead of testing provider strings.

This package imports no cloud SDK and no Pulumi: it sits below ``infra/``, ``clouds/`` and ``images/``.
Everything reads :data:`CLOUDS` when called, never at import, so an entry added to it is seen everywhere.

Adding a cloud: write ``registry/<cloud>.py`` with its :class:`Cloud` entry, add it to :data:`CLOUDS`, add its
spec model to the discriminated union in :mod:`devserver.spec`, and write the component and uploader the entry
names.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from devserver.registry.resources import PlannedResource, ResourcePlan

if TYPE_CHECKING:
    from devserver.plan import Resolved

DiskFormat = Literal["raw", "qcow2", "vhd-fixed", "vmdk-stream", "gce-tar"]
Capability = Literal["gpus", "node_pools", "spot", "trusted_launch", "hyperv_generations", "image_project"]

#: Every OpenSSH public key type the spec's key format admits (``ssh.public_keys``).
SSH_KEY_TYPES: frozenset[str] = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


class MissingExtraError(ImportError):
    """A cloud's SDK (Pulumi provider or upload SDK) is not installed; the message names the extra that brings it."""


@dataclass(frozen=True)
class Lazy:
    """``module.attribute``, imported on first use, from the pip extra `extra` (named in the install hint)."""

    module: str
    attribute: str
    extra: str

    def load(self, what: str) -> Any:
        """The attribute. Raises :class:`MissingExtraError` ("`what` needs <module>: pip install …") when a Pulumi
        module it needs is missing (the extra brings those); other import errors propagate."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith("pulumi"):
                raise
            raise MissingExtraError(
                f"{what} needs {exc.name}: pip install 'devserver[{self.extra}]'", name=exc.name
            ) from exc
        return getattr(module, self.attribute)


@dataclass(frozen=True)
class Capabilities:
    """What a cloud offers that a spec may ask for. The spec and plan checks read these, never provider names."""

    gpus: bool = True  # GPU machine types from the catalog (a local qemu VM has none)
    node_pools: bool = False  # managed Kubernetes with GPU node pools (the spec's `kubernetes` section)
    spot: bool = False  # spot / preemptible capacity (`machine.spot`)
    trusted_launch: bool = False  # secure boot + vTPM (`cloud.trusted_launch`), which needs a gen2 size
    hyperv_generations: bool = False  # machine sizes come in Hyper-V generations the image must match
    image_project: bool = False  # a built image may live in another project (`image.project`)


@dataclass(frozen=True)
class LoginFacts:
    """What the cloud's SSH key import and VM creation accept for the spec's ``ssh`` section.

    `key_types`: the OpenSSH key types its key import (or metadata) takes. `min_rsa_bits`: the smallest RSA modulus
    it takes (0: no minimum of its own). `reserved_users`: admin user names it refuses (or never lets log in), on top
    of the system accounts the spec refuses everywhere. Each entry cites where these facts come from.
    """

    key_types: frozenset[str] = SSH_KEY_TYPES
    min_rsa_bits: int = 0
    reserved_users: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PackerFacts:
    """How Packer builds this cloud's image inside the cloud (``devserver image build --builder cloud``).

    `source`: the Packer source (``images/packer/sources.pkr.hcl``). `variables`: that source's variables for a
    resolved spec of this cloud (the cloud-specific half of :func:`devserver.images.packer.render_vars`).
    `login_users`: OS → the user the stock image lets Packer log in as; a cloud not listed there gets Packer's own
    build user, which the source creates.
    """

    source: str
    variables: Callable[[Resolved], dict[str, object]]
    login_users: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterEndpoint:
    """How the public API endpoint of the cloud's managed Kubernetes cluster is limited to ``ssh.allowed_cidrs``.

    `service`: the managed Kubernetes service (GKE). `acl`: the cluster setting that holds the networks.
    `families`: the address families it can express for the cluster as the stack creates it (an IPv4 cluster, whose
    public endpoint has only an IPv4 address). `source`: where the cloud documents that. A spec with node pools
    whose ``ssh.allowed_cidrs`` hold no network of these families is refused at plan time (:mod:`devserver.plan`):
    the endpoint would be open to everyone or reachable by no one.
    """

    service: str
    acl: str
    families: frozenset[int]
    source: str

    def admitted(self, cidrs: Sequence[str]) -> list[str]:
        """The networks of `cidrs` the endpoint's ACL can hold, in order."""
        return [cidr for cidr in cidrs if ipaddress.ip_network(cidr).version in self.families]

    @property
    def families_text(self) -> str:
        """'IPv4' or 'IPv4 and IPv6'."""
        return spoken(tuple(f"IPv{family}" for family in sorted(self.families)))


@dataclass(frozen=True)
class Cloud:
    """One cloud, everything devserver knows about it that differs from the others.

    `name`: the spec's ``cloud.provider``, the image target, the stack folder ``stacks/<name>``, the extra.
    `image_formats`: (format, file name) in upload order; the first is what ``devserver image upload`` sends.
    `region_field`: the spec path of the field holding the region (the plan's problems name it).
    `in_catalog`: whether ``data/catalog.yaml`` has ``clouds.<name>`` (regions, machine types, stock images).
    `resources`: the resources its stack registers for a resolved spec, with their names (see
    :mod:`devserver.registry.resources`); the stack takes its names from it and ``devserver plan`` lists it.
    `component` / `uploader`: the Pulumi component class and the uploader factory, imported only when used.
    `upload_sdk`: the modules the uploader imports, checked before an upload starts.
    `login`: the SSH key types and admin user names the cloud accepts (see :class:`LoginFacts`).
    `cluster_endpoint`: how its managed Kubernetes API endpoint is restricted (clouds offering node pools).
    """

    name: str
    title: str
    image_formats: tuple[tuple[DiskFormat, str], ...]
    region_field: str
    capabilities: Capabilities
    resources: Callable[[Resolved], tuple[PlannedResource, ...]]
    in_catalog: bool = True
    packer: PackerFacts | None = None
    component: Lazy | None = None
    uploader: Lazy | None = None
    upload_sdk: tuple[str, ...] = ()
    login: LoginFacts = field(default_factory=LoginFacts)
    cluster_endpoint: ClusterEndpoint | None = None

    def offers(self, capability: Capability) -> bool:
        return bool(getattr(self.capabilities, capability))


def _entries() -> tuple[Cloud, ...]:
    from devserver.registry import aws, azure, gce, local, openstack

    return (gce.CLOUD, azure.CLOUD, aws.CLOUD, openstack.CLOUD, local.CLOUD)


def names() -> tuple[str, ...]:
    """Every cloud's name (the image targets)."""
    return tuple(cloud.name for cloud in CLOUDS)


def get(name: str) -> Cloud:
    """The entry for `name`; KeyError naming the known clouds otherwise."""
    for cloud in CLOUDS:
        if cloud.name == name:
            return cloud
    raise KeyError(f"no cloud named {name!r}; known: {', '.join(names())}")


def with_capability(capability: Capability) -> tuple[str, ...]:
    """The names of the clouds offering `capability`."""
    return tuple(cloud.name for cloud in CLOUDS if cloud.offers(capability))


def with_stacks() -> tuple[str, ...]:
    """The clouds a Pulumi stack creates devservers on (those with a component)."""
    return tuple(cloud.name for cloud in CLOUDS if cloud.component is not None)


def upload_targets() -> tuple[str, ...]:
    """The clouds ``devserver image upload`` sends images to (those with an uploader)."""
    return tuple(cloud.name for cloud in CLOUDS if cloud.uploader is not None)


def packer_sources() -> tuple[str, ...]:
    """The Packer cloud sources, one per cloud that builds images in the cloud."""
    return tuple(cloud.packer.source for cloud in CLOUDS if cloud.packer is not None)


def planned(resolved: Resolved) -> ResourcePlan:
    """What the stack of `resolved`'s cloud creates for it (or, for a local VM, what the image build makes)."""
    return ResourcePlan(get(resolved.spec.cloud.provider).resources(resolved))


def spoken(items: tuple[str, ...], conjunction: str = "and") -> str:
    """'gce, azure and aws' — a list in a sentence."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


class View(Mapping[str, Any]):
    """A read-only mapping from cloud name to one fact of its entry, read from :data:`CLOUDS` on every access
    (so modules can export ``{cloud: fact}`` tables that stay in step with the registry)."""

    def __init__(self, fact: Callable[[Cloud], Any], where: Callable[[Cloud], bool] = lambda _cloud: True) -> None:
        self._fact = fact
        self._where = where

    def __getitem__(self, name: str) -> Any:
        try:
            cloud = get(name)
        except KeyError:
            raise KeyError(name) from None
        if not self._where(cloud):
            raise KeyError(name)
        return self._fact(cloud)

    def __contains__(self, name: object) -> bool:
        # Membership without computing the fact (which may import a cloud's module).
        return any(cloud.name == name and self._where(cloud) for cloud in CLOUDS)

    def __iter__(self) -> Iterator[str]:
        return iter([cloud.name for cloud in CLOUDS if self._where(cloud)])

    def __len__(self) -> int:
        return sum(1 for cloud in CLOUDS if self._where(cloud))


#: Every cloud, in the order help texts and listings show them.
CLOUDS: tuple[Cloud, ...] = _entries()

__all__ = [
    "CLOUDS",
    "SSH_KEY_TYPES",
    "Capabilities",
    "Cloud",
    "ClusterEndpoint",
    "DiskFormat",
    "Lazy",
    "LoginFacts",
    "MissingExtraError",
    "PackerFacts",
    "PlannedResource",
    "ResourcePlan",
    "View",
    "get",
    "names",
    "packer_sources",
    "planned",
    "spoken",
    "upload_targets",
    "with_capability",
    "with_stacks",
]
