"""The Kubernetes GPU layer: which cluster, which GPU operator mode, whether nvshare; and the guard that refuses the
combinations that cannot work.

:func:`resolve` runs inside :func:`devserver.plan.resolve` (same problems, same messages as every other spec check)
and returns a :class:`KubernetesPlan`: what the roles ``kind_cluster``, ``gpu_operator`` and ``nvshare`` install
and how. The facts it checks against live in ``data/catalog.yaml`` (section ``kubernetes``, each with its source).
Pure: no network, no cluster.

The readiness checks the roles run against a live cluster are pure functions too, over ``kubectl get -o json``
documents; they live beside the roles (``roles/gpu_operator/filter_plugins``, ``roles/nvshare/filter_plugins``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from devserver import versions
from devserver.catalog import version_tuple
from devserver.registry.resources import PlannedResource
from devserver.spec import DevserverSpec, Kubernetes

if TYPE_CHECKING:
    from devserver.plan import Resolved

# "kind", or the managed service of the spec's cloud as the catalog names it (GKE, AKS, EKS)
Case = str
# error(path, message, fix, value) and warn(path, message, fix), as devserver.plan's checker reports them
ErrorReport = Callable[[str, str, str, object], None]
WarnReport = Callable[[str, str, str], None]

OPERATOR_RELEASE = "gpu-operator"
OPERATOR_NAMESPACE = "gpu-operator"
NVSHARE_NAMESPACE = "nvshare-system"


@dataclass(frozen=True)
class OperatorFacts:
    """One GPU operator release as the catalog records it."""

    kubernetes: tuple[str, str]  # the oldest and newest supported minor
    validated_os: tuple[str, ...]
    cdi_default: bool
    absolute_nvidia_smi: bool  # the host-driver validator resolves an absolute-symlinked nvidia-smi


@dataclass(frozen=True)
class ManagedFacts:
    """A cloud's managed Kubernetes as the catalog records it."""

    service: str
    operator: bool  # whether NVIDIA's operator is what gives its GPU pools a device plugin (else the service's own)
    node_image_runtime: bool  # the GPU node image ships the driver and the NVIDIA container runtime


@dataclass(frozen=True)
class KubernetesFacts:
    operators: dict[str, OperatorFacts]
    absolute_nvidia_smi_os: tuple[str, ...]
    kind_node_os: str
    kind_broken_toolkit: tuple[str, str]  # [first broken, first fixed)
    nvshare_gpus_per_node: int
    managed: dict[str, ManagedFacts]  # cloud → its managed Kubernetes
    sources: dict[str, dict[str, str]]  # key → url, checked, says
    cited: dict[str, tuple[str, ...]]  # entry → the source keys it cites


@functools.cache
def facts() -> KubernetesFacts:
    """The catalog's ``kubernetes`` section, typed (cached for the process). A malformed section fails here with a
    KeyError/TypeError (a packaging bug the tests catch), never later in the guard."""
    text = resources.files("devserver").joinpath("data/catalog.yaml").read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)["kubernetes"]
    first, fixed = raw["kind_broken_toolkit"]["range"]
    cited = {f"gpu_operator.{version}": tuple(entry["source"]) for version, entry in raw["gpu_operator"].items()}
    cited.update({f"managed.{cloud}": tuple(entry["source"]) for cloud, entry in raw["managed"].items()})
    sections = ("sources", "gpu_operator", "managed")
    cited.update({key: tuple(value["source"]) for key, value in raw.items() if key not in sections})
    return KubernetesFacts(
        operators={
            str(version): OperatorFacts(
                kubernetes=(str(entry["kubernetes"][0]), str(entry["kubernetes"][1])),
                validated_os=tuple(entry["validated_os"]),
                cdi_default=bool(entry["cdi_default"]),
                absolute_nvidia_smi=bool(entry["absolute_nvidia_smi"]),
            )
            for version, entry in raw["gpu_operator"].items()
        },
        absolute_nvidia_smi_os=tuple(raw["absolute_nvidia_smi_os"]["os"]),
        kind_node_os=str(raw["kind_node_os"]["os"]),
        kind_broken_toolkit=(str(first), str(fixed)),
        nvshare_gpus_per_node=int(raw["nvshare_gpus_per_node"]["count"]),
        managed={
            str(cloud): ManagedFacts(str(entry["service"]), bool(entry["operator"]), bool(entry["node_image_runtime"]))
            for cloud, entry in raw["managed"].items()
        },
        sources={key: {k: str(v) for k, v in value.items()} for key, value in raw["sources"].items()},
        cited=cited,
    )


