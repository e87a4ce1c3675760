"""The variables of the one playbook, mapped from a resolved spec: the only place where spec fields meet role variables.

:func:`role_vars` returns exactly the role variables the spec decides (every name is declared in a role's
``defaults/main.yml`` and ``meta/argument_specs.yml``, of the type declared there); anything the spec does not decide
keeps the role's default. :func:`image_role_vars` does the same for the roles of ``playbooks/image.yml``
(cloud_guest, image_generalize, image_validate), which only image builds run. The results are JSON-serialisable and
go to ansible-runner as extra vars, so they override every other variable source.
"""

from __future__ import annotations

from collections.abc import Sequence

from devserver import catalog as catalog_module
from devserver import versions
from devserver.hoststate.expected import expected
from devserver.images.artifact import Target
from devserver.plan import Resolved

# Where kind_cluster keeps the kind config and root's kubeconfig of the cluster, which gpu_operator and nvshare use
KIND_CONFIG_DIR = "/etc/devserver/kind"


def role_vars(resolved: Resolved, *, image_mode: bool = False, data_device: str | None = None) -> dict[str, object]:
    """Role variables for `resolved`.

    `image_mode`: the playbook builds an image (chroot or Packer): services are not started, nothing reboots, no
    data volume. `data_device`: the data volume's block device as the host names it (the runner knows it per cloud);
    None when the host has none yet. Raises ValueError for a device the spec has no data volume for, or a device in
    image mode.
    """
    spec = resolved.spec
    software = spec.software
    repos = spec.repositories
    data = spec.disks.data
    if data_device is not None and data is None:
        raise ValueError(f"data device {data_device} given, but the spec has no disks.data volume")
    if data_device is not None and image_mode:
        raise ValueError("an image build has no data volume: give no data device in image mode")
    docker = software.container_runtime in ("docker", "both")
    max_cuda = catalog_module.load().max_cuda(resolved.driver_branch)
    assert max_cuda is not None  # resolve() rejects a branch the catalog has no CUDA for
    # Docker moves onto the data volume only where there are both (an image build has no data volume yet)
    use_data_root = data is not None and data.docker_data_root and data_device is not None and docker

    return {
        # devserver_base
        "devserver_base_admin_user": spec.ssh.admin_user,
        "devserver_base_admin_keys": list(spec.ssh.public_keys),
        "devserver_base_apt_proxy": (repos.apt_proxy or "").rstrip("/"),
        "devserver_base_apt_proxy_bypass": list(repos.apt_proxy_bypass),
        "devserver_base_debian_mirror": repos.debian_mirror,
        "devserver_base_debian_security_mirror": repos.debian_security_mirror,
        "devserver_base_ubuntu_mirror": repos.ubuntu_mirror,
        "devserver_base_ubuntu_security_mirror": (
            versions.UBUNTU_SECURITY_MIRROR if repos.ubuntu_mirror == versions.UBUNTU_MIRROR else repos.ubuntu_mirror
        ),
        "devserver_base_image_mode": image_mode,
        # data_volume
        "data_volume_device": data_device or "",
        "data_volume_mount_point": data.mount_point if data else "/data",
        "data_volume_filesystem": data.filesystem if data else "ext4",
        "data_volume_docker_data_root": bool(use_data_root),
        # nvidia_driver
        "nvidia_driver_branch": resolved.driver_branch,
        "nvidia_driver_flavour": resolved.driver_flavour,
        "nvidia_driver_source": software.driver.source,
        "nvidia_driver_cuda_repo_url": repos.cuda_repo.rstrip("/"),
        "nvidia_driver_cuda_repo_key_url": repos.cuda_repo_key_url or "",
        "nvidia_driver_cuda_repo_key_fingerprint": repos.cuda_repo_key_fingerprint,
        "nvidia_driver_fabric_manager": resolved.fabric_manager,
        "nvidia_driver_reboot": software.reboot and not image_mode,
        "nvidia_driver_image_mode": image_mode,
        # cuda_toolkit
        "cuda_toolkit_install": resolved.cuda is not None,
        "cuda_toolkit_source": software.driver.source,
        "cuda_toolkit_version": resolved.cuda or max_cuda,
        "cuda_toolkit_max_version": max_cuda,
        # container_runtime
        "container_runtime_engines": software.container_runtime,
        # a kind node gets its GPUs only through Docker's default runtime (kind_cluster sets it too, never against this)
        "container_runtime_default_runtime_nvidia": software.default_runtime_nvidia or _kind_gpus(resolved),
        "container_runtime_docker_repo_url": (repos.docker_repo or "").rstrip("/"),
        "container_runtime_toolkit_repo_url": repos.container_toolkit_repo.rstrip("/"),
        "container_runtime_toolkit_key_url": repos.container_toolkit_key_url,
        "container_runtime_toolkit_key_fingerprint": repos.container_toolkit_key_fingerprint,
        "container_runtime_toolkit_version": software.container_toolkit,
        "container_runtime_docker_data_root": f"{data.mount_point}/docker" if data and use_data_root else "",
        "container_runtime_docker_users": [spec.ssh.admin_user] if docker else [],
        "container_runtime_image_mode": image_mode,
        # gpu_verify
        "gpu_verify_image_mode": image_mode,
        "gpu_verify_engines": software.container_runtime,
        "gpu_verify_container_image": software.gpu_check_image,
        "gpu_verify_nvcc": nvcc_path(resolved) if resolved.cuda is not None else "",
        **kubernetes_role_vars(resolved, image_mode=image_mode),
    }


