"""What every cloud's devserver component shares: the outputs contract, labels, cloud-init, taints, kubeconfigs.

Each cloud module (:mod:`~devserver.infra.gce`, ``azure``, ``aws``, ``openstack``) subclasses
:class:`DevserverComponent`; the stacks under ``stacks/<cloud>/`` load the spec with :func:`resolve_for_stack`,
build the component through :func:`devserver.infra.component_for` and export :attr:`DevserverComponent.outputs`
with :func:`export_outputs`. This module imports the Pulumi core SDK but no cloud provider SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import pulumi
import yaml

from devserver import registry
from devserver.errors import SpecError
from devserver.loader import load_spec
from devserver.plan import MachineChoice, Resolved, resolve
from devserver.registry.resources import ALLOW_WORLD_LABEL as ALLOW_WORLD_LABEL
from devserver.registry.resources import NAME_LABEL as NAME_LABEL
from devserver.registry.resources import SSH_PORT as SSH_PORT
from devserver.registry.resources import cidrs_by_family as cidrs_by_family
from devserver.spec import DevserverSpec

ALLOW_WORLD_MARKER = f"{ALLOW_WORLD_LABEL}=true"
WORLD_CIDRS = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class DevserverOutputs:
    """The outputs contract: the same names on every cloud, read by ``devserver update --stack``.

    `host` is the public address SSH reaches, `ssh_user`/`ssh_port` how to log in, `instance_id` the cloud's ID
    of the VM, `gpu` what it carries ('1x NVIDIA T4'), `image` the image it booted from as the cloud names it.
    `kubeconfig` (a secret) is present only where the spec asked for a Kubernetes cluster. `data_device`, present
    only where the spec has ``disks.data``, is the data disk's stable path as the guest sees it (a udev symlink such
    as ``/dev/disk/by-id/google-data``), which ``devserver update <stack folder>`` passes to the roles.
    """

    host: pulumi.Output[str]
    ssh_user: str
    ssh_port: int
    instance_id: pulumi.Output[str]
    gpu: str
    image: pulumi.Input[str]
    kubeconfig: pulumi.Output[str] | None = None
    data_device: pulumi.Input[str] | None = None

    def as_dict(self) -> dict[str, object]:
        """The outputs by name, `kubeconfig` and `data_device` left out when there is no cluster or data disk."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


#: Outputs a stack exports only when the spec asks for what they describe (a cluster, a data disk).
OPTIONAL_OUTPUTS: tuple[str, ...] = ("kubeconfig", "data_device")
#: Output names every stack exports.
OUTPUT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DevserverOutputs) if f.name not in OPTIONAL_OUTPUTS)