@dataclass(frozen=True)
class OperatorPlan:
    """The GPU operator as the gpu_operator role installs it (``driver.enabled`` is always false)."""

    version: str
    chart_repo: str
    toolkit: bool
    toolkit_why: str
    cdi: bool
    cdi_why: str


@dataclass(frozen=True)
class NvsharePlan:
    virtual_devices: int
    lib_image: str
    device_plugin_image: str
    scheduler_image: str


@dataclass(frozen=True)
class KubernetesPlan:
    """The resolved cluster: where it runs, its Kubernetes minor (None: the cloud's default), and what goes on it.

    `cluster_name` is the kind cluster's ("" for a managed cluster, which its stack names).

    `operator` is None where nothing of ours runs the operator (GKE installs its own driver and device plugin, or
    the spec turned it off); `nvshare` is None when off.
    """

    case: Case
    version: str | None
    cluster_name: str
    node_image: str | None
    operator: OperatorPlan | None
    nvshare: NvsharePlan | None

    @property
    def installed_here(self) -> bool:
        """Whether the devserver's roles install the operator and nvshare (only onto the kind cluster for now)."""
        return self.case == "kind"


def node_image_minor(image: str) -> str:
    """'kindest/node:v1.36.1@sha256:…' -> '1.36' (the spec's pattern guarantees the tag)."""
    match = re.search(r":v(\d+)\.(\d+)\.\d+@", image)
    assert match is not None, image
    return f"{match[1]}.{match[2]}"


def _toolkit_broken_for_kind(version: str) -> bool:
    first, fixed = facts().kind_broken_toolkit
    return version_tuple(first) <= version_tuple(version) < version_tuple(fixed)


def resolve(spec: DevserverSpec, gpu_counts: list[int], error: ErrorReport, warn: WarnReport) -> KubernetesPlan | None:
    """The spec's cluster resolved, every impossible combination reported through `error`.

    `gpu_counts`: GPUs per node as resolved from the catalog — the devserver's one entry for kind, one per pool for
    managed pools (0 for a devserver without GPU). Returns None when the spec has no cluster or the cluster
    cannot be resolved.
    """
    k8s = spec.kubernetes
    if k8s is None:
        return None
    known = facts()
    kind = k8s.kind
    managed = known.managed.get(spec.cloud.provider)
    case: Case = managed.service if kind is None and managed is not None else "kind"
    has_gpu = any(gpu_counts)
    version = node_image_minor(kind.node_image) if kind is not None else k8s.version
    if kind is not None:
        _check_kind(spec, k8s, has_gpu, error)
    operator_spec = k8s.gpu_operator
    operator_facts = known.operators.get(operator_spec.version)
    wants_operator = operator_spec.enabled and has_gpu and (case == "kind" or bool(managed and managed.operator))
    if operator_spec.enabled and operator_facts is None:
        error(
            "kubernetes.gpu_operator.version",
            "is not a GPU operator release in the catalog",
            f"use one of {', '.join(known.operators)}",
            operator_spec.version,
        )
    elif wants_operator and operator_facts is not None:
        _check_operator(spec, case, version, operator_facts, error, warn)
    nvshare = k8s.nvshare
    if nvshare.enabled:
        _check_nvshare(spec, case, gpu_counts, error)
    operator = None
    if wants_operator and operator_facts is not None:
        operator = _operator_plan(spec, case, operator_facts)
    return KubernetesPlan(
        case=case,
        version=version,
        cluster_name=kind.name if kind is not None else "",
        node_image=kind.node_image if kind is not None else None,
        operator=operator,
        nvshare=(
            NvsharePlan(
                nvshare.virtual_devices, nvshare.lib_image, nvshare.device_plugin_image, nvshare.scheduler_image
            )
            if nvshare.enabled
            else None
        ),
    )


