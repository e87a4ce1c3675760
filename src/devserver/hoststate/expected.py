"""What a host converged to a spec must be: derived once from the resolved spec.

`devserver status` and `devserver update` compare it with :class:`~devserver.hoststate.observed.Observed`
(:func:`devserver.hoststate.diff.drift`); the image build's validate role gets its expected versions from it
(:func:`devserver.ansible_vars.image_role_vars`). The role variables that make a host so come from the same
:class:`~devserver.plan.Resolved` (:func:`devserver.ansible_vars.role_vars`).
"""

from __future__ import annotations

from dataclasses import dataclass

from devserver.plan import Flavour, Resolved


@dataclass(frozen=True)
class Expected:
    os: str  # "ubuntu-24.04"
    driver_branch: int
    driver_flavour: Flavour
    module_every_kernel: bool  # a module built for every installed kernel (DKMS)
    nouveau_off: bool
    persistenced: bool
    fabric_manager: bool  # NVSwitch machines: nvidia-fabricmanager at the driver's version
    cuda: str | None  # toolkit version ("13.0"), None: no toolkit
    container_toolkit: str | None  # nvidia-container-toolkit version, None: no container runtime
    docker: bool
    containerd: bool
    default_runtime_nvidia: bool
    data_mount: str | None  # mount point of the data volume, None: no data volume to check
    docker_data_root: str | None  # Docker's data-root on the data volume, None: Docker's default
    hold_driver: bool  # the driver packages are held
    hold_toolkit: bool  # the container toolkit packages are held


def expected(resolved: Resolved, *, data_device: str | None = None) -> Expected:
    """The expected state of a host of `resolved`. `data_device` as for
    :func:`~devserver.ansible_vars.role_vars`: a data volume is expected mounted (and Docker's data-root on it) only
    where the update is given its device."""
    spec = resolved.spec
    software = spec.software
    engines = software.container_runtime
    docker = engines in ("docker", "both")
    data = spec.disks.data
    mount = data.mount_point if data is not None and data_device is not None else None
    return Expected(
        os=spec.os,
        driver_branch=resolved.driver_branch,
        driver_flavour=resolved.driver_flavour,
        module_every_kernel=True,
        nouveau_off=True,
        persistenced=True,
        fabric_manager=resolved.fabric_manager,
        cuda=resolved.cuda,
        container_toolkit=software.container_toolkit if engines != "none" else None,
        docker=docker,
        containerd=engines in ("containerd", "both"),
        default_runtime_nvidia=software.default_runtime_nvidia and engines != "none",
        data_mount=mount,
        docker_data_root=f"{mount}/docker"
        if mount is not None and data is not None and data.docker_data_root and docker
        else None,
        hold_driver=True,
        hold_toolkit=engines != "none",
    )
