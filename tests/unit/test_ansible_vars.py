"""role_vars(): the spec → role variables mapping, checked against the roles' declared interfaces, and the package
names the roles derive from it (vars/<distribution>.yml rendered with those variables, as Ansible would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nativetypes
import pytest
import yaml

from devserver import loader, plan
from devserver.ansible_vars import role_vars
from devserver.spec import DevserverSpec

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
ROLES = (
    "devserver_base",
    "data_volume",
    "nvidia_driver",
    "cuda_toolkit",
    "container_runtime",
    "kind_cluster",
    "gpu_operator",
    "nvshare",
    "gpu_verify",
)
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
DOCKER_REPO = "https://download.docker.com/linux"

# The facts the roles read (gather_subset: min), per OS of the spec.
FACTS = {
    "debian-12": {"distribution": "Debian", "distribution_release": "bookworm", "distribution_version": "12.8",
                  "distribution_major_version": "12", "architecture": "x86_64"},
    "ubuntu-22.04": {"distribution": "Ubuntu", "distribution_release": "jammy", "distribution_version": "22.04",
                     "distribution_major_version": "22", "architecture": "x86_64"},
    "ubuntu-24.04": {"distribution": "Ubuntu", "distribution_release": "noble", "distribution_version": "24.04",
                     "distribution_major_version": "24", "architecture": "x86_64"},
}  # fmt: skip


def _resolved(path: Path, **changes: Any) -> plan.Resolved:
    spec = loader.load_spec(path)
    if changes:
        spec = DevserverSpec.model_validate(_merge(spec.model_dump(), changes))
    return plan.resolve(spec)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _argument_specs() -> dict[str, dict[str, Any]]:
    """Every role variable's argument spec, by name."""
    options: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        specs = yaml.safe_load((ROLES_DIR / role / "meta/argument_specs.yml").read_text())
        options.update(specs["argument_specs"]["main"]["options"])
    return options


class _Vars:
    """Role variables as Ansible resolves them: defaults < vars/main.yml < vars/<distribution>.yml < extra vars,
    templates rendered on demand (natively, so lists stay lists)."""

    def __init__(self, role: str, os_name: str, extra: dict[str, Any]) -> None:
        base = ROLES_DIR / role
        distribution = FACTS[os_name]["distribution"].lower()
        self.raw: dict[str, Any] = {}
        for layer in (base / "defaults/main.yml", base / "vars/main.yml", base / f"vars/{distribution}.yml"):
            if layer.exists():
                self.raw.update(yaml.safe_load(layer.read_text()) or {})
        self.raw.update(extra)
        self.facts = FACTS[os_name]
        self.env = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
        self.done: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.done:
            self.done[name] = self._render(self.raw[name])
        return self.done[name]

    def _render(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._render(item) for item in value]
        if isinstance(value, dict):
            return {key: self._render(item) for key, item in value.items()}
        if not isinstance(value, str) or "{{" not in value:
            return value
        source = value.strip() if value.strip().startswith("{{") and value.strip().endswith("}}") else value
        names = jinja2.meta.find_undeclared_variables(self.env.parse(source))
        context = {name: self[name] for name in names if name != "ansible_facts"}
        return self.env.from_string(source).render(ansible_facts=self.facts, **context)


def _role(resolved: plan.Resolved, role: str, **kwargs: Any) -> _Vars:
    return _Vars(role, resolved.spec.os, role_vars(resolved, **kwargs))


# The mapping against the roles' interfaces.


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_variable_is_a_declared_role_variable_of_its_type(example: Path) -> None:
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    options = _argument_specs()
    resolved = _resolved(example)
    variables = role_vars(resolved)
    assert set(variables) <= set(options), f"not role variables: {sorted(set(variables) - set(options))}"
    for role in ROLES:
        mine = {name: spec for name, spec in options.items() if name.startswith(f"{role}_")}
        given = {name: value for name, value in variables.items() if name in mine}
        result = ArgumentSpecValidator(mine).validate(given)
        assert not result.error_messages, f"{role}: {result.error_messages}"
        # what Ansible would pass on is exactly what we gave (no coercion hid a wrong type)
        assert {name: result.validated_parameters[name] for name in given} == given