def nvcc_path(resolved: Resolved) -> str:
    """Where the spec's CUDA toolkit puts nvcc: /usr/local/cuda-X.Y from NVIDIA's repository, /usr/bin from the
    distribution's."""
    if resolved.spec.software.driver.source == "cuda-repo":
        return f"/usr/local/cuda-{resolved.cuda}/bin/nvcc"
    return "/usr/bin/nvcc"


def _kind_gpus(resolved: Resolved) -> bool:
    plan = resolved.kubernetes
    return plan is not None and plan.case == "kind" and resolved.machine is not None and resolved.machine.gpu_count > 0


def kubernetes_role_vars(resolved: Resolved, *, image_mode: bool = False) -> dict[str, object]:
    """Variables of kind_cluster, gpu_operator and nvshare. They install only onto the devserver's kind cluster:
    without one (no `kubernetes.kind`) all three are off. An image build installs kind's tools and host settings
    but creates no cluster, so the operator and nvshare report "skipped: no cluster" there."""
    spec = resolved.spec
    repos = spec.repositories
    plan = resolved.kubernetes
    kind = plan is not None and plan.case == "kind"
    operator = plan.operator if plan is not None and kind else None
    share = plan.nvshare if plan is not None and kind else None
    name = plan.cluster_name if plan is not None and kind else "devserver"
    kubeconfig = f"{KIND_CONFIG_DIR}/{name}.kubeconfig"
    out: dict[str, object] = {
        # kind_cluster
        "kind_cluster_enabled": kind,
        "kind_cluster_name": name,
        "kind_cluster_gpus": _kind_gpus(resolved),
        "kind_cluster_admin_user": spec.ssh.admin_user,
        "kind_cluster_kind_url": repos.kind_url.rstrip("/"),
        "kind_cluster_kubectl_url": repos.kubectl_url.rstrip("/"),
        "kind_cluster_helm_url": repos.helm_url.rstrip("/"),
        "kind_cluster_image_mode": image_mode,
        "kind_cluster_kind_version": versions.KIND_VERSION,
        "kind_cluster_kind_sha256": dict(versions.KIND_SHA256),
        "kind_cluster_kubectl_version": versions.KUBECTL_VERSION,
        "kind_cluster_kubectl_sha256": dict(versions.KUBECTL_SHA256),
        "kind_cluster_helm_version": versions.HELM_VERSION,
        "kind_cluster_helm_sha256": dict(versions.HELM_SHA256),
        "kind_cluster_config_dir": KIND_CONFIG_DIR,
        # gpu_operator
        "gpu_operator_enabled": operator is not None,
        "gpu_operator_chart_repo": repos.gpu_operator_chart_repo.rstrip("/"),
        "gpu_operator_kubeconfig": kubeconfig,
        # nvshare
        "nvshare_enabled": share is not None,
        "nvshare_kubeconfig": kubeconfig,
        "nvshare_kind_node": f"{name}-control-plane",
    }
    if plan is not None and kind and plan.node_image is not None:
        out["kind_cluster_node_image"] = plan.node_image
    if operator is not None:
        out["gpu_operator_version"] = operator.version
        out["gpu_operator_toolkit_enabled"] = operator.toolkit
        out["gpu_operator_cdi_enabled"] = operator.cdi
    if share is not None:
        out["nvshare_virtual_devices"] = share.virtual_devices
        out["nvshare_lib_image"] = share.lib_image
        out["nvshare_device_plugin_image"] = share.device_plugin_image
        out["nvshare_scheduler_image"] = share.scheduler_image
    return out


def image_role_vars(resolved: Resolved, target: Target, *, build_users: Sequence[str] = ()) -> dict[str, object]:
    """Variables of playbooks/image.yml for an image of `resolved` for `target`.

    `build_users`: accounts that exist only for the build (Packer's SSH user), removed by image_generalize and
    checked absent by image_validate; the chroot builder has none. What image_validate asserts (driver branch, CUDA,
    container toolkit, engines) is the host-state model's expectation (:func:`devserver.hoststate.expected.expected`),
    the one `devserver status` and `devserver update` compare hosts with.
    """
    want = expected(resolved)
    cuda = want.cuda or ""
    nvcc = nvcc_path(resolved)
    return {
        # cloud_guest
        "cloud_guest_target": target,
        # image_generalize
        "image_generalize_build_users": list(build_users),
        # image_validate
        "image_validate_build_users": list(build_users),
        "image_validate_driver_branch": want.driver_branch,
        "image_validate_cuda_version": cuda,
        "image_validate_cuda_nvcc": nvcc,
        "image_validate_container_toolkit_version": want.container_toolkit or "",
        "image_validate_docker": want.docker,
        "image_validate_containerd": want.containerd,
    }