def _check_kind(spec: DevserverSpec, k8s: Kubernetes, has_gpu: bool, error: ErrorReport) -> None:
    assert k8s.kind is not None
    image_minor = node_image_minor(k8s.kind.node_image)
    if k8s.version is not None and k8s.version != image_minor:
        error(
            "kubernetes.version",
            f"does not match the kind node image, which runs Kubernetes {image_minor}",
            f"set version: '{image_minor}', drop it, or pick a node image of {k8s.version}",
            k8s.version,
        )
    software = spec.software
    if software.container_runtime not in ("docker", "both"):
        error(
            "software.container_runtime",
            "kind runs its node in Docker",
            "set container_runtime: docker (or both)",
            software.container_runtime,
        )
    if has_gpu and _toolkit_broken_for_kind(software.container_toolkit):
        first, fixed = facts().kind_broken_toolkit
        error(
            "software.container_toolkit",
            f"toolkit {first[:4]}x cannot give a kind node its GPUs (NVIDIA/nvkind#61)",
            f"use {versions.CONTAINER_TOOLKIT} or {fixed} and newer",
            software.container_toolkit,
        )
    if not has_gpu and (k8s.gpu_operator.enabled or k8s.nvshare.enabled):
        error(
            "kubernetes.gpu_operator.enabled",
            "this devserver has no GPU for the operator (or nvshare) to manage",
            "set gpu_operator.enabled: false and nvshare.enabled: false, or give the devserver a GPU",
            k8s.gpu_operator.enabled,
        )
    if k8s.gpu_operator.toolkit == "off":
        error(
            "kubernetes.gpu_operator.toolkit",
            "a kind node's own containerd has no nvidia runtime: the operator must install its toolkit there",
            "set toolkit: auto (or on)",
            k8s.gpu_operator.toolkit,
        )


def _check_operator(
    spec: DevserverSpec, case: Case, version: str | None, operator: OperatorFacts, error: ErrorReport, warn: WarnReport
) -> None:
    assert spec.kubernetes is not None
    path = "kubernetes.gpu_operator.version"
    chosen = spec.kubernetes.gpu_operator.version
    low, high = operator.kubernetes
    if version is not None and not version_tuple(low) <= version_tuple(version) <= version_tuple(high):
        fitting = [
            name
            for name, other in facts().operators.items()
            if version_tuple(other.kubernetes[0]) <= version_tuple(version) <= version_tuple(other.kubernetes[1])
        ]
        hint = f"use operator {', '.join(fitting)}" if fitting else "no operator in the catalog supports it"
        where = "the kind node image's" if case == "kind" else "kubernetes.version"
        error(
            path,
            f"supports Kubernetes {low}–{high}; {where} is {version}",
            f"{hint}, or a Kubernetes {low}–{high}",
            chosen,
        )
    if case != "kind":
        return
    debian_link = spec.os in facts().absolute_nvidia_smi_os and spec.software.driver.source == "distro"
    if debian_link and not operator.absolute_nvidia_smi:
        newer = [name for name, other in facts().operators.items() if other.absolute_nvidia_smi]
        error(
            path,
            f"its host-driver validator does not resolve {spec.os}'s absolute nvidia-smi link "
            "(NVIDIA/gpu-operator#2464)",
            f"use operator {', '.join(newer) or 'v26.7.0 or newer'}",
            chosen,
        )
    node_os = facts().kind_node_os
    if node_os not in operator.validated_os:
        warn(
            path,
            f"kind nodes run {node_os}, which NVIDIA's platform matrix does not list for {chosen} "
            "(NVIDIA's own nvkind walkthrough runs the operator there with driver.enabled=false)",
            "none needed; see docs/kubernetes.md for what was verified where",
        )


def _check_nvshare(spec: DevserverSpec, case: Case, gpu_counts: list[int], error: ErrorReport) -> None:
    assert spec.kubernetes is not None
    operator = spec.kubernetes.gpu_operator
    path = "kubernetes.nvshare.enabled"
    if case != "kind":
        error(
            path,
            f"nvshare is installed onto the devserver's kind cluster only; {case} pools get no nvshare yet",
            "use kubernetes.kind, or turn nvshare off",
            True,
        )
        return
    if not operator.enabled:
        error(
            path, "nvshare needs NVIDIA's device plugin, which the GPU operator installs", "enable gpu_operator", True
        )
    if operator.cdi == "on":
        error(
            "kubernetes.gpu_operator.cdi",
            "nvshare reads the GPU from NVIDIA_VISIBLE_DEVICES, which NVIDIA's device plugin sets only with CDI off",
            "set cdi: auto (or off)",
            operator.cdi,
        )
    per_node = facts().nvshare_gpus_per_node
    if any(count > per_node for count in gpu_counts):
        error(
            path,
            f"nvshare shares {per_node} GPU per node (its scheduler uses GPU 0); this node has {max(gpu_counts)}",
            f"use a machine with {per_node} GPU, or turn nvshare off",
            True,
        )