def test_gpu_verify_checks_what_the_other_roles_install() -> None:
    resolved = plan.resolve(loader.load_builtin_local())
    variables = role_vars(resolved)
    assert variables["gpu_verify_image_mode"] is False
    assert variables["gpu_verify_engines"] == "both"
    assert variables["gpu_verify_container_image"] == "docker.io/library/ubuntu:24.04"
    assert variables["gpu_verify_nvcc"] == "/usr/bin/nvcc"  # Debian's nvidia-cuda-toolkit
    assert role_vars(resolved, image_mode=True)["gpu_verify_image_mode"] is True
    no_cuda = _resolved(EXAMPLES[0], software={"cuda": {"install": False}})
    assert role_vars(no_cuda)["gpu_verify_nvcc"] == ""


def test_local_default_spec_maps_to_debian_distro_535_cuda_11_8() -> None:
    variables = role_vars(plan.resolve(loader.load_builtin_local()))
    assert variables["nvidia_driver_branch"] == 535
    assert variables["nvidia_driver_flavour"] == "proprietary"
    assert variables["nvidia_driver_source"] == "distro"
    assert variables["cuda_toolkit_install"] is True
    assert variables["cuda_toolkit_source"] == "distro"
    assert variables["cuda_toolkit_version"] == "11.8"
    assert variables["cuda_toolkit_max_version"] == "12.2"
    assert variables["container_runtime_engines"] == "both"
    assert variables["container_runtime_docker_users"] == ["devserver"]
    assert variables["data_volume_device"] == ""
    assert variables["container_runtime_docker_data_root"] == ""
    assert variables["devserver_base_apt_proxy"] == ""
    assert variables["nvidia_driver_cuda_repo_key_url"] == ""  # the role derives <repo>/<distro>/x86_64/3bf863cc.pub


def test_repositories_and_proxy_come_from_the_spec() -> None:
    resolved = _resolved(
        REPO / "examples/gce.yaml",
        repositories={
            "apt_proxy": "http://10.1.2.3:3142/",
            "ubuntu_mirror": "http://mirror.example.org/ubuntu",
            "cuda_repo": "https://mirror.example.org/cuda/repos/",
            "cuda_repo_key_url": "https://mirror.example.org/cuda/key.pub",
            "container_toolkit_repo": "https://mirror.example.org/libnvidia-container/stable/deb",
            "docker_repo": "https://mirror.example.org/docker/linux",
        },
    )
    variables = role_vars(resolved)
    assert variables["devserver_base_apt_proxy"] == "http://10.1.2.3:3142"
    assert variables["devserver_base_ubuntu_mirror"] == "http://mirror.example.org/ubuntu"
    # a site mirror serves the security pocket too
    assert variables["devserver_base_ubuntu_security_mirror"] == "http://mirror.example.org/ubuntu"
    assert variables["nvidia_driver_cuda_repo_url"] == "https://mirror.example.org/cuda/repos"
    assert variables["nvidia_driver_cuda_repo_key_url"] == "https://mirror.example.org/cuda/key.pub"
    assert (
        variables["container_runtime_toolkit_repo_url"] == "https://mirror.example.org/libnvidia-container/stable/deb"
    )
    assert variables["container_runtime_docker_repo_url"] == "https://mirror.example.org/docker/linux"
    default = role_vars(_resolved(REPO / "examples/gce.yaml"))
    assert default["devserver_base_ubuntu_security_mirror"] == "http://security.ubuntu.com/ubuntu"


