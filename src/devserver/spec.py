"""The devserver spec: one model that the stacks, the roles and the image builders all read.

A `devserver.yaml` is validated once, at the edge, into a :class:`DevserverSpec`. Everything downstream takes the
model (or the :class:`~devserver.plan.Resolved` view of it), never raw dictionaries. Unknown keys are errors
(``extra="forbid"``) so that a typo never silently falls back to a default.

This module checks what can be checked from the spec alone (shapes, formats, cross-field rules such as "no world-open
SSH"). Facts that need the GPU catalog (which machine carries which GPU, driver/CUDA pairs) are checked by
:func:`devserver.plan.resolve`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from devserver import login, registry, versions
from devserver.errors import FieldError
from devserver.registry.resources import RESERVED_LABELS

OsName = Literal["debian-12", "ubuntu-22.04", "ubuntu-24.04"]

_NAME_RE = r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$"
_SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( .*)?$"
)
_VERSION_RE = r"^\d+\.\d+(\.\d+)?$"

# Booleans and integers are strict: YAML's true/false (and YAML 1.1's yes/no) are booleans and 12 is an integer, but
# a quoted "yes", a `true` where a count goes or 16.0 are refused rather than coerced to something the user never
# wrote. Every boolean and integer field of the spec is a StrictBool or a StrictInt.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class GceCloud(_Model):
    """Google Compute Engine: the project and zone the devserver lives in."""

    provider: Literal["gce"]
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="GCP project ID.")
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+\d+-[a-z]$", description="Zone, e.g. us-central1-a.")
    network: str | None = Field(default=None, description="Existing VPC network to use; a new one when omitted.")

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]


class AzureCloud(_Model):
    """Azure: subscription, resource group and location."""

    provider: Literal["azure"]
    subscription_id: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="Subscription GUID.",
    )
    resource_group: str = Field(pattern=r"^[-\w.()]{1,89}[-\w()]$", description="Resource group (created if absent).")
    location: str = Field(description="Azure location, e.g. westeurope.")
    trusted_launch: StrictBool = Field(default=False, description="Use Trusted Launch (secure boot + vTPM, gen2 only).")

    @property
    def region(self) -> str:
        return self.location


class AwsCloud(_Model):
    """AWS: region, and optionally the subnet to place the instance in (default VPC otherwise)."""

    provider: Literal["aws"]
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$", description="Region, e.g. us-east-1.")
    subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]{8,17}$")
    availability_zone: str | None = Field(default=None, pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")

    @model_validator(mode="after")
    def _zone_in_region(self) -> AwsCloud:
        # An availability zone is its region's name plus one letter (us-east-1a); the default subnet of a zone in
        # another region cannot be found from this region.
        zone = self.availability_zone
        if zone is not None and zone[:-1] != self.region:
            raise FieldError(
                "availability_zone",
                f"is not in region {self.region}",
                f"use one of {self.region}'s zones, e.g. {self.region}a, or set cloud.region: {zone[:-1]}",
                zone,
            )
        return self


class OpenStackCloud(_Model):
    """OpenStack (CSC cPouta first): the clouds.yaml entry, the project network and the external network."""

    provider: Literal["openstack"]
    cloud: str = Field(min_length=1, description="Name of the clouds.yaml entry (or OS_CLOUD).")
    region: str = Field(default="regionOne")
    network: str = Field(min_length=1, description="Project network the VM attaches to.")
    external_network: str = Field(default="public", description="Network floating IPs come from.")


class LocalCloud(_Model):
    """A local qemu VM: what `devserver image build --target local` and `image boot` produce. No GPU."""

    provider: Literal["local"]
    cpus: StrictInt = Field(default=2, ge=1, le=64)
    memory_gb: StrictInt = Field(default=4, ge=1, le=512)

    @property
    def region(self) -> str:
        return "local"


Cloud = Annotated[GceCloud | AzureCloud | AwsCloud | OpenStackCloud | LocalCloud, Field(discriminator="provider")]


class GpuRequest(_Model):
    model: str = Field(min_length=1, description="GPU model from the catalog, e.g. t4, l4, a100-80gb, h100.")
    count: StrictInt = Field(default=1, ge=1, le=16)

    @field_validator("model")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class Machine(_Model):
    """The VM shape. Give the GPU, the machine type, or both: the catalog fills in and checks the rest."""

    gpu: GpuRequest | None = None
    type: str | None = Field(default=None, min_length=1, description="Machine type / size / flavor.")
    spot: StrictBool = Field(default=False, description="Spot / preemptible capacity.")


class ImageRef(_Model):
    """A built image to boot instead of the stock OS image (name, ID or self-link, as the cloud names it)."""

    name: str = Field(min_length=1)
    project: str | None = Field(default=None, description="GCE: project holding the image.")


class DataVolume(_Model):
    size_gb: StrictInt = Field(ge=1, le=65536)
    mount_point: str = Field(default="/data", pattern=r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$")
    docker_data_root: StrictBool = Field(default=True, description="Move Docker's data-root onto the data volume.")
    filesystem: Literal["ext4", "xfs"] = "ext4"

    @field_validator("mount_point")
    @classmethod
    def _not_system(cls, value: str) -> str:
        reserved = {"/", "/boot", "/etc", "/usr", "/var", "/bin", "/sbin", "/lib", "/proc", "/sys", "/dev", "/run"}
        if value.rstrip("/") in reserved or ".." in value.split("/"):
            raise FieldError("", "would hide a system directory", "use a path of its own, e.g. /data", value)
        return value


class Disks(_Model):
    boot_gb: StrictInt = Field(default=100, ge=20, le=4096)
    data: DataVolume | None = None


class Ssh(_Model):
    """Who may log in, with which keys, from where. There is no default CIDR: SSH is never open by accident."""

    admin_user: str = Field(default="devserver", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    public_keys: list[str] = Field(default_factory=list)
    allowed_cidrs: list[str] = Field(default_factory=list)
    allow_world: StrictBool = Field(
        default=False, description="Permit 0.0.0.0/0 or ::/0 in allowed_cidrs. Off unless you say so."
    )

    @field_validator("admin_user")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in {"root", "daemon", "bin", "sys", "nobody", "sshd", "ubuntu", "admin"}:
            raise FieldError("", "is a system or image-reserved account", "choose another name, e.g. devserver", value)
        return value

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for index, key in enumerate(keys):
            if not _SSH_KEY_RE.match(key):
                shown = key if len(key) <= 40 else key[:37] + "..."
                raise FieldError(
                    str(index), "is not an OpenSSH public key", "paste the one line of your ~/.ssh/*.pub file", shown
                )
        return keys

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for index, cidr in enumerate(cidrs):
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise FieldError(
                    str(index), f"is not a network in CIDR form ({exc})", "write it like 203.0.113.4/32", cidr
                ) from None
        return cidrs

    @model_validator(mode="after")
    def _no_world(self) -> Ssh:
        world = [c for c in self.allowed_cidrs if ipaddress.ip_network(c).prefixlen == 0]
        if world and not self.allow_world:
            raise FieldError(
                "allowed_cidrs",
                "opens SSH to the whole internet",
                "list your own networks instead, or set ssh.allow_world: true if you really mean it",
                ", ".join(world),
            )
        return self


class Driver(_Model):
    branch: StrictInt | None = Field(
        default=None, ge=300, le=999, description="Driver branch, e.g. 535. Default: the distro's, or the pinned one."
    )
    flavour: Literal["auto", "open", "proprietary"] = Field(
        default="auto", description="Kernel module flavour; auto picks from the GPU's architecture."
    )
    source: Literal["distro", "cuda-repo"] = Field(
        default="distro", description="The OS archive, or NVIDIA's CUDA repository."
    )


class Cuda(_Model):
    install: StrictBool = True
    version: str = Field(default="auto", description="X.Y, or auto: the newest the source offers for the branch.")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "auto" and not re.match(r"^\d+\.\d+$", value):
            raise FieldError("", "is not a CUDA version", "write it as major.minor, e.g. 12.2, or auto", value)
        return value


class Software(_Model):
    driver: Driver = Field(default_factory=Driver)
    cuda: Cuda = Field(default_factory=Cuda)
    container_toolkit: str = Field(default=versions.CONTAINER_TOOLKIT, pattern=_VERSION_RE)
    container_runtime: Literal["docker", "containerd", "both", "none"] = "both"
    default_runtime_nvidia: StrictBool = Field(default=False, description="Make nvidia the default container runtime.")
    reboot: StrictBool = Field(
        default=False, description="Let `devserver update` reboot a host when the driver needs it."
    )
    gpu_check_image: str = Field(
        default="docker.io/library/ubuntu:24.04",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        description="Image of the GPU-in-a-container check that ends `devserver update` (a mirror can serve it).",
    )

    @model_validator(mode="after")
    def _toolkit_needs_runtime(self) -> Software:
        # Without a container engine the role installs no toolkit: a version given explicitly would do nothing.
        if self.container_runtime == "none" and "container_toolkit" in self.model_fields_set:
            raise FieldError(
                "container_toolkit",
                "is never installed: container_runtime is none",
                "remove software.container_toolkit, or set software.container_runtime",
                self.container_toolkit,
            )
        return self


class Repositories(_Model):
    """Where every package comes from. An air-gapped site points each of these at its mirror."""

    apt_proxy: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    apt_proxy_bypass: list[str] = Field(
        default_factory=list,
        description="Hosts reached directly, not through apt_proxy (e.g. a local mirror the proxy refuses).",
    )
    debian_mirror: str = Field(default=versions.DEBIAN_MIRROR, pattern=r"^https?://\S+$")
    debian_security_mirror: str = Field(default=versions.DEBIAN_SECURITY_MIRROR, pattern=r"^https?://\S+$")
    ubuntu_mirror: str = Field(default=versions.UBUNTU_MIRROR, pattern=r"^https?://\S+$")
    cuda_repo: str = Field(default=versions.CUDA_REPO, pattern=r"^https?://\S+$")
    cuda_repo_key_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="Signing key URL; default <cuda_repo>/<distro>/x86_64/" + versions.CUDA_REPO_KEY_FILE + ".",
    )
    cuda_repo_key_fingerprint: str = Field(default=versions.CUDA_REPO_KEY_FINGERPRINT, pattern=r"^[0-9A-F]{40}$")
    container_toolkit_repo: str = Field(default=versions.CONTAINER_TOOLKIT_REPO, pattern=r"^https?://\S+$")
    container_toolkit_key_url: str = Field(default=versions.CONTAINER_TOOLKIT_KEY_URL, pattern=r"^https?://\S+$")
    container_toolkit_key_fingerprint: str = Field(
        default=versions.CONTAINER_TOOLKIT_KEY_FINGERPRINT, pattern=r"^[0-9A-F]{40}$"
    )
    docker_repo: str | None = Field(
        default=None, pattern=r"^https?://\S+$", description="Docker's own repository; the distro's docker.io if unset."
    )
    kind_url: str = Field(
        default=versions.KIND_URL,
        pattern=r"^https?://\S+$",
        description="kind binaries: <url>/<version>/kind-linux-<arch>.",
    )
    kubectl_url: str = Field(
        default=versions.KUBECTL_URL,
        pattern=r"^https?://\S+$",
        description="kubectl binaries: <url>/<version>/bin/linux/<arch>/kubectl.",
    )
    helm_url: str = Field(
        default=versions.HELM_URL,
        pattern=r"^https?://\S+$",
        description="Helm: <url>/helm-<version>-linux-<arch>.tar.gz.",
    )
    gpu_operator_chart_repo: str = Field(
        default=versions.GPU_OPERATOR_CHART_REPO,
        pattern=r"^https?://\S+$",
        description="Helm repository of the operator.",
    )


class Taint(_Model):
    key: str = Field(pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
    value: str = Field(default="", pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,62})?$")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


def _gpu_taint() -> list[Taint]:
    return [Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule")]


class NodePool(_Model):
    name: str = Field(default="gpu", pattern=r"^[a-z][a-z0-9]{0,11}$", description="Pool name (AKS: ≤ 12 chars).")
    gpu: GpuRequest
    machine_type: str | None = None
    node_count: StrictInt = Field(default=1, ge=0, le=100)
    taints: list[Taint] = Field(default_factory=_gpu_taint)


_KIND_IMAGE_RE = r"^[a-z0-9.:/_-]+/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$"


class KindCluster(_Model):
    """A kind cluster on the devserver itself (the single-VM case): one node, with every GPU of the machine."""

    name: str = Field(default="devserver", pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$", description="kind cluster name.")
    node_image: str = Field(
        default=versions.KIND_NODE_IMAGE,
        pattern=_KIND_IMAGE_RE,
        description="Node image, pinned by digest (<registry>/node:vX.Y.Z@sha256:...); a mirror may serve it.",
    )


class GpuOperator(_Model):
    """NVIDIA's GPU operator on the host driver (devserver installs the driver; the operator never does)."""

    enabled: StrictBool = True
    version: str = Field(default=versions.GPU_OPERATOR, pattern=r"^v\d+\.\d+\.\d+$", description="Chart version.")
    toolkit: Literal["auto", "on", "off"] = Field(
        default="auto", description="The operator's container toolkit; auto decides per case (see docs/kubernetes.md)."
    )
    cdi: Literal["auto", "on", "off"] = Field(
        default="auto", description="Container Device Interface; auto: off with nvshare, on otherwise."
    )


