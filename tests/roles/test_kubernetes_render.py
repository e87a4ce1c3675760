"""Golden-file tests of what the Kubernetes roles render, rendered with the roles' own task files and templates.

kind_cluster's configure step (image mode: no cluster, nothing restarted), gpu_operator's and nvshare's render
steps run through ansible-runner with the local connection into temporary directories standing in for ``/``; their
variables come from real specs through :func:`devserver.ansible_vars.role_vars` (the GPU operator's managed-pool
modes from :func:`devserver.plan.resolve`). The results must equal the files under ``golden/kubernetes/`` byte for
byte (regenerate after a deliberate change with ``DEVSERVER_UPDATE_GOLDEN=1`` and review the diff), every
Kubernetes object must pass ``kubernetes-validate`` in strict mode (unknown fields rejected) against the kind node
image's Kubernetes, every chart value must be a key of the chart at the pinned version, and the kind config may
use only fields kind's v1alpha4 API has.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devserver import ansible_vars, kubernetes, loader, plan, versions
from devserver.spec import DevserverSpec

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "kubernetes"
UPDATE = os.environ.get("DEVSERVER_UPDATE_GOLDEN") == "1"
EXAMPLE = REPO / "examples" / "openstack.yaml"  # the kind + operator + nvshare workflow (cPouta)
# The Kubernetes the objects are validated against: the pinned kind node image's
TARGET = versions.KIND_NODE_IMAGE.split(":v", 1)[1].split("@", 1)[0]

# kind's config API, v1alpha4, as kind v0.32.0 decodes it (strictly: an unknown field is an error). Source:
# kubernetes-sigs/kind tag v0.32.0, pkg/apis/config/v1alpha4/types.go (the yaml tags of Cluster, Node, Mount).
KIND_CLUSTER_FIELDS = {
    "kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig", "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902", "containerdConfigPatches", "containerdConfigPatchesJSON6902",
}  # fmt: skip
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                    "kubeadmConfigPatchesJSON6902"}  # fmt: skip
KIND_MOUNT_FIELDS = {"containerPath", "hostPath", "readOnly", "selinuxRelabel", "propagation"}


def _spec(**changes: Any) -> DevserverSpec:
    raw = loader.load_spec(EXAMPLE).model_dump()
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return DevserverSpec.model_validate(raw)


def _vars(spec: DevserverSpec, prefix: str) -> dict[str, Any]:
    return {k: v for k, v in ansible_vars.role_vars(plan.resolve(spec)).items() if k.startswith(prefix)}


def _managed_operator_vars(provider_spec: str) -> dict[str, Any]:
    """gpu_operator variables for a managed-pool spec: the modes plan.resolve() decides there (the role is not run
    against managed clusters yet, so role_vars() turns it off; the rendering is the same)."""
    resolved = plan.resolve(loader.load_spec(REPO / provider_spec))
    assert resolved.kubernetes is not None
    assert resolved.kubernetes.operator is not None
    operator = resolved.kubernetes.operator
    return {
        "gpu_operator_enabled": True,
        "gpu_operator_version": operator.version,
        "gpu_operator_toolkit_enabled": operator.toolkit,
        "gpu_operator_cdi_enabled": operator.cdi,
    }


# case name → (role, task file, variables, files it renders relative to the root → golden name)
OPERATOR_FILES = {"etc/devserver/gpu-operator/values.yaml": "values.yaml"}


def _cases() -> dict[str, tuple[str, str, dict[str, Any], dict[str, str]]]:
    kind_spec = _spec()
    return {
        "kind_cluster-existing": (
            "kind_cluster", "configure.yml", _vars(kind_spec, "kind_cluster_"),
            {"etc/docker/daemon.json": "daemon.json",
             "etc/nvidia-container-runtime/config.toml": "config.toml",
             "etc/sysctl.d/60-devserver-kind.conf": "sysctl.conf",
             "etc/devserver/kind/devserver.yaml": "kind-config.yaml"},
        ),
        "kind_cluster-fresh": (
            "kind_cluster", "configure.yml", _vars(kind_spec, "kind_cluster_"),
            {"etc/docker/daemon.json": "daemon.json",
             "etc/nvidia-container-runtime/config.toml": "config.toml"},
        ),
        "kind_cluster-no-gpu": (
            "kind_cluster", "configure.yml",
            {**_vars(kind_spec, "kind_cluster_"), "kind_cluster_gpus": False, "kind_cluster_name": "plain"},
            {"etc/devserver/kind/plain.yaml": "kind-config.yaml"},
        ),
        # kind + nvshare: the operator's toolkit on (the node's containerd has no nvidia runtime), CDI off
        "gpu_operator-kind-nvshare": (
            "gpu_operator", "render.yml", _vars(kind_spec, "gpu_operator_"),
            {**OPERATOR_FILES, "etc/devserver/gpu-operator/namespace.yaml": "namespace.yaml"},
        ),
        # kind without nvshare: toolkit on, CDI as the chart's default (on)
        "gpu_operator-kind": (
            "gpu_operator", "render.yml", _vars(_spec(**{"kubernetes.nvshare.enabled": False}), "gpu_operator_"),
            OPERATOR_FILES,
        ),
        # AKS / EKS pools: the node image ships the container runtime, so the toolkit is off; CDI on
        "gpu_operator-node-image": (
            "gpu_operator", "render.yml", _managed_operator_vars("tests/stacks/specs/azure-aks.yaml"), OPERATOR_FILES,
        ),
        "nvshare": (
            "nvshare", "render.yml", _vars(kind_spec, "nvshare_"),
            {"etc/devserver/nvshare/nvshare.yaml": "nvshare.yaml"},
        ),
    }  # fmt: skip


def _play(tmp_path: Path, run: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Run `tasks` in one ansible-runner play on localhost; return its stats for localhost."""
    import ansible_runner

    work = tmp_path / run
    (work / "runner").mkdir(parents=True)
    playbook = work / "play.yml"
    play = {"name": "Render", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    playbook.write_text(yaml.safe_dump([play]))
    result = ansible_runner.run(
        private_data_dir=str(work / "runner"),
        playbook=str(playbook),
        inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                   "ansible_python_interpreter": sys.executable}}}},
        envvars={
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        },
        quiet=True,
    )  # fmt: skip
    stdout = result.stdout.read() if result.stdout else ""
    assert result.rc == 0, stdout[-4000:]
    stats = result.stats or {}
    return {key: (stats.get(key) or {}).get("localhost", 0) for key in ("changed", "ok", "failures")}