class DevserverComponent(pulumi.ComponentResource):
    """One GPU devserver (and its node pools) on one cloud, built from a resolved spec.

    Contract for subclasses: set ``RESOURCE_TYPE``; in ``__init__`` call ``super().__init__`` first, then
    :meth:`use_provider` with the cloud's provider configured from the spec, create every resource with
    ``opts=self.child()`` (lookups with :meth:`invoke_opts`), and end with :meth:`publish`. Every resource's name
    comes from :attr:`names`, the cloud registry entry's plan of what the stack creates (what `devserver plan`
    shows), never spelled out in the component. A subclass never re-validates the spec:
    :func:`devserver.plan.resolve` already rejected whatever cannot be built.
    """

    RESOURCE_TYPE: ClassVar[str]
    outputs: DevserverOutputs

    def __init__(self, resolved: Resolved, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.RESOURCE_TYPE, resolved.spec.name, None, opts)
        if resolved.machine is None or resolved.machine.gpu is None:
            raise ValueError(f"{resolved.spec.name}: a cloud devserver needs a resolved GPU machine")
        self.resolved = resolved
        self.spec: DevserverSpec = resolved.spec
        self.machine: MachineChoice = resolved.machine
        self.names: registry.ResourcePlan = registry.planned(resolved)
        self.labels: dict[str, str] = labels(resolved.spec)
        self._provider: pulumi.ProviderResource | None = None

    def use_provider(self, provider: pulumi.ProviderResource) -> None:
        """Make `provider` (configured from the spec, so nothing is configured twice) the one children use."""
        self._provider = provider

    def child(self, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
        """Options for a resource inside this component: parented to it, on the spec's provider."""
        return pulumi.ResourceOptions(parent=self, provider=self._provider, depends_on=list(depends_on))

    def invoke_opts(self) -> pulumi.InvokeOptions:
        """Options for a data-source lookup: on the spec's provider, parented to this component."""
        return pulumi.InvokeOptions(parent=self, provider=self._provider)

    def endpoint_cidrs(self) -> list[str]:
        """The networks the managed cluster's API endpoint admits: the spec's ``ssh.allowed_cidrs`` of the address
        families the cloud's endpoint ACL takes (the registry entry's fact). Never empty: the plan refuses a spec
        with node pools and no such network, so an endpoint is never left without its list (open to everyone)."""
        endpoint = registry.get(self.spec.cloud.provider).cluster_endpoint
        assert endpoint is not None, f"{self.spec.cloud.provider} has node pools but no cluster endpoint fact"
        cidrs = endpoint.admitted(self.spec.ssh.allowed_cidrs)
        assert cidrs, "devserver.plan refuses node pools without a network the endpoint ACL takes"
        return cidrs

    def publish(self, outputs: DevserverOutputs) -> None:
        self.outputs = outputs
        self.register_outputs(outputs.as_dict())


def labels(spec: DevserverSpec) -> dict[str, str]:
    """Labels/tags for every resource: the spec's own, then ``devserver: <name>`` (which wins), and the
    allow-world marker only when the spec opened SSH to the world on purpose (a spec label cannot forge it)."""
    own = {key: value for key, value in spec.labels.items() if key != ALLOW_WORLD_LABEL}
    out = {**own, NAME_LABEL: spec.name}
    if spec.ssh.allow_world:
        out[ALLOW_WORLD_LABEL] = "true"
    return out


def rule_description(spec: DevserverSpec, what: str) -> str:
    """Description for a firewall rule on a cloud whose rules take no labels (GCE firewalls, OpenStack rules):
    it names the devserver and carries the allow-world marker the policy pack reads."""
    text = f"{what} for devserver {spec.name}"
    return f"{text} [{ALLOW_WORLD_MARKER}]" if spec.ssh.allow_world else text


def cloud_init(spec: DevserverSpec) -> str:
    """cloud-init user-data creating the spec's admin user with its keys and passwordless sudo.

    `devserver update` logs in as this user and runs the playbook with become, so sudo must not ask for a
    password. Password logins are off; the image's default user is not created (one account, the spec's).
    """
    config = {
        "users": [
            {
                "name": spec.ssh.admin_user,
                "gecos": f"devserver admin ({spec.name})",
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": list(spec.ssh.public_keys),
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
    }
    # types-PyYAML types `width` as int | float(inf), which pyright sees as partly unknown
    dumped: str = yaml.safe_dump(config, sort_keys=False, width=10_000)  # pyright: ignore[reportUnknownMemberType]
    return "#cloud-config\n" + dumped


@dataclass(frozen=True)
class Taint:
    """A Kubernetes taint parsed from the planner's ``key=value:Effect`` form."""

    key: str
    value: str
    effect: str

    _UPPER: ClassVar[Mapping[str, str]] = {
        "NoSchedule": "NO_SCHEDULE",
        "PreferNoSchedule": "PREFER_NO_SCHEDULE",
        "NoExecute": "NO_EXECUTE",
    }

    @classmethod
    def parse(cls, text: str) -> Taint:
        key, rest = text.split("=", 1)
        value, effect = rest.rsplit(":", 1)
        return cls(key, value, effect)

    @property
    def upper_effect(self) -> str:
        """The effect as GKE and EKS spell it (NO_SCHEDULE)."""
        return self._UPPER[self.effect]

    def __str__(self) -> str:
        """The ``key=value:Effect`` form AKS takes."""
        return f"{self.key}={self.value}:{self.effect}"


def exec_kubeconfig(
    cluster: str, server: str, ca_data: str, command: str, args: Sequence[str], install_hint: str
) -> str:
    """A kubeconfig (JSON, which kubectl reads as YAML) authenticating through a credential plugin.

    No token is stored in it: the plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`) fetches short-lived ones.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [
            {
                "name": cluster,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": command,
                        "args": list(args),
                        "installHint": install_hint,
                        "provideClusterInfo": True,
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
        "current-context": cluster,
    }
    return json.dumps(config, indent=2)


def resolve_for_stack(spec_path: Path, provider: str) -> Resolved:
    """Load and resolve the spec for the `provider` stack, before any resource is registered.

    A spec that the model or the catalog rejects ends the program with :class:`pulumi.RunError` carrying the
    same problem lines `devserver plan` prints (a RunError is reported without a Python traceback); so does a
    spec written for another cloud.
    """
    source = str(spec_path)
    try:
        resolved = resolve(load_spec(spec_path), source)
    except SpecError as exc:
        # str(SpecError) is the problem list `devserver plan` prints (errors.problems_text).
        raise pulumi.RunError(str(exc)) from None
    actual = resolved.spec.cloud.provider
    if actual != provider:
        raise pulumi.RunError(
            f"{source}: cloud.provider is {actual}, but this is the {provider} stack — fix: use stacks/{actual}, "
            f"or point devserver:spec at a {provider} spec"
        )
    return resolved


def export_outputs(component: DevserverComponent) -> None:
    """Export the component's outputs contract as the stack's outputs."""
    for name, value in component.outputs.as_dict().items():
        pulumi.export(name, value)