class Nvshare(_Model):
    """nvshare: one GPU per node shared by up to `virtual_devices` pods (nvshare.com/gpu)."""

    enabled: StrictBool = False
    virtual_devices: StrictInt = Field(default=10, ge=1, le=64, description="nvshare.com/gpu devices per GPU.")
    lib_image: str = Field(default=versions.NVSHARE_LIB_IMAGE, min_length=1, description="libnvshare image.")
    device_plugin_image: str = Field(default=versions.NVSHARE_DEVICE_PLUGIN_IMAGE, min_length=1)
    scheduler_image: str = Field(default=versions.NVSHARE_SCHEDULER_IMAGE, min_length=1)


def _reject_old_form(value: object, field: str, example: str) -> object:
    """The pre-object forms (`gpu_operator: "v…"`, `nvshare: true`) were never read by any role; refuse them with the
    new spelling rather than guess."""
    if isinstance(value, (str, bool)):
        raise FieldError("", f"{field} is an object now", f"write {field}: {example}", value)
    return value


class Kubernetes(_Model):
    """A kind cluster on the devserver (`kind`, any cloud) or managed GPU node pools (`node_pools`, gce/azure/aws)."""

    version: str | None = Field(
        default=None, pattern=r"^\d+\.\d+$", description="Minor version; kind: must match the node image's."
    )
    kind: KindCluster | None = None
    node_pools: list[NodePool] = Field(default_factory=list)
    gpu_operator: GpuOperator = Field(default_factory=GpuOperator)
    nvshare: Nvshare = Field(default_factory=Nvshare)

    @field_validator("gpu_operator", mode="before")
    @classmethod
    def _operator_object(cls, value: object) -> object:
        return _reject_old_form(value, "gpu_operator", "{version: " + versions.GPU_OPERATOR + "}")

    @field_validator("nvshare", mode="before")
    @classmethod
    def _nvshare_object(cls, value: object) -> object:
        return _reject_old_form(value, "nvshare", "{enabled: true}")

    @model_validator(mode="after")
    def _one_cluster(self) -> Kubernetes:
        if (self.kind is None) == (not self.node_pools):
            raise FieldError(
                "",
                "needs exactly one cluster: a kind cluster on the devserver, or managed node pools",
                "give kubernetes.kind: {} or kubernetes.node_pools, not both and not neither",
            )
        names = [pool.name for pool in self.node_pools]
        if len(set(names)) != len(names):
            raise FieldError("node_pools", "node pool names must be unique", "give each pool its own name", names)
        return self


