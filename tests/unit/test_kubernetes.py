"""The Kubernetes GPU layer: the spec's shape, the compatibility guard, what plan shows, the role variables, and the
readiness checks the roles run (pure functions over synthetic `kubectl get -o json` documents)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from devserver import ansible_vars, kubernetes, loader, plan, versions
from devserver.cli.main import app
from devserver.errors import SpecError
from devserver.spec import DevserverSpec

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd4bWFtcGxla2V5Zm9yZXhhbXBsZXNvbmx5MDAwMDAw alice@example.com"
runner = CliRunner()


def _doc(kubernetes_section: dict[str, Any], **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "k8s",
        "cloud": {"provider": "openstack", "cloud": "pouta", "network": "net"},
        "machine": {"gpu": {"model": "p100"}},
        "os": "ubuntu-22.04",
        "ssh": {"public_keys": [KEY], "allowed_cidrs": ["10.0.0.0/8"]},
        "kubernetes": kubernetes_section,
    }
    doc.update(top)
    return doc


def _problems(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, message, fix) of every error resolve() reports; [] when the spec resolves."""
    try:
        plan.resolve(DevserverSpec.model_validate(doc))
    except SpecError as exc:
        return [(p.path, p.message, p.fix) for p in exc.problems]
    return []


def _resolved(doc: dict[str, Any]) -> plan.Resolved:
    return plan.resolve(DevserverSpec.model_validate(doc))


KIND_NVSHARE = {"kind": {}, "nvshare": {"enabled": True}}


def test_kind_operator_and_nvshare_resolve() -> None:
    resolved = _resolved(_doc(KIND_NVSHARE))
    k8s = resolved.kubernetes
    assert k8s is not None
    assert k8s.case == "kind"
    assert k8s.version == "1.36"
    assert k8s.node_image == versions.KIND_NODE_IMAGE
    assert k8s.operator is not None
    assert (k8s.operator.version, k8s.operator.toolkit, k8s.operator.cdi) == ("v26.7.0", True, False)
    assert k8s.nvshare is not None
    assert k8s.nvshare.virtual_devices == 10


def test_without_nvshare_cdi_is_the_charts_default() -> None:
    operator = _resolved(_doc({"kind": {}})).kubernetes.operator  # type: ignore[union-attr]
    assert operator is not None
    assert operator.cdi is True
    assert operator.toolkit is True


@pytest.mark.parametrize(
    ("section", "top", "path", "message"),
    [
        # operator ↔ Kubernetes minor (the node image's for kind; the spec's for managed pools)
        ({"kind": {}, "gpu_operator": {"version": "v26.3.3"}, "version": "1.37"}, {}, "kubernetes.version",
         "does not match the kind node image"),
        ({"kind": {"node_image": "kindest/node:v1.37.0@sha256:" + "a" * 64}}, {}, "kubernetes.gpu_operator.version",
         "supports Kubernetes 1.33–1.36"),
        ({"kind": {}, "gpu_operator": {"version": "v25.3.2"}}, {}, "kubernetes.gpu_operator.version",
         "is not a GPU operator release in the catalog"),
        # operator ↔ host OS: Debian's absolute nvidia-smi link before v26.7.0
        ({"kind": {}, "gpu_operator": {"version": "v26.3.3"}}, {"os": "debian-12"}, "kubernetes.gpu_operator.version",
         "absolute nvidia-smi link"),
        # nvshare ↔ CDI
        ({"kind": {}, "nvshare": {"enabled": True}, "gpu_operator": {"cdi": "on"}}, {}, "kubernetes.gpu_operator.cdi",
         "NVIDIA_VISIBLE_DEVICES"),
        # nvshare needs the operator's device plugin
        ({"kind": {}, "nvshare": {"enabled": True}, "gpu_operator": {"enabled": False}}, {},
         "kubernetes.nvshare.enabled", "needs NVIDIA's device plugin"),
        # container toolkit ↔ kind (nvkind#61)
        ({"kind": {}}, {"software": {"container_toolkit": "1.18.1"}}, "software.container_toolkit", "nvkind#61"),
        # kind runs in Docker
        ({"kind": {}}, {"software": {"container_runtime": "containerd"}}, "software.container_runtime",
         "kind runs its node in Docker"),
        # the operator installs its toolkit into the kind node
        ({"kind": {}, "gpu_operator": {"toolkit": "off"}}, {}, "kubernetes.gpu_operator.toolkit", "no nvidia runtime"),
    ],
)  # fmt: skip
def test_the_guard_refuses_with_field_and_fix(
    section: dict[str, Any], top: dict[str, Any], path: str, message: str
) -> None:
    problems = _problems(_doc(section, **top))
    assert any(p == path and message in m and fix for p, m, fix in problems), problems


