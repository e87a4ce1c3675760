"""`devserver status` drift rules, on the facts of a converged package-level host (no GPU), turned into the probe's
JSON by `_probe_json` (the probe reads raw outputs; src/devserver/hoststate/probe.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
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


CONTAINERD_CONFIG = Path(__file__).parent / "hoststate"


def _probe_json(facts: dict[str, Any]) -> dict[str, Any]:
    """The probe's JSON of a host with these facts: each fact written as the raw output it is read from. The
    packages a converged host holds (the driver's and the toolkit's) are held."""
    lines = [f"linux-image-{k} install installed 1" for k in facts["kernels_installed"]]
    lines += [f"{n} hold installed {v}" for n, v in facts["driver_packages"].items()]
    lines += [f"{n} install installed {v}" for n, v in facts["cuda_packages"].items()]
    if facts["toolkit"]:
        lines.append(f"nvidia-container-toolkit hold installed {facts['toolkit']}")
    if facts["docker"]:
        lines.append(f"docker.io install installed {facts['docker']}")
    if facts["containerd"]:
        lines.append(f"containerd install installed {facts['containerd']}")
    runtimes = json.loads(facts["docker_runtimes"]) if facts["docker_runtimes"] else None
    containerd = (
        "derived/containerd-config-nvidia.toml"
        if facts["containerd_nvidia"] != "0"
        else ("real/ci-debian12/containerd-config-dump.toml")
    )
    persistenced = f"LoadState=loaded\nActiveState=inactive\nUnitFileState={facts['persistenced']}\n"
    return {
        "probe_version": 1,
        "os_release": "".join(f'{k}="{v}"\n' for k, v in facts["os"].items()),
        "kernel": facts["kernel"],
        "lib_modules": {},
        "proc_driver_version": None,
        "sys_module_version": None,
        "proc_modules": "",
        "pci": [],
        "nvidia_smi": facts["nvidia_smi"],
        "kernel_log": {"source": "dmesg", "rc": 0, "err": "", "lines": []},
        "secure_boot": {"efi": False, "mokutil": None, "efivar": None},
        "modinfo": None,
        "dkms": {"rc": 0, "out": facts["dkms"], "err": ""},
        "init": "systemd",
        "units": {"nvidia-persistenced": {"rc": 0, "out": persistenced, "err": ""}},
        "processes": [],
        "docker": {"rc": 0 if runtimes else 1, "out": json.dumps({"runtimes": runtimes, "default": "runc"}), "err": ""},
        "daemon_json": None,
        "containerd_config": {"rc": 0, "out": (CONTAINERD_CONFIG / containerd).read_text(), "err": ""},
        "cdi": {},
        "dpkg": {"rc": 0, "err": "", "lines": lines},
        "nvcc": {"rc": 0 if facts["nvcc"] else 127, "out": facts["nvcc"] or "", "err": ""},
        "mounts": "",
        "nouveau_blacklist": ["/etc/modprobe.d/devserver.conf: blacklist nouveau"]
        if facts["nouveau_blacklisted"]
        else [],
        "reboot_markers": ["/var/run/devserver/reboot-required"] if facts["reboot_required"] else [],
        "container_checks": {},
    }


def test_converged_host_has_no_drift() -> None:
    assert drift(_probe_json(CONVERGED), RESOLVED) == []


def test_each_drift_is_reported() -> None:
    facts = copy.deepcopy(CONVERGED)
    facts["driver_packages"] = {"nvidia-driver": "550.54.14-1"}
    facts["dkms"] = ""
    facts["docker_runtimes"] = '{"runc": {"path": "runc"}}'
    facts["nvcc"] = None
    items = {d.item for d in drift(_probe_json(facts), RESOLVED)}
    assert items == {"nvidia driver", "dkms module for 6.1.0-27-amd64", "docker runtime nvidia", "cuda"}


def test_fresh_host() -> None:
    facts = copy.deepcopy(CONVERGED)
    for key in ("driver_packages", "cuda_packages"):
        facts[key] = {}
    facts.update(toolkit=None, docker=None, containerd=None, nvcc=None, dkms="")
    items = {d.item for d in drift(_probe_json(facts), RESOLVED)}
    assert items == {"nvidia driver", "cuda", "nvidia-container-toolkit", "docker", "containerd"}
