"""Every `devserver doctor` finding, on the real H200 outputs (healthy) and on variants derived from them: each
derived_… helper states what it changed. The no-GPU case runs for real on the machine running the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from devserver.hoststate.findings import Diagnosis, diagnose
from devserver.hoststate.observed import parse
from devserver.hoststate.probe import run_local

HERE = Path(__file__).parent
SLOT = "0000:00:06.0"


def ids(raw: dict[str, Any]) -> list[str]:
    return [f.id for f in diagnose(parse(raw)).findings]


def finding(raw: dict[str, Any], finding_id: str) -> Any:
    (found,) = [f for f in diagnose(parse(raw)).findings if f.id == finding_id]
    return found


def derived_xml(raw: dict[str, Any], old: str, new: str) -> None:
    """derived: one element of the real `nvidia-smi -q -x` output changed."""
    xml = raw["nvidia_smi"]["out"]
    assert old in xml
    raw["nvidia_smi"]["out"] = xml.replace(old, new, 1)


def derived_no_module(raw: dict[str, Any]) -> None:
    """derived: the H200 host after a kernel upgrade whose module was not built: nothing loaded, the GPU unbound, a
    module only for the old kernel, and nvidia-smi's message when it finds no driver (exit 9)."""
    raw.update(proc_driver_version=None, sys_module_version=None, proc_modules="")
    raw["pci"][0]["driver"] = None
    raw["lib_modules"] = {"6.8.0-49-generic": ["/lib/modules/6.8.0-49-generic/updates/dkms/nvidia.ko.zst"]}
    raw["nvidia_smi"] = {
        "rc": 9,
        "out": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
        "latest NVIDIA driver is installed and running.\n",
        "err": "",
    }


def test_h200_real_is_healthy(h200: dict[str, Any]) -> None:
    diagnosis = diagnose(parse(h200))
    assert diagnosis.findings == ()
    assert diagnosis.healthy
    # what that capture did not read is said, not passed over
    assert any("kernel log not readable" in note for note in diagnosis.notes)


def _nvidia_gpu_here() -> bool:
    for device in Path("/sys/bus/pci/devices").glob("*"):
        vendor = (device / "vendor").read_text().strip() if (device / "vendor").exists() else ""
        klass = (device / "class").read_text().strip() if (device / "class").exists() else ""
        if vendor == "0x10de" and klass.startswith("0x03"):
            return True
    return False


def test_no_gpu_real_this_machine() -> None:
    """real: the probe run on the machine running the tests (CI has no NVIDIA device on its PCI bus)."""
    diagnosis = diagnose(parse(run_local()))
    if _nvidia_gpu_here():
        assert "no-gpu" not in [f.id for f in diagnosis.findings]
        return
    assert [f.id for f in diagnosis.findings] == ["no-gpu"]
    assert diagnosis.findings[0].title == "no NVIDIA GPU on the PCI bus"
    assert diagnosis.notes == ("other checks skipped: no GPU",)
    assert os.path.isdir("/sys/bus/pci/devices")


def test_no_gpu_derived(h200: dict[str, Any]) -> None:
    """derived: the H200 host with its GPU gone from the bus, and with only an NVSwitch (class 0x0680) left."""
    h200["pci"] = []
    assert ids(h200) == ["no-gpu"]
    h200["pci"] = [{"slot": "0000:07:00.0", "vendor": "0x10de", "device": "0x22a3", "class": "0x068000"}]
    diagnosis: Diagnosis = diagnose(parse(h200))
    assert [f.id for f in diagnosis.findings] == ["no-gpu"]
    assert "0000:07:00.0 class 0x068000" in diagnosis.findings[0].evidence[0]


@pytest.mark.parametrize("driver", [None, "vfio-pci", "nouveau"])
def test_gpu_no_driver_derived(h200: dict[str, Any], driver: str | None) -> None:
    """derived: the GPU bound to no driver, to vfio-pci, to nouveau."""
    h200["pci"][0]["driver"] = driver
    found = finding(h200, "gpu-no-driver")
    assert found.evidence == (f"PCI {SLOT} (device 0x2335): driver {driver or 'none'}",)


def test_mismatch_nvml_error_derived(h200: dict[str, Any]) -> None:
    """derived: nvidia-smi's NVML error after a driver update without reboot (stdout, exit 18)."""
    h200["nvidia_smi"] = {"rc": 18, "out": "Failed to initialize NVML: Driver/library version mismatch\n", "err": ""}
    found = finding(h200, "driver-library-mismatch")
    assert found.severity == "error"
    assert found.evidence == (
        "nvidia-smi: Failed to initialize NVML: Driver/library version mismatch",
        "loaded kernel module: 580.159.04",
    )


def test_mismatch_versions_derived(h200: dict[str, Any]) -> None:
    """derived: NVML's library at 580.95.05 while the kernel runs 580.159.04."""
    derived_xml(h200, "<driver_version>580.159.04</driver_version>", "<driver_version>580.95.05</driver_version>")
    assert finding(h200, "driver-library-mismatch").evidence == (
        "NVML library: 580.95.05",
        "loaded kernel module: 580.159.04",
    )