def _render(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Run every case in one play, then kind_cluster's host merges a second time; return case → its root
    directory, and the second run's stats."""
    cases = _cases()
    roots: dict[str, Path] = {}
    tasks = []
    for name, (role, task_file, variables, _) in cases.items():
        root = tmp_path / "roots" / name
        source = GOLDEN / name.replace("-", "/", 1) / "input"
        if source.is_dir():
            shutil.copytree(source, root)
        root.mkdir(parents=True, exist_ok=True)
        roots[name] = root
        tasks.append(
            {
                "name": f"render {name}",
                "ansible.builtin.include_role": {"name": role, "tasks_from": task_file},
                "vars": {**variables, f"{role}_config_root": str(root), f"{role}_image_mode": True},
            }
        )
    _play(tmp_path, "first", tasks)
    again = _play(tmp_path, "second", [task for task in tasks if "kind_cluster" in task["name"]])
    return roots, again


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """case → golden name → rendered text; the second run's stats under the key "second run"."""
    roots, again = _render(tmp_path_factory.mktemp("kubernetes"))
    out: dict[str, dict[str, str]] = {"second run": {key: str(value) for key, value in again.items()}}
    for name, (_, _, _, files) in _cases().items():
        out[name] = {golden: (roots[name] / relative).read_text() for relative, golden in files.items()}
    return out


def test_a_second_run_of_the_host_merges_changes_nothing(rendered: dict[str, dict[str, str]]) -> None:
    assert rendered["second run"]["changed"] == "0", rendered["second run"]
    assert int(rendered["second run"]["ok"]) > 10


def _golden_path(case: str, golden: str) -> Path:
    role, _, mode = case.partition("-")
    if role == "kind_cluster":
        return GOLDEN / role / mode / "expected" / golden
    if role == "gpu_operator" and golden == "values.yaml":
        return GOLDEN / role / f"values-{mode}.yaml"
    return GOLDEN / role / golden


@pytest.mark.parametrize("case", list(_cases()))
def test_rendered_files_equal_the_golden_files(case: str, rendered: dict[str, dict[str, str]]) -> None:
    for golden, text in rendered[case].items():
        path = _golden_path(case, golden)
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.is_file(), f"{path} is missing: DEVSERVER_UPDATE_GOLDEN=1 writes it"
        assert text == path.read_text(), f"{case}: {golden} differs from {path.relative_to(REPO)}"


def test_the_merge_keeps_every_existing_setting(rendered: dict[str, dict[str, str]]) -> None:
    before = json.loads((GOLDEN / "kind_cluster/existing/input/etc/docker/daemon.json").read_text())
    after = json.loads(rendered["kind_cluster-existing"]["daemon.json"])
    assert after == {**before, "default-runtime": "nvidia"}
    toml_before = (GOLDEN / "kind_cluster/existing/input/etc/nvidia-container-runtime/config.toml").read_text()
    toml_after = rendered["kind_cluster-existing"]["config.toml"]
    changed = [(a, b) for a, b in zip(toml_before.splitlines(), toml_after.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "#accept-nvidia-visible-devices-as-volume-mounts = false",
            "accept-nvidia-visible-devices-as-volume-mounts = true",
        )
    ]


def test_a_fresh_host_gets_the_runtime_and_the_flag(rendered: dict[str, dict[str, str]]) -> None:
    daemon = json.loads(rendered["kind_cluster-fresh"]["daemon.json"])
    assert daemon == {
        "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}},
        "default-runtime": "nvidia",
    }
    assert rendered["kind_cluster-fresh"]["config.toml"] == "accept-nvidia-visible-devices-as-volume-mounts = true\n"


def _kind_config(text: str) -> dict[str, Any]:
    config = yaml.safe_load(text)
    assert set(config) <= KIND_CLUSTER_FIELDS, set(config) - KIND_CLUSTER_FIELDS
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS, set(node) - KIND_NODE_FIELDS
        for mount in node.get("extraMounts", []):
            assert set(mount) <= KIND_MOUNT_FIELDS, set(mount) - KIND_MOUNT_FIELDS
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    return config


def test_the_kind_config_has_the_gpu_mount_and_the_pinned_image(rendered: dict[str, dict[str, str]]) -> None:
    config = _kind_config(rendered["kind_cluster-existing"]["kind-config.yaml"])
    (node,) = config["nodes"]
    assert node["image"] == versions.KIND_NODE_IMAGE
    assert "@sha256:" in node["image"]
    assert node["extraMounts"] == [{"hostPath": "/dev/null", "containerPath": "/var/run/nvidia-container-devices/all"}]
    plain = _kind_config(rendered["kind_cluster-no-gpu"]["kind-config.yaml"])
    assert "extraMounts" not in plain["nodes"][0]
    assert plain["name"] == "plain"


def test_the_kind_field_check_rejects_an_unknown_field() -> None:
    with pytest.raises(AssertionError):
        _kind_config("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes: [{role: control-plane, gpus: all}]\n")


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, TARGET, strict=True)