def test_nvshare_shares_one_gpu_per_node() -> None:
    doc = _doc(KIND_NVSHARE, machine={"gpu": {"model": "p100", "count": 2}})
    problems = _problems(doc)
    assert any(p == "kubernetes.nvshare.enabled" and "1 GPU per node" in m for p, m, _ in problems), problems


def test_nvshare_is_not_offered_on_managed_pools() -> None:
    doc = _doc(
        {"node_pools": [{"gpu": {"model": "t4"}}], "nvshare": {"enabled": True}, "version": "1.34"},
        cloud={"provider": "aws", "region": "us-east-1"},
        machine={"gpu": {"model": "t4"}},
    )
    assert any(p == "kubernetes.nvshare.enabled" and "EKS" in m for p, m, _ in _problems(doc))


def test_the_toolkit_rule_follows_the_catalog_range() -> None:
    assert kubernetes._toolkit_broken_for_kind("1.18.0")
    assert kubernetes._toolkit_broken_for_kind("1.18.9")
    assert not kubernetes._toolkit_broken_for_kind("1.17.8")
    assert not kubernetes._toolkit_broken_for_kind("1.19.0")


def test_kind_without_gpu_needs_the_operator_off() -> None:
    local = {"name": "k8s", "cloud": {"provider": "local"}}
    assert any(p == "kubernetes.gpu_operator.enabled" for p, _, _ in _problems({**local, "kubernetes": {"kind": {}}}))
    plain = _resolved({**local, "kubernetes": {"kind": {}, "gpu_operator": {"enabled": False}}})
    assert plain.kubernetes is not None
    assert plain.kubernetes.operator is None


def test_debian_host_warns_that_kind_nodes_are_not_in_nvidias_matrix() -> None:
    resolved = _resolved(_doc({"kind": {}}, os="debian-12"))
    assert any("kind nodes run debian-13" in w.message for w in resolved.warnings)


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ({"gpu_operator": "v26.7.0"}, "gpu_operator: {version: v26.7.0}"),
        ({"nvshare": True}, "nvshare: {enabled: true}"),
    ],
)
def test_the_old_scalar_forms_are_refused_with_the_new_spelling(
    value: dict[str, Any], fix: str, tmp_path: Path
) -> None:
    spec = tmp_path / "old.yaml"
    spec.write_text(yaml.safe_dump(_doc({"kind": {}, **value})))
    result = runner.invoke(app, ["validate", str(spec), "--json"])
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["problems"]
    assert any(fix in p["fix"] and "is an object now" in p["message"] for p in problems), problems


def test_exactly_one_cluster() -> None:
    both = {"kind": {}, "node_pools": [{"gpu": {"model": "t4"}}]}
    for section in (both, {}):
        with pytest.raises(ValueError, match="exactly one cluster"):
            DevserverSpec.model_validate(_doc(section))


