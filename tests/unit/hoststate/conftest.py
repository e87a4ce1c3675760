"""Probe outputs for the host-state tests, in the shape of src/devserver/hoststate/probe.py's JSON.

`h200`: assembled from the real outputs of an NVIDIA H200 host in real/h200-ubuntu2404-driver580/ (copied from
../shared/gpu-facts/; see its README). Every field is what that host printed; the sources its capture did not read
(kernel log, Secure Boot, /lib/modules, mounts) are given as the probe gives a source it cannot read.

`debian_host`: a converged package-level host without a GPU (Debian 12, the distro driver via DKMS, Docker and
containerd with the nvidia runtime), as tests/unit/test_drift.py's facts describe it.

Variants of either are derived in the tests, each named derived_… with what was changed from the real output.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from devserver.loader import load_spec_bytes
from devserver.plan import Resolved, resolve

REAL = Path(__file__).parent / "real" / "h200-ubuntu2404-driver580"
DERIVED = Path(__file__).parent / "derived"

# A spec that host matches: Ubuntu 24.04, branch 580 open modules, CUDA 13.0, no container runtime.
H200_SPEC = (REAL / "spec.yaml").read_bytes()


def sections(text: str) -> dict[str, str]:
    """host-facts.txt: "### <command>" headers, each followed by its output and a "### rc=N" line."""
    out: dict[str, str] = {}
    for block in re.split(r"^### (?!rc=)", text, flags=re.M)[1:]:
        command, _, rest = block.partition("\n")
        out[command] = rest.split("### rc=")[0]
    return out


def _h200() -> dict[str, Any]:
    facts = sections((REAL / "host-facts.txt").read_text())

    def section(prefix: str) -> str:
        return next(v for k, v in facts.items() if k.startswith(prefix))

    uname = section("uname -a").splitlines()
    version = section("cat /proc/driver/nvidia/version").splitlines()
    pci = []
    for line in section("for d in /sys/bus/pci/devices").splitlines():
        path, device, klass, driver = line.split()
        pci.append(
            {
                "slot": Path(path).name,
                "vendor": "0x10de",
                "device": device,
                "class": klass.removeprefix("class="),
                "driver": driver.removeprefix("driver=") or None,
            }
        )
    # the host's own dpkg view, as the old status probe printed it: CUDA's config packages only
    old_probe = section("the _PROBE script")
    cuda_packages = re.findall(r'"(cuda-toolkit-[^"]*)": "([^"]*)"', old_probe)
    return {
        "probe_version": 1,
        "os_release": "\n".join(line for line in uname if "=" in line) + "\n",
        "kernel": uname[0].split()[2],
        "lib_modules": {},
        "proc_driver_version": "\n".join(version[:2]) + "\n",
        "sys_module_version": version[2] + "\n",
        "proc_modules": "\n".join(
            line for line in section("lsmod").splitlines() if line.startswith(("nvidia", "nouveau"))
        )
        + "\n",
        "pci": pci,
        "nvidia_smi": {"rc": 0, "out": (REAL / "nvidia-smi-q.xml").read_text(), "err": ""},
        "kernel_log": {"source": None, "rc": 1, "err": "not captured", "lines": []},
        "secure_boot": {"efi": None, "mokutil": None, "efivar": None},
        "modinfo": None,  # "modinfo: command not found" on that host
        "dkms": None,  # no dkms there (command -v)
        "init": uname[-1].strip(),  # ps -p 1: not systemd
        "units": {},
        "processes": [],
        "docker": None,
        "daemon_json": None,
        "containerd_config": None,
        "cdi": {},
        "dpkg": {"rc": 0, "err": "", "lines": [f"{name} install installed {v}" for name, v in cuda_packages]},
        "nvcc": {"rc": 0, "out": section("nvcc --version").split("/usr/local/cuda/")[0], "err": ""},
        "mounts": "",
        "nouveau_blacklist": [],
        "reboot_markers": [],
        "container_checks": {},
    }


def _debian_host(resolved: Resolved) -> dict[str, Any]:
    kernel = "6.1.0-27-amd64"
    toolkit = resolved.spec.software.container_toolkit + "-1"
    packages = {
        f"linux-image-{kernel}": "6.1.115-1",
        "nvidia-driver": "535.247.01-1~deb12u1",
        "nvidia-kernel-dkms": "535.247.01-1~deb12u1",
        "nvidia-cuda-toolkit": "11.8.89~11.8.0-5~deb12u1",
        "nvidia-container-toolkit": toolkit,
        "nvidia-container-toolkit-base": toolkit,
        "docker.io": "20.10.24+dfsg1-1+b3",
        "containerd": "1.6.20~ds1-1+b1",
    }
    held = {"nvidia-driver", "nvidia-kernel-dkms", "nvidia-container-toolkit", "nvidia-container-toolkit-base"}
    return {
        "probe_version": 1,
        "os_release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
        "kernel": kernel,
        "lib_modules": {kernel: [f"/lib/modules/{kernel}/updates/dkms/nvidia-current.ko.xz"]},
        "proc_driver_version": None,
        "sys_module_version": None,
        "proc_modules": "",
        "pci": [],
        "nvidia_smi": None,
        "kernel_log": {"source": "dmesg", "rc": 0, "err": "", "lines": []},
        "secure_boot": {"efi": False, "mokutil": None, "efivar": None},
        "modinfo": {"rc": 1, "out": "", "err": "modinfo: ERROR: Module nvidia not found."},
        "dkms": {"rc": 0, "out": f"nvidia-current/535.247.01, {kernel}, x86_64: installed\n", "err": ""},
        "init": "systemd",
        "units": {
            "nvidia-persistenced": {
                "rc": 0,
                "out": "LoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\n",
                "err": "",
            }
        },
        "processes": [],
        "docker": {
            "rc": 0,
            "out": '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}, "runc": {"path": "runc"}}, '
            '"default": "runc", "root": "/var/lib/docker"}\n',
            "err": "",
        },
        "daemon_json": '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}',
        "containerd_config": {"rc": 0, "out": (DERIVED / "containerd-config-nvidia.toml").read_text(), "err": ""},
        "cdi": {},
        "dpkg": {
            "rc": 0,
            "err": "",
            "lines": [f"{n} {'hold' if n in held else 'install'} installed {v}" for n, v in packages.items()],
        },
        "nvcc": {
            "rc": 0,
            "out": "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 11.8, V11.8.89\n"
            "Build cuda_11.8.r11.8/compiler.31833905_0\n",
            "err": "",
        },
        "mounts": "/dev/vda1 / ext4 rw,relatime 0 0\n",
        "nouveau_blacklist": ["/etc/modprobe.d/devserver-nouveau.conf: blacklist nouveau"],
        "reboot_markers": [],
        "container_checks": {},
    }


_H200 = _h200()


@pytest.fixture
def h200() -> dict[str, Any]:
    """The H200 host's probe JSON (a fresh copy per test: tests derive variants in place)."""
    return copy.deepcopy(_H200)


@pytest.fixture
def h200_resolved() -> Resolved:
    """real/h200-ubuntu2404-driver580/spec.yaml resolved."""
    return resolve(load_spec_bytes(H200_SPEC))


@pytest.fixture
def debian_resolved() -> Resolved:
    from devserver.loader import load_builtin_local

    return resolve(load_builtin_local())


@pytest.fixture
def debian_host(debian_resolved: Resolved) -> dict[str, Any]:
    return _debian_host(debian_resolved)
