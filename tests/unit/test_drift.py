"""`devserver status` drift rules, on probe facts shaped like the real probe's output."""

from __future__ import annotations

import copy
from typing import Any

from devserver.loader import load_builtin_local
from devserver.plan import resolve
from devserver.update import drift

RESOLVED = resolve(load_builtin_local())
CONVERGED: dict[str, Any] = {
    "os": {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "kernel": "6.1.0-27-amd64",
    "kernels_installed": ["6.1.0-27-amd64"],
    "driver_packages": {"nvidia-driver": "535.247.01-1~deb12u1", "nvidia-kernel-dkms": "535.247.01-1~deb12u1"},
    "cuda_packages": {"nvidia-cuda-toolkit": "11.8.89~11.8.0-5~deb12u1"},
    "toolkit": RESOLVED.spec.software.container_toolkit + "-1",
    "docker": "20.10.24+dfsg1-1+b3",
    "containerd": "1.6.20~ds1-1+b1",
    "dkms": "nvidia-current/535.247.01, 6.1.0-27-amd64, x86_64: installed",
    "nouveau_blacklisted": True,
    "persistenced": "enabled",
    "docker_runtimes": '{"nvidia": {"path": "nvidia-container-runtime"}, "runc": {"path": "runc"}}',
    "containerd_nvidia": "2",
    "nvcc": "Cuda compilation tools, release 11.8, V11.8.89\nBuild cuda_11.8.r11.8/compiler.31833905_0",
    "nvidia_smi": None,
    "reboot_required": False,
}


def test_converged_host_has_no_drift() -> None:
    assert drift(CONVERGED, RESOLVED) == []


def test_each_drift_is_reported() -> None:
    facts = copy.deepcopy(CONVERGED)
    facts["driver_packages"] = {"nvidia-driver": "550.54.14-1"}
    facts["dkms"] = ""
    facts["docker_runtimes"] = '{"runc": {"path": "runc"}}'
    facts["nvcc"] = None
    items = {d.item for d in drift(facts, RESOLVED)}
    assert items == {"nvidia driver", "dkms module for 6.1.0-27-amd64", "docker runtime nvidia", "cuda"}


def test_fresh_host() -> None:
    facts = copy.deepcopy(CONVERGED)
    for key in ("driver_packages", "cuda_packages"):
        facts[key] = {}
    facts.update(toolkit=None, docker=None, containerd=None, nvcc=None, dkms="")
    items = {d.item for d in drift(facts, RESOLVED)}
    assert items == {"nvidia driver", "cuda", "nvidia-container-toolkit", "docker", "containerd"}