def test_no_module_for_kernel_derived(h200: dict[str, Any]) -> None:
    derived_no_module(h200)
    assert ids(h200) == ["gpu-no-driver", "no-module-for-kernel"]
    found = finding(h200, "no-module-for-kernel")
    assert "kernels with the module: 6.8.0-49-generic" in found.evidence
    assert "dkms autoinstall -k 6.18.44-fc-v1252-gpu" in found.fix


def test_no_module_anywhere_derived(h200: dict[str, Any]) -> None:
    derived_no_module(h200)
    h200["lib_modules"] = {}
    assert finding(h200, "no-module-for-kernel").fix == "install the driver: devserver update HOST"


def test_nouveau_loaded_derived(h200: dict[str, Any]) -> None:
    """derived: nouveau in /proc/modules and bound to the GPU instead of nvidia."""
    derived_no_module(h200)
    h200["proc_modules"] = "nouveau 2760704 0 - Live 0xffffffffc0a00000\n"
    h200["pci"][0]["driver"] = "nouveau"
    assert "nouveau-loaded" in ids(h200)


def test_secure_boot_unsigned_derived(h200: dict[str, Any]) -> None:
    """derived: Secure Boot on (mokutil's words), `modinfo nvidia` showing no signer, the kernel log's rejection."""
    h200["secure_boot"] = {"efi": True, "mokutil": {"rc": 0, "out": "SecureBoot enabled\n", "err": ""}, "efivar": 1}
    module = "/lib/modules/6.18.44-fc-v1252-gpu/updates/dkms/nvidia.ko.zst"
    h200["modinfo"] = {"rc": 0, "out": f"filename:       {module}\nversion:        580.159.04\n", "err": ""}
    h200["kernel_log"] = {
        "source": "dmesg",
        "rc": 0,
        "err": "",
        "lines": [
            "[    4.1] Loading of unsigned module is rejected",
            "[    4.2] modprobe: Key was rejected by service",
        ],
    }
    found = finding(h200, "secure-boot-unsigned-module")
    assert f"{module} has no signature (modinfo: no signer)" in found.evidence
    assert "[    4.2] modprobe: Key was rejected by service" in found.evidence
    # the same module signed (DKMS's MOK): no finding
    h200["modinfo"]["out"] += "signer:         DKMS module signing key\n"
    h200["kernel_log"]["lines"] = []
    assert "secure-boot-unsigned-module" not in ids(h200)


def test_persistence_off_derived(h200: dict[str, Any]) -> None:
    derived_xml(h200, "<persistence_mode>Enabled</persistence_mode>", "<persistence_mode>Disabled</persistence_mode>")
    found = finding(h200, "persistence-off")
    assert found.severity == "warning"
    assert found.evidence == ("00000000:00:06.0 NVIDIA H200: persistence mode Disabled",)
    assert "nvidia-smi -pm 1" in found.fix  # that host has no systemd


NVSWITCHES = [
    {"slot": f"0000:0{n}:00.0", "vendor": "0x10de", "device": "0x22a3", "class": "0x068000", "driver": "nvidia"}
    for n in range(4)
]


def test_fabric_manager_missing_derived(h200: dict[str, Any]) -> None:
    """derived: four NVSwitches (H100/H200 HGX's device 0x22a3) beside the GPU, no fabric manager at all."""
    h200["pci"] += NVSWITCHES
    found = finding(h200, "fabric-manager-missing")
    assert found.evidence == ("4 NVSwitch(es) on the PCI bus",)


def test_fabric_manager_stopped_and_other_version_derived(h200: dict[str, Any]) -> None:
    """derived: NVSwitches, systemd, nvidia-fabricmanager-580 at 580.95.05 installed and its unit failed."""
    h200["pci"] += NVSWITCHES
    h200["init"] = "systemd"
    h200["dpkg"]["lines"].append("nvidia-fabricmanager-580 hold installed 580.95.05-1")
    h200["units"] = {
        "nvidia-fabricmanager": {"rc": 0, "out": "LoadState=loaded\nActiveState=failed\nUnitFileState=enabled\n"}
    }
    assert ids(h200) == ["fabric-manager-stopped", "fabric-manager-version"]
    assert finding(h200, "fabric-manager-version").evidence == (
        "nvidia-fabricmanager-580 580.95.05-1",
        "loaded driver 580.159.04",
    )
    h200["dpkg"]["lines"][-1] = "nvidia-fabricmanager-580 hold installed 580.159.04-1"
    h200["units"]["nvidia-fabricmanager"]["out"] = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n"
    assert ids(h200) == []


