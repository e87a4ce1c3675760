"""Expected vs observed: every way a host differs from what its spec resolves to (pure: tested without a host).

A driver loaded by the kernel but installed outside dpkg (a vendor image, a driver under /usr/local/nvidia) is judged
by what the kernel and NVML say; the package-level expectations (DKMS per kernel, the nouveau blacklist, holds,
persistenced's unit) are those of devserver's own install and apply where the driver came from packages.
"""

from __future__ import annotations

from dataclasses import dataclass

from devserver.hoststate.expected import Expected
from devserver.hoststate.observed import Observed

# The packages container_runtime installs and holds (roles/container_runtime/vars/main.yml).
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)


@dataclass(frozen=True)
class Drift:
    item: str
    want: str
    have: str


def _upstream(version: str) -> str:
    """A Debian version without epoch and revision: "1:580.95.05-0ubuntu1" → "580.95.05"."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def drift(want: Expected, have: Observed) -> list[Drift]:
    """Every difference between `want` and `have`, in a stable order."""
    out: list[Drift] = []
    os_name = f"{have.os_id}-{have.os_version}"
    if os_name != want.os:
        out.append(Drift("os", want.os, os_name))
    out += _driver(want, have)
    if want.cuda is not None and (have.nvcc is None or f"release {want.cuda}," not in have.nvcc):
        out.append(Drift("cuda", want.cuda, have.nvcc or "not installed"))
    out += _containers(want, have)
    if want.data_mount is not None and want.data_mount not in have.mounts:
        out.append(Drift("data volume", f"mounted on {want.data_mount}", "not mounted"))
    return out


def _driver(want: Expected, have: Observed) -> list[Drift]:
    out: list[Drift] = []
    branch = str(want.driver_branch)
    packages = have.driver_packages
    versions = sorted({p.version for p in packages.values()})
    if versions:
        if not all(_upstream(v).startswith(branch + ".") for v in versions):
            out.append(Drift("nvidia driver", f"branch {branch}", ", ".join(versions)))
    elif have.module is None:
        out.append(Drift("nvidia driver", f"branch {branch}", "not installed"))
    elif not have.module.version.startswith(branch + "."):
        out.append(Drift("nvidia driver", f"branch {branch}", f"{have.module.version} (loaded, not from packages)"))
    if have.module is not None and have.module.flavour != want.driver_flavour:
        out.append(Drift("nvidia driver flavour", want.driver_flavour, f"{have.module.flavour} (loaded)"))
    if have.nouveau_loaded and want.nouveau_off:
        out.append(Drift("nouveau", "not loaded", "loaded"))
    if versions:
        if want.module_every_kernel:
            for kernel in have.kernels_installed:
                if not any(entry.endswith(": installed") for entry in have.dkms.get(kernel, ())):
                    out.append(Drift(f"dkms module for {kernel}", "installed", "missing"))
        if want.nouveau_off and not have.nouveau_blacklist:
            out.append(Drift("nouveau", "blacklisted", "not blacklisted"))
        if want.hold_driver:
            out += [Drift(f"hold on {name}", "held", "not held") for name, p in sorted(packages.items()) if not p.held]
    if want.persistenced and have.driver_source != "none":
        out += _persistence(have, from_packages=bool(versions))
    if want.fabric_manager:
        out += _fabric_manager(want, have)
    return out


def _persistence(have: Observed, *, from_packages: bool) -> list[Drift]:
    """persistenced's unit where devserver installed it under systemd; else what NVML reports per GPU."""
    unit = have.units.get("nvidia-persistenced")
    if from_packages and have.systemd:
        state = unit.enabled if unit is not None and unit.loaded else "not installed"
        return [] if state == "enabled" else [Drift("nvidia-persistenced", "enabled", state)]
    if have.smi is not None and have.smi.gpus:
        off = [g.pci_bus_id for g in have.smi.gpus if not g.persistence]
        return [Drift("persistence mode", "on", f"off on {', '.join(off)}")] if off else []
    if not any(p.startswith("nvidia-persist") for p in have.processes):
        return [Drift("nvidia-persistenced", "running", "not running")]
    return []


def _fabric_manager(want: Expected, have: Observed) -> list[Drift]:
    package = have.package(f"nvidia-fabricmanager-{want.driver_branch}", "nvidia-fabricmanager")
    if package is None:
        return [Drift("nvidia-fabricmanager", f"branch {want.driver_branch}", "not installed")]
    driver = have.module.version if have.module is not None else None
    out = []
    if driver is not None and _upstream(package.version) != driver:
        out.append(Drift("nvidia-fabricmanager", f"driver's version {driver}", package.version))
    unit = have.units.get("nvidia-fabricmanager")
    if have.systemd and (unit is None or unit.active != "active"):
        out.append(Drift("nvidia-fabricmanager service", "active", unit.active if unit is not None else "absent"))
    return out


def _containers(want: Expected, have: Observed) -> list[Drift]:
    out: list[Drift] = []
    if want.container_toolkit is not None:
        toolkit = have.package("nvidia-container-toolkit")
        if toolkit is None or not toolkit.version.startswith(want.container_toolkit):
            have_toolkit = toolkit.version if toolkit is not None else "not installed"
            out.append(Drift("nvidia-container-toolkit", want.container_toolkit, have_toolkit))
        if want.hold_toolkit:
            out += [
                Drift(f"hold on {name}", "held", "not held")
                for name in TOOLKIT_PACKAGES
                if name in have.packages and not have.packages[name].held
            ]
    if want.docker:
        docker = have.docker
        if have.package("docker.io", "docker-ce") is None:
            out.append(Drift("docker", "installed", "not installed"))
        elif docker is None or "nvidia" not in docker.runtimes:
            out.append(Drift("docker runtime nvidia", "registered", "missing"))
        elif want.default_runtime_nvidia and docker.default_runtime != "nvidia":
            out.append(Drift("docker default runtime", "nvidia", docker.default_runtime))
        if want.docker_data_root is not None and docker is not None and docker.root_dir != want.docker_data_root:
            out.append(Drift("docker data-root", want.docker_data_root, docker.root_dir or "unknown"))
    if want.containerd:
        if have.package("containerd", "containerd.io") is None:
            out.append(Drift("containerd", "installed", "not installed"))
        elif have.containerd is None or not have.containerd.nvidia_runtime:
            out.append(Drift("containerd runtime nvidia", "registered", "missing"))
        elif want.default_runtime_nvidia and have.containerd.default_runtime != "nvidia":
            out.append(Drift("containerd default runtime", "nvidia", have.containerd.default_runtime))
    return out