class DevserverSpec(_Model):
    """The whole devserver: where, what machine, what software. See `devserver schema` for every field."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, title="devserver spec")

    name: str = Field(pattern=_NAME_RE, description="Lowercase name; prefixes every resource the stacks create.")
    cloud: Cloud
    machine: Machine = Field(default_factory=Machine)
    os: OsName = "debian-12"
    image: ImageRef | None = None
    disks: Disks = Field(default_factory=Disks)
    ssh: Ssh = Field(default_factory=Ssh)
    software: Software = Field(default_factory=Software)
    repositories: Repositories = Field(default_factory=Repositories)
    kubernetes: Kubernetes | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels/tags on every resource.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        # The strictest of the four clouds (GCE): lowercase keys and values, ≤ 63 chars.
        for key, value in labels.items():
            if key in RESERVED_LABELS:
                raise FieldError(
                    key, "is a label devserver sets itself", "give your label another key, e.g. team or project", key
                )
            if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", key):
                raise FieldError(key, "is not a valid label key", "use lowercase letters, digits, _ or -", key)
            if not re.match(r"^[a-z0-9_-]{0,63}$", value):
                raise FieldError(key, "is not a valid label value", "use ≤ 63 lowercase letters, digits, _ or -", value)
        return labels

    @model_validator(mode="after")
    def _cross_checks(self) -> DevserverSpec:
        provider = self.cloud.provider
        if provider == "local":
            if self.machine.gpu is not None or self.machine.type is not None:
                raise FieldError(
                    "machine", "a local devserver is a qemu VM without a GPU", "remove machine.gpu and machine.type"
                )
        elif self.machine.gpu is None and self.machine.type is None:
            raise FieldError(
                "machine", f"a {provider} devserver needs a GPU or a machine type", "add machine.gpu.model"
            )
        elif not self.ssh.public_keys:
            raise FieldError("ssh.public_keys", "is empty: nobody could log in", "add the line of your ~/.ssh/*.pub")
        elif not self.ssh.allowed_cidrs:
            raise FieldError(
                "ssh.allowed_cidrs",
                "is empty: SSH would be closed to everyone",
                "list your networks, e.g. 203.0.113.4/32",
            )
        offering = registry.with_capability("node_pools")
        if self.kubernetes is not None and self.kubernetes.node_pools and provider not in offering:
            raise FieldError(
                "kubernetes",
                f"node pools are offered on {registry.spoken(offering)}, not {provider}",
                "use kubernetes.kind (a kind cluster on the devserver), or remove the section",
            )
        if self.software.default_runtime_nvidia and self.software.container_runtime == "none":
            raise FieldError(
                "software.default_runtime_nvidia", "needs a container runtime", "set software.container_runtime"
            )
        cloud = registry.get(provider)
        if self.image is not None and self.image.project is not None and not cloud.offers("image_project"):
            offering = registry.with_capability("image_project")
            raise FieldError(
                "image.project",
                f"is read only on {registry.spoken(offering, 'or')}, not {provider}",
                f"remove image.project; give the image as {cloud.title} names it in image.name",
                self.image.project,
            )
        login.check(self.ssh.admin_user, self.ssh.public_keys, cloud)
        return self