def test_plan_lists_the_cluster_the_operator_and_nvshare_resolved() -> None:
    result = runner.invoke(app, ["plan", str(REPO / "examples/openstack.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    resources = {r["kind"]: r for r in json.loads(result.stdout)["resources"]}
    kind = resources["kind cluster"]["details"]
    assert kind["node image"] == versions.KIND_NODE_IMAGE
    assert kind["kubernetes"] == "1.36"
    assert "/var/run/nvidia-container-devices/all" in kind["gpus"]
    operator = resources["helm release"]["details"]
    assert operator["chart"] == f"gpu-operator v26.7.0 from {versions.GPU_OPERATOR_CHART_REPO}"
    assert operator["driver"] == "the host's (driver.enabled=false)"
    assert operator["toolkit"].startswith("on (")
    assert operator["cdi"].startswith("off (nvshare")
    share = resources["nvshare"]["details"]
    assert share["devices"] == "10 nvshare.com/gpu per GPU node"
    assert versions.NVSHARE_SCHEDULER_IMAGE in share["images"]


@pytest.mark.parametrize(
    ("spec", "cluster", "pools"),
    [("examples/aws.yaml", "EKS", "GPU node group"), ("tests/stacks/specs/azure-aks.yaml", "AKS", "GPU node pool")],
)
def test_aks_and_eks_pools_resolve_the_operator_on_the_node_images_toolkit(spec: str, cluster: str, pools: str) -> None:
    resolved = plan.resolve(loader.load_spec(REPO / spec))
    assert resolved.kubernetes is not None
    assert resolved.kubernetes.operator is not None
    assert resolved.kubernetes.operator.toolkit is False
    assert resolved.kubernetes.operator.cdi is True
    resources = plan.planned_resources(resolved)
    kinds = [r.kind for r in resources]
    assert kinds.count(f"{cluster} cluster") == 1
    assert pools in kinds
    assert kinds.count("helm release") == 1
    release = next(r for r in resources if r.kind == "helm release")
    assert release.details["on"] == f"the {cluster} cluster"
    assert release.details["installed by"].startswith("nothing yet")


def test_gke_keeps_its_own_driver_installer() -> None:
    resolved = plan.resolve(loader.load_spec(REPO / "tests/stacks/specs/gce-gke.yaml"))
    assert resolved.kubernetes is not None
    assert resolved.kubernetes.operator is None
    kinds = [r.kind for r in plan.planned_resources(resolved)]
    assert "GKE cluster" in kinds
    assert "helm release" not in kinds


def test_role_vars_turn_the_kubernetes_roles_on_only_for_kind() -> None:
    kind = ansible_vars.role_vars(_resolved(_doc(KIND_NVSHARE)))
    assert kind["kind_cluster_enabled"]
    assert kind["gpu_operator_enabled"]
    assert kind["nvshare_enabled"]
    assert kind["kind_cluster_gpus"]
    assert kind["container_runtime_default_runtime_nvidia"]
    assert kind["gpu_operator_cdi_enabled"] is False
    assert kind["gpu_operator_toolkit_enabled"] is True
    assert kind["gpu_operator_kubeconfig"] == kind["nvshare_kubeconfig"] == "/etc/devserver/kind/devserver.kubeconfig"
    assert kind["kind_cluster_kind_sha256"] == versions.KIND_SHA256
    managed = ansible_vars.role_vars(plan.resolve(loader.load_spec(REPO / "examples/aws.yaml")))
    assert not managed["kind_cluster_enabled"]
    assert not managed["gpu_operator_enabled"]
    assert not managed["nvshare_enabled"]
    assert not managed["container_runtime_default_runtime_nvidia"]


@pytest.mark.parametrize("role", ["kind_cluster", "gpu_operator", "nvshare"])
def test_role_defaults_are_the_pinned_versions(role: str) -> None:
    """The roles' defaults repeat versions.py (the one place pins are set); role_vars() passes them anyway."""
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text())
    pins = {
        "kind_cluster_node_image": versions.KIND_NODE_IMAGE,
        "kind_cluster_kind_version": versions.KIND_VERSION,
        "kind_cluster_kind_url": versions.KIND_URL,
        "kind_cluster_kind_sha256": versions.KIND_SHA256,
        "kind_cluster_kubectl_version": versions.KUBECTL_VERSION,
        "kind_cluster_kubectl_url": versions.KUBECTL_URL,
        "kind_cluster_kubectl_sha256": versions.KUBECTL_SHA256,
        "kind_cluster_helm_version": versions.HELM_VERSION,
        "kind_cluster_helm_url": versions.HELM_URL,
        "kind_cluster_helm_sha256": versions.HELM_SHA256,
        "gpu_operator_version": versions.GPU_OPERATOR,
        "gpu_operator_chart_repo": versions.GPU_OPERATOR_CHART_REPO,
        "gpu_operator_namespace": kubernetes.OPERATOR_NAMESPACE,
        "gpu_operator_release": kubernetes.OPERATOR_RELEASE,
        "nvshare_lib_image": versions.NVSHARE_LIB_IMAGE,
        "nvshare_device_plugin_image": versions.NVSHARE_DEVICE_PLUGIN_IMAGE,
        "nvshare_scheduler_image": versions.NVSHARE_SCHEDULER_IMAGE,
        "nvshare_namespace": kubernetes.NVSHARE_NAMESPACE,
    }
    mine = {name: value for name, value in pins.items() if name.startswith(role)}
    assert mine
    assert {name: defaults[name] for name in mine} == mine


def test_every_kubernetes_fact_cites_a_source_that_says_where_and_when() -> None:
    facts = kubernetes.facts()
    assert len(facts.cited) >= 7
    for entry, keys in facts.cited.items():
        assert keys, entry
        for key in keys:
            source = facts.sources[key]
            assert source["url"].startswith("https://"), key
            assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", source["checked"]), key
            assert source["says"], key
    assert set(facts.sources) == {key for keys in facts.cited.values() for key in keys}, "a source nobody cites"


def test_the_catalog_knows_the_pinned_operator() -> None:
    facts = kubernetes.facts()
    assert versions.GPU_OPERATOR in facts.operators
    assert kubernetes.node_image_minor(versions.KIND_NODE_IMAGE) == "1.36"
    low, high = facts.operators[versions.GPU_OPERATOR].kubernetes
    assert (low, high) == ("1.33", "1.36")


def _plugin(role: str, name: str) -> ModuleType:
    path = REPO / "roles" / role / "filter_plugins" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _synthetic_validator_pod(init_exit: int | None, ready: bool) -> dict[str, Any]:
    """A synthetic nvidia-operator-validator pod (a fixture, not a recorded one)."""
    terminated = (
        {"state": {"terminated": {"exitCode": init_exit}}} if init_exit is not None else {"state": {"running": {}}}
    )
    return {
        "metadata": {"name": "nvidia-operator-validator-x", "labels": {"app": "nvidia-operator-validator"}},
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": [
                {"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}},
                {"name": "cuda-validation", **terminated},
            ],
        },
    }


def test_operator_readiness_over_synthetic_pod_lists() -> None:
    readiness = _plugin("gpu_operator", "gpu_operator_readiness")
    done = {"kind": "List", "items": [_synthetic_validator_pod(0, True)]}
    assert readiness.gpu_operator_validation_done(done)
    assert not readiness.gpu_operator_validation_done({"kind": "List", "items": []})
    assert readiness.gpu_operator_validation_pending({"items": [_synthetic_validator_pod(None, False)]}) == [
        "nvidia-operator-validator-x: cuda-validation has not passed",
        "nvidia-operator-validator-x: not running and ready",
    ]
    assert not readiness.gpu_operator_validation_done({"items": [_synthetic_validator_pod(1, True)]})
    failed_cuda = {"metadata": {"name": "c", "labels": {"app": "nvidia-cuda-validator"}}, "status": {"phase": "Failed"}}
    assert not readiness.gpu_operator_validation_done({"items": [_synthetic_validator_pod(0, True), failed_cuda]})


def _synthetic_nodes(*allocatable: dict[str, str]) -> dict[str, Any]:
    return {"kind": "List", "items": [{"status": {"allocatable": a}} for a in allocatable]}


def test_allocatable_counts_over_synthetic_node_lists() -> None:
    for role, name, function in (
        ("gpu_operator", "gpu_operator_readiness", "gpu_operator_allocatable"),
        ("nvshare", "nvshare_readiness", "nvshare_allocatable"),
    ):
        count = getattr(_plugin(role, name), function)
        assert count(_synthetic_nodes({"nvidia.com/gpu": "1", "cpu": "8"}, {"cpu": "4"}), "nvidia.com/gpu") == 1
        assert count(_synthetic_nodes({"nvshare.com/gpu": "10"}), "nvshare.com/gpu") == 10
        assert count(_synthetic_nodes({"cpu": "8"}), "nvidia.com/gpu") == 0
        assert count({"items": "garbage"}, "nvidia.com/gpu") == 0


def _synthetic_daemonset(name: str, desired: int, ready: int, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation},
        "status": {"desiredNumberScheduled": desired, "numberReady": ready, "updatedNumberScheduled": ready,
                   "observedGeneration": observed},
    }  # fmt: skip


