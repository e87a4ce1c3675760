"""The parsers, on the real outputs of an H200 host and of the CI machine, and on variants derived from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devserver.hoststate.observed import (
    LoadedModule,
    parse,
    parse_containerd,
    parse_dkms,
    parse_docker,
    parse_driver_version,
    parse_secure_boot,
    parse_smi,
    status_facts,
)
from devserver.hoststate.probe import ProbeError

HERE = Path(__file__).parent
REAL_PROC_VERSION = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \n"
    "GCC version:  gcc version 15.3.0 (GCC) \n"
)


def test_h200_real(h200: dict[str, Any]) -> None:
    have = parse(h200)
    assert have.module == LoadedModule("580.159.04", "open")
    assert have.sys_module_version == "580.159.04"
    assert (have.os_id, have.os_version, have.kernel) == ("ubuntu", "24.04", "6.18.44-fc-v1252-gpu")
    assert [(d.slot, d.device_id, d.driver, d.is_gpu) for d in have.pci] == [("0000:00:06.0", "0x2335", "nvidia", True)]
    assert have.smi is not None
    assert have.smi.error is None
    assert (have.smi.driver_version, have.smi.cuda_version) == ("580.159.04", "13.0")
    (gpu,) = have.smi.gpus
    assert (gpu.name, gpu.uuid, gpu.pci_device_id, gpu.pci_bus_id) == (
        "NVIDIA H200",
        "GPU-132d124b-a124-0705-8f6f-b72dc808800c",
        "0x2335",
        "00000000:00:06.0",
    )
    assert (gpu.persistence, gpu.mig, gpu.ecc_uncorrectable) == (True, "Disabled", 0)
    assert not gpu.remapped_rows_pending
    assert not gpu.remapped_rows_failure
    # nvidia-smi 580's XML has no compute capability (its CSV query does: 9.0)
    assert gpu.compute_capability is None
    assert have.driver_packages == {}
    assert have.driver_source == "loaded, not from packages"
    assert have.loaded_modules == {"nvidia", "nvidia_uvm"}
    assert have.module_taints["nvidia"] == "O"
    assert not have.nouveau_loaded
    assert not have.systemd
    assert have.nvcc == "release 13.0, V13.0.88"
    assert have.docker is None
    assert have.containerd is None
    assert have.secure_boot is None
    assert have.kernel_log_source is None


def test_real_proc_version_text() -> None:
    assert parse_driver_version(REAL_PROC_VERSION) == LoadedModule("580.159.04", "open")


def test_proprietary_module_derived() -> None:
    """derived: the real line as the proprietary module writes it ("NVIDIA UNIX x86_64 Kernel Module")."""
    text = REAL_PROC_VERSION.replace("Open Kernel Module for x86_64", "x86_64 Kernel Module")
    assert parse_driver_version(text) == LoadedModule("580.159.04", "proprietary")
    assert parse_driver_version(None) is None
    assert parse_driver_version("garbage") is None


def test_smi_mismatch_derived() -> None:
    """derived: what nvidia-smi prints (on stdout, exit 18) when the library is newer than the loaded module."""
    smi = parse_smi({"rc": 18, "out": "Failed to initialize NVML: Driver/library version mismatch\n", "err": ""})
    assert smi.error == "Failed to initialize NVML: Driver/library version mismatch"
    assert smi.gpus == ()


def test_dkms_both_formats() -> None:
    three = (
        "nvidia-current/535.247.01, 6.1.0-27-amd64, x86_64: installed\n"
        "nvidia/580.95.05, 6.8.0-49-generic, x86_64: built"
    )
    two = "nvidia-current, 535.247.01, 6.1.0-27-amd64, x86_64: installed"
    assert parse_dkms(three) == {
        "6.1.0-27-amd64": ("nvidia-current/535.247.01: installed",),
        "6.8.0-49-generic": ("nvidia/580.95.05: built",),
    }
    assert parse_dkms(two) == {"6.1.0-27-amd64": ("nvidia-current/535.247.01: installed",)}


def test_containerd_real_and_derived() -> None:
    real = (HERE / "real" / "ci-debian12" / "containerd-config-dump.toml").read_text()
    derived = (HERE / "derived" / "containerd-config-nvidia.toml").read_text()
    plain = parse_containerd({"rc": 0, "out": real, "err": ""})
    assert plain.running_config
    assert not plain.nvidia_runtime
    assert plain.default_runtime == "runc"
    assert parse_containerd({"rc": 0, "out": derived, "err": ""}).nvidia_runtime


def test_docker_daemon_down_real() -> None:
    """real: `docker info` on the CI machine, whose daemon is not running."""
    result = {
        "rc": 1,
        "out": '{"runtimes": null, "default": "", "root": ""}\n',
        "err": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n",
    }
    docker = parse_docker(result)
    assert not docker.running
    assert docker.runtimes == ()


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ({"efi": True, "mokutil": {"rc": 0, "out": "SecureBoot enabled\n", "err": ""}, "efivar": None}, True),
        ({"efi": True, "mokutil": {"rc": 0, "out": "SecureBoot disabled\n", "err": ""}, "efivar": 1}, False),
        ({"efi": True, "mokutil": None, "efivar": 1}, True),
        ({"efi": True, "mokutil": None, "efivar": 0}, False),
        ({"efi": False, "mokutil": None, "efivar": None}, False),
        ({"efi": None, "mokutil": None, "efivar": None}, None),
    ],
)
def test_secure_boot(raw: dict[str, Any], want: bool | None) -> None:
    assert parse_secure_boot(raw) is want


def test_other_probe_version_refused(h200: dict[str, Any]) -> None:
    h200["probe_version"] = 0
    with pytest.raises(ProbeError):
        parse(h200)


def test_status_facts_h200(h200: dict[str, Any]) -> None:
    facts = status_facts(parse(h200))
    assert facts["driver"] == "580.159.04 (open kernel module)"
    assert facts["driver_source"] == "loaded, not from packages"
    assert facts["gpus"] == [
        {
            "name": "NVIDIA H200",
            "uuid": "GPU-132d124b-a124-0705-8f6f-b72dc808800c",
            "pci": "00000000:00:06.0",
            "device_id": "0x2335",
        }
    ]
    assert facts["persistence"] == "persistence mode on for 1 of 1 GPU(s)"