def test_data_volume_and_docker_data_root_only_with_a_device() -> None:
    resolved = _resolved(REPO / "examples/gce.yaml")  # disks.data at /data, docker_data_root: true
    without = role_vars(resolved)
    assert without["data_volume_device"] == ""
    assert without["container_runtime_docker_data_root"] == ""
    assert without["data_volume_docker_data_root"] is False
    with_device = role_vars(resolved, data_device="/dev/disk/by-id/google-data")
    assert with_device["data_volume_device"] == "/dev/disk/by-id/google-data"
    assert with_device["data_volume_mount_point"] == "/data"
    assert with_device["data_volume_docker_data_root"] is True
    assert with_device["container_runtime_docker_data_root"] == "/data/docker"
    containerd_only = role_vars(
        _resolved(REPO / "examples/gce.yaml", software={"container_runtime": "containerd"}), data_device="/dev/sdb"
    )
    assert containerd_only["container_runtime_docker_data_root"] == ""
    assert containerd_only["data_volume_docker_data_root"] is False
    assert containerd_only["container_runtime_docker_users"] == []


def test_a_device_without_a_data_volume_or_in_image_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no disks\.data"):
        role_vars(plan.resolve(loader.load_builtin_local()), data_device="/dev/sdb")
    with pytest.raises(ValueError, match="image"):
        role_vars(_resolved(REPO / "examples/gce.yaml"), image_mode=True, data_device="/dev/sdb")


def test_image_mode_reaches_every_role_and_never_reboots() -> None:
    resolved = _resolved(REPO / "examples/gce.yaml", software={"reboot": True})
    assert role_vars(resolved)["nvidia_driver_reboot"] is True
    image = role_vars(resolved, image_mode=True)
    assert image["nvidia_driver_reboot"] is False
    for name in ("devserver_base_image_mode", "nvidia_driver_image_mode", "container_runtime_image_mode"):
        assert image[name] is True


def test_no_cuda_means_no_toolkit() -> None:
    variables = role_vars(_resolved(REPO / "examples/local.yaml", software={"cuda": {"install": False}}))
    assert variables["cuda_toolkit_install"] is False


# What the roles install for each OS.


@pytest.mark.parametrize(
    ("example", "changes", "packages", "version_package"),
    [
        ("local", {}, ["nvidia-driver", "nvidia-kernel-dkms", "nvidia-smi", "nvidia-persistenced"], "nvidia-driver"),
        # T4 (Turing) on Ubuntu 22.04, branch 550 from the archive: auto picks the open modules
        ("gce", {}, ["nvidia-driver-550-server-open", "nvidia-dkms-550-server-open", "nvidia-utils-550-server"],
         "nvidia-driver-550-server-open"),
        ("gce", {"software": {"driver": {"flavour": "proprietary"}}},
         ["nvidia-driver-550-server", "nvidia-dkms-550-server", "nvidia-utils-550-server"], "nvidia-driver-550-server"),
        # P100 (Pascal) on Ubuntu 22.04: proprietary only
        ("openstack", {}, ["nvidia-driver-535-server", "nvidia-dkms-535-server", "nvidia-utils-535-server"],
         "nvidia-driver-535-server"),
        # Ubuntu 24.04 from the archive
        ("azure", {"software": {"driver": {"source": "distro"}, "cuda": {"version": "auto"}}},
         ["nvidia-driver-570-server-open", "nvidia-dkms-570-server-open", "nvidia-utils-570-server"],
         "nvidia-driver-570-server-open"),
        # NVIDIA's CUDA repository: the branch metapackages
        ("azure", {}, ["nvidia-open-570"], "nvidia-open-570"),
        ("aws", {}, ["nvidia-open-570"], "nvidia-open-570"),
        ("openstack", {"software": {"driver": {"source": "cuda-repo"}, "cuda": {"version": "auto"}}},
         ["cuda-drivers-535"], "cuda-drivers-535"),
        ("local", {"software": {"driver": {"source": "cuda-repo", "branch": 580}, "cuda": {"version": "auto"}}},
         ["nvidia-open-580"], "nvidia-open-580"),
    ],
    ids=["debian-distro", "ubuntu2204-open", "ubuntu2204-proprietary", "ubuntu2204-pascal", "ubuntu2404-distro",
         "ubuntu2404-cuda-repo", "ubuntu2204-cuda-repo", "ubuntu2204-cuda-repo-pascal", "debian-cuda-repo-580"],
)  # fmt: skip
def test_driver_packages(example: str, changes: dict[str, Any], packages: list[str], version_package: str) -> None:
    driver = _role(_resolved(REPO / f"examples/{example}.yaml", **changes), "nvidia_driver")
    assert driver["nvidia_driver_packages"] == packages
    assert driver["nvidia_driver_version_package"] == version_package
    assert driver["nvidia_driver_held_packages"] == packages