def test_nvshare_daemonset_readiness_over_synthetic_lists() -> None:
    ready = _plugin("nvshare", "nvshare_readiness").nvshare_daemonsets_ready
    names = ["nvshare-device-plugin", "nvshare-scheduler"]
    both = {"items": [_synthetic_daemonset(names[0], 1, 1), _synthetic_daemonset(names[1], 1, 1)]}
    assert ready(both, names)
    assert not ready({"items": [_synthetic_daemonset(names[0], 1, 1)]}, names)
    assert not ready({"items": [_synthetic_daemonset(names[0], 1, 0), _synthetic_daemonset(names[1], 1, 1)]}, names)
    assert not ready({"items": [_synthetic_daemonset(n, 0, 0) for n in names]}, names)
    stale = {"items": [_synthetic_daemonset(names[0], 1, 1, generation=3), _synthetic_daemonset(names[1], 1, 1)]}
    assert not ready(stale, names)


def test_kind_daemon_json_merge_refuses_invalid_json() -> None:
    merge = _plugin("kind_cluster", "kind_docker_daemon").kind_docker_daemon_json
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="not valid JSON"):
        merge("{not json", "/usr/bin/nvidia-container-runtime")
    kept = '{"default-runtime": "nvidia", "runtimes": {"nvidia": {"path": "/opt/nvidia"}}}'
    assert merge(kept, "/usr/bin/nvidia-container-runtime") == kept