def test_every_object_passes_strict_schema_validation(rendered: dict[str, dict[str, str]]) -> None:
    objects = _objects(rendered["nvshare"]["nvshare.yaml"]) + _objects(
        rendered["gpu_operator-kind-nvshare"]["namespace.yaml"]
    )
    kinds = sorted(f"{obj['kind']}/{obj['metadata']['name']}" for obj in objects)
    assert kinds == [
        "DaemonSet/nvshare-device-plugin", "DaemonSet/nvshare-scheduler", "Namespace/gpu-operator",
        "Namespace/nvshare-system", "ResourceQuota/pods-system-cluster-critical",
        "ResourceQuota/pods-system-node-critical",
    ]  # fmt: skip
    for obj in objects:
        _validate(obj)


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, dict[str, str]]) -> None:
    """The validation above can fail: a misspelt field in a rendered DaemonSet is refused."""
    daemonset = next(o for o in _objects(rendered["nvshare"]["nvshare.yaml"]) if o["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["nodeSelectors"] = {"a": "b"}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(daemonset)


def test_nvshare_objects_carry_the_spec(rendered: dict[str, dict[str, str]]) -> None:
    objects = {obj["metadata"]["name"]: obj for obj in _objects(rendered["nvshare"]["nvshare.yaml"])}
    plugin = objects["nvshare-device-plugin"]["spec"]["template"]["spec"]
    scheduler = objects["nvshare-scheduler"]["spec"]["template"]["spec"]
    for pod in (plugin, scheduler):
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    containers = {c["name"]: c for c in plugin["containers"]}
    assert containers["nvshare-device-plugin"]["env"] == [{"name": "NVSHARE_VIRTUAL_DEVICES", "value": "10"}]
    assert containers["nvshare-device-plugin"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    images = {c["image"] for c in plugin["containers"]} | {c["image"] for c in scheduler["containers"]}
    assert images == {
        versions.NVSHARE_LIB_IMAGE,
        versions.NVSHARE_DEVICE_PLUGIN_IMAGE,
        versions.NVSHARE_SCHEDULER_IMAGE,
    }


def _chart_keys() -> set[str]:
    lines = (GOLDEN / f"gpu-operator-{versions.GPU_OPERATOR}-value-keys.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        out.extend(_leaf_paths(value, path) if isinstance(value, dict) and value else [path])
    return out


@pytest.mark.parametrize("case", ["gpu_operator-kind-nvshare", "gpu_operator-kind", "gpu_operator-node-image"])
def test_every_operator_value_is_a_key_of_the_pinned_chart(case: str, rendered: dict[str, dict[str, str]]) -> None:
    values = yaml.safe_load(rendered[case]["values.yaml"])
    unknown = [path for path in _leaf_paths(values) if path not in _chart_keys()]
    assert not unknown, f"not keys of gpu-operator {versions.GPU_OPERATOR}: {unknown}"
    assert values["driver"] == {"enabled": False}


def test_the_chart_key_check_catches_a_mistyped_key() -> None:
    assert "toolkit.enabled" in _chart_keys()
    assert [p for p in _leaf_paths({"toolkit": {"enable": True}}) if p not in _chart_keys()] == ["toolkit.enable"]


def test_the_operator_modes_differ_as_resolved(rendered: dict[str, dict[str, str]]) -> None:
    modes = {
        case: (values["toolkit"]["enabled"], values["cdi"]["enabled"])
        for case in ("gpu_operator-kind-nvshare", "gpu_operator-kind", "gpu_operator-node-image")
        for values in [yaml.safe_load(rendered[case]["values.yaml"])]
    }
    assert modes == {
        "gpu_operator-kind-nvshare": (True, False),
        "gpu_operator-kind": (True, True),
        "gpu_operator-node-image": (False, True),
    }
    assert (
        yaml.safe_load(rendered["gpu_operator-kind-nvshare"]["namespace.yaml"])["metadata"]["name"]
        == kubernetes.OPERATOR_NAMESPACE
    )