@pytest.mark.parametrize(
    ("example", "distro", "key_url"),
    [
        ("local", "debian12", "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/3bf863cc.pub"),
        ("gce", "ubuntu2204", "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/3bf863cc.pub"),
        ("azure", "ubuntu2404", "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/3bf863cc.pub"),
    ],
)  # fmt: skip
def test_cuda_repository_layout(example: str, distro: str, key_url: str) -> None:
    driver = _role(_resolved(REPO / f"examples/{example}.yaml"), "nvidia_driver")
    assert driver["nvidia_driver_cuda_repo_distro"] == distro
    assert driver["nvidia_driver_cuda_repo_arch"] == "x86_64"
    assert driver["nvidia_driver_cuda_repo_key_url_effective"] == key_url


def test_fabric_manager_package_follows_the_branch() -> None:
    driver = _role(
        _resolved(REPO / "examples/azure.yaml", machine={"gpu": {"model": "h100", "count": 8}}), "nvidia_driver"
    )
    assert driver["nvidia_driver_fabric_manager"] is True
    assert driver["nvidia_driver_fabric_manager_package"] == "nvidia-fabricmanager-570"
    assert driver["nvidia_driver_held_packages"] == ["nvidia-open-570", "nvidia-fabricmanager-570"]


@pytest.mark.parametrize(
    ("example", "changes", "packages", "nvcc"),
    [
        ("local", {}, ["nvidia-cuda-toolkit"], "/usr/bin/nvcc"),
        ("gce", {}, ["nvidia-cuda-toolkit"], "/usr/bin/nvcc"),
        ("azure", {}, ["cuda-toolkit-12-8"], "/usr/local/cuda-12.8/bin/nvcc"),
    ],
)  # fmt: skip
def test_cuda_toolkit_packages(example: str, changes: dict[str, Any], packages: list[str], nvcc: str) -> None:
    toolkit = _role(_resolved(REPO / f"examples/{example}.yaml", **changes), "cuda_toolkit")
    assert toolkit["cuda_toolkit_packages"] == packages
    assert toolkit["cuda_toolkit_nvcc"] == nvcc


@pytest.mark.parametrize(
    ("runtime", "docker_repo", "packages"),
    [
        ("both", None, ["docker.io", "containerd"]),
        ("docker", None, ["docker.io"]),
        ("containerd", None, ["containerd"]),
        ("both", DOCKER_REPO, ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin"]),
        ("containerd", DOCKER_REPO, ["containerd.io"]),
    ],
)  # fmt: skip
def test_container_engine_packages(runtime: str, docker_repo: str | None, packages: list[str]) -> None:
    resolved = _resolved(
        REPO / "examples/azure.yaml",
        software={"container_runtime": runtime},
        repositories={"docker_repo": docker_repo},
    )
    container = _role(resolved, "container_runtime")
    assert container["container_runtime_engine_packages"] == packages
    repos = container["container_runtime_repos"]
    assert [repo["name"] for repo in repos] == ["nvidia-container-toolkit"] + (["docker"] if docker_repo else [])
    assert repos[0]["uris"] == "https://nvidia.github.io/libnvidia-container/stable/deb/amd64/"
    if docker_repo:
        assert repos[1]["uris"] == "https://download.docker.com/linux/ubuntu"
        assert repos[1]["key_url"] == "https://download.docker.com/linux/ubuntu/gpg"
        assert repos[1]["suites"] == "noble"