def _operator_plan(spec: DevserverSpec, case: Case, operator: OperatorFacts) -> OperatorPlan:
    assert spec.kubernetes is not None
    chosen = spec.kubernetes.gpu_operator
    if chosen.toolkit != "auto":
        toolkit, toolkit_why = chosen.toolkit == "on", "set in the spec"
    elif case == "kind":
        toolkit, toolkit_why = True, "the kind node's own containerd has no nvidia runtime"
    elif facts().managed[spec.cloud.provider].node_image_runtime:
        toolkit, toolkit_why = False, f"the {case} GPU node image ships the NVIDIA container runtime"
    else:
        toolkit, toolkit_why = True, f"the {case} GPU node image has no NVIDIA container runtime"
    nvshare = spec.kubernetes.nvshare.enabled
    if chosen.cdi != "auto":
        cdi, cdi_why = chosen.cdi == "on", "set in the spec"
    elif nvshare:
        cdi, cdi_why = False, "nvshare needs NVIDIA_VISIBLE_DEVICES"
    else:
        cdi, cdi_why = operator.cdi_default, "the chart's default"
    return OperatorPlan(chosen.version, spec.repositories.gpu_operator_chart_repo, toolkit, toolkit_why, cdi, cdi_why)


def planned_resources(resolved: Resolved) -> list[PlannedResource]:
    """What the Kubernetes roles install: the kind cluster, the operator's release, nvshare. A managed cluster and its
    pools are the stack's (the cloud's registry entry lists them); the operator's row says what installs it."""
    plan = resolved.kubernetes
    if plan is None:
        return []
    spec = resolved.spec
    out: list[PlannedResource] = []
    if plan.case == "kind":
        assert plan.node_image is not None
        gpus = resolved.machine is not None and resolved.machine.gpu_count > 0
        out.append(
            PlannedResource(
                "kind cluster",
                plan.cluster_name,
                {
                    "on": f"the devserver {spec.name} (Docker; nvidia as its default runtime)",
                    "node image": plan.node_image,
                    "kubernetes": plan.version or "",
                    "tools": f"kind {versions.KIND_VERSION}, kubectl {versions.KUBECTL_VERSION}, "
                    f"helm {versions.HELM_VERSION} (sha256-checked)",
                    "gpus": "all, via /dev/null → /var/run/nvidia-container-devices/all" if gpus else "none",
                    "kubeconfig": f"~{spec.ssh.admin_user}/.kube/kind-{plan.cluster_name}.yaml",
                },
            )
        )
    operator = plan.operator
    if operator is not None:
        out.append(
            PlannedResource(
                "helm release",
                OPERATOR_RELEASE,
                {
                    "chart": f"gpu-operator {operator.version} from {operator.chart_repo}",
                    "on": _where(plan),
                    "namespace": OPERATOR_NAMESPACE,
                    "driver": "the host's (driver.enabled=false)",
                    "toolkit": f"{'on' if operator.toolkit else 'off'} ({operator.toolkit_why})",
                    "cdi": f"{'on' if operator.cdi else 'off'} ({operator.cdi_why})",
                    "installed by": "the gpu_operator role"
                    if plan.installed_here
                    else "nothing yet (managed clusters: docs/kubernetes.md)",
                },
            )
        )
    if plan.nvshare is not None:
        share = plan.nvshare
        out.append(
            PlannedResource(
                "nvshare",
                NVSHARE_NAMESPACE,
                {
                    "on": _where(plan),
                    "devices": f"{share.virtual_devices} nvshare.com/gpu per GPU node",
                    "images": f"{share.lib_image}, {share.device_plugin_image}, {share.scheduler_image}",
                },
            )
        )
    return out


def _where(plan: KubernetesPlan) -> str:
    return f"kind cluster {plan.cluster_name}" if plan.case == "kind" else f"the {plan.case} cluster"