def test_runtime_without_nvidia_docker_derived(h200: dict[str, Any]) -> None:
    """derived: Docker's daemon answering with runc only."""
    h200["docker"] = {"rc": 0, "out": '{"runtimes": {"runc": {"path": "runc"}}, "default": "runc", "root": "/d"}'}
    found = finding(h200, "runtime-without-nvidia")
    assert found.evidence == ("docker runtimes: runc", "no CDI spec under /etc/cdi or /var/run/cdi")
    h200["docker"]["out"] = h200["docker"]["out"].replace('"runc": {', '"nvidia": {"path": "x"}, "runc": {')
    assert ids(h200) == []


def test_runtime_without_nvidia_containerd_real_and_derived(h200: dict[str, Any]) -> None:
    """real: the CI machine's containerd config (runc only); derived: with nvidia-ctk's runtime table."""
    h200["containerd_config"] = {"rc": 0, "out": (HERE / "real/ci-debian12/containerd-config-dump.toml").read_text()}
    assert finding(h200, "runtime-without-nvidia").evidence[0] == "containerd config dump: no runtimes.nvidia"
    h200["containerd_config"]["out"] = (HERE / "derived/containerd-config-nvidia.toml").read_text()
    assert ids(h200) == []


def test_docker_daemon_down_is_a_note_real(h200: dict[str, Any]) -> None:
    """real: the CI machine's `docker info` without a daemon: not a finding, a note."""
    h200["docker"] = {"rc": 1, "out": '{"runtimes": null, "default": "", "root": ""}\n', "err": "Cannot connect"}
    diagnosis = diagnose(parse(h200))
    assert diagnosis.findings == ()
    assert "docker is installed but its daemon did not answer: its runtimes not read" in diagnosis.notes


def test_container_no_gpu_derived(h200: dict[str, Any]) -> None:
    """derived: the container check through Docker failing as Docker does without the nvidia runtime, then passing
    with `nvidia-smi -L`'s line for that GPU."""
    h200["container_checks"] = {
        "docker": {
            "rc": 125,
            "out": "",
            "err": 'docker: Error response from daemon: could not select device driver "" with capabilities: '
            "[[gpu]].\n",
        }
    }
    assert "could not select device driver" in finding(h200, "container-no-gpu").evidence[0]
    h200["container_checks"]["docker"] = {
        "rc": 0,
        "out": "GPU 0: NVIDIA H200 (UUID: GPU-132d124b-a124-0705-8f6f-b72dc808800c)\n",
        "err": "",
    }
    assert ids(h200) == []


def test_ecc_uncorrectable_derived(h200: dict[str, Any]) -> None:
    volatile = "<volatile>\n\t\t\t\t<sram_correctable>0</sram_correctable>"
    derived_xml(h200, "<dram_uncorrectable>0</dram_uncorrectable>", "<dram_uncorrectable>2</dram_uncorrectable>")
    assert volatile in h200["nvidia_smi"]["out"]
    assert finding(h200, "ecc-uncorrectable").evidence == (
        "2 volatile uncorrectable ECC error(s) since the driver loaded",
    )


def test_row_remap_pending_and_failure_derived(h200: dict[str, Any]) -> None:
    derived_xml(
        h200, "<remapped_row_pending>No</remapped_row_pending>", "<remapped_row_pending>Yes</remapped_row_pending>"
    )
    assert ids(h200) == ["row-remap-pending"]
    derived_xml(
        h200, "<remapped_row_failure>No</remapped_row_failure>", "<remapped_row_failure>Yes</remapped_row_failure>"
    )
    assert ids(h200) == ["row-remap-failure"]


def test_xid_derived(h200: dict[str, Any]) -> None:
    """derived: the kernel log readable, with the driver's Xid lines for that GPU."""
    xid13 = "[ 812.5] NVRM: Xid (PCI:0000:00:06): 13, pid=4242, name=python3, Graphics SM Warp Exception"
    xid79 = "[ 901.1] NVRM: Xid (PCI:0000:00:06): 79, pid=0, GPU has fallen off the bus."
    h200["kernel_log"] = {"source": "dmesg", "rc": 0, "err": "", "lines": [xid13]}
    found = finding(h200, "xid-errors")
    assert (found.severity, found.evidence) == ("warning", (xid13,))
    h200["kernel_log"]["lines"].append(xid79)
    found = finding(h200, "xid-errors")
    assert found.severity == "error"
    assert found.title == "the driver reported Xid error(s) 13, 79 since boot"


def test_reboot_required_derived(h200: dict[str, Any]) -> None:
    """derived: the reboot marker present; then the module on disk newer than the loaded one."""
    h200["reboot_markers"] = ["/run/reboot-required"]
    assert finding(h200, "reboot-required").evidence == ("/run/reboot-required exists",)
    h200["reboot_markers"] = []
    h200["modinfo"] = {
        "rc": 0,
        "out": "filename:       /lib/modules/k/nvidia.ko\nversion:        580.200.01\nsigner:         x\n",
    }
    assert finding(h200, "reboot-required").evidence == (
        "loaded module 580.159.04, installed module 580.200.01 (/lib/modules/k/nvidia.ko)",
    )
