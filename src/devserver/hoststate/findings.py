"""`devserver doctor`'s diagnosis: is the GPU usable, and if not, why and what to do (pure: observed → findings).

It needs no spec: each rule reads what the kernel, NVML and the package manager say. Without a GPU on the PCI bus
the diagnosis is that one finding; nothing else about a GPU stack means anything there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from devserver.hoststate.diff import _upstream
from devserver.hoststate.observed import Observed

Severity = Literal["error", "warning"]

# Xids that mean the GPU or its memory is failing or gone (NVIDIA's Xid catalogue,
# https://docs.nvidia.com/deploy/xid-errors/): fallen off the bus, double-bit ECC, row remapping failure, NVLink,
# uncorrectable contained/uncontained errors, GSP errors.
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: tuple[str, ...]
    fix: str


@dataclass(frozen=True)
class Diagnosis:
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]  # what could not be checked, and why

    @property
    def healthy(self) -> bool:
        return not self.findings


def summary(have: Observed) -> dict[str, str]:
    """The few facts a reader wants first: OS, kernel, GPUs, driver and where it comes from, CUDA."""
    gpus = have.smi.gpus if have.smi is not None else ()
    names = [g.name for g in gpus] or [f"PCI {d.slot} (device {d.device_id})" for d in have.gpus_on_bus]
    driver = "none loaded"
    if have.module is not None:
        driver = f"{have.module.version}, {have.module.flavour} kernel module, {have.driver_source}"
    cuda = have.smi.cuda_version if have.smi is not None and have.smi.cuda_version else "unknown"
    return {
        "os": have.os_pretty or f"{have.os_id} {have.os_version}",
        "kernel": have.kernel,
        "gpus": f"{len(names)}: " + ", ".join(names) if names else "none",
        "driver": driver,
        "cuda driver version": cuda,
        "nvcc": have.nvcc or "not found",
    }


def diagnose(have: Observed) -> Diagnosis:
    """Every finding about `have`, most fundamental first, and the checks that could not run."""
    notes: list[str] = []
    if not have.gpus_on_bus:
        others = [f"{d.slot} class {d.pci_class}" for d in have.pci]
        evidence = (
            f"NVIDIA PCI devices that are not GPUs: {', '.join(others)}"
            if others
            else "no PCI device of vendor 0x10de under /sys/bus/pci/devices",
        )
        finding = Finding(
            "no-gpu",
            "error",
            "no NVIDIA GPU on the PCI bus",
            evidence,
            "use a machine type with a GPU (or pass the GPU through to the VM); the other checks need one",
        )
        return Diagnosis((finding,), ("other checks skipped: no GPU",))
    findings = [
        *_unbound(have),
        *_mismatch(have),
        *_no_module(have),
        *_nouveau(have),
        *_secure_boot(have, notes),
        *_persistence(have),
        *_fabric_manager(have),
        *_runtimes(have, notes),
        *_containers(have, notes),
        *_memory(have),
        *_xids(have, notes),
        *_reboot(have),
    ]
    if have.smi is None:
        notes.append("nvidia-smi not found: NVML's view (GPUs, persistence, ECC) not read")
    return Diagnosis(tuple(findings), tuple(notes))


def _unbound(have: Observed) -> list[Finding]:
    unbound = [d for d in have.gpus_on_bus if d.driver != "nvidia"]
    if not unbound:
        return []
    return [
        Finding(
            "gpu-no-driver",
            "error",
            f"{len(unbound)} GPU(s) with no NVIDIA driver bound",
            tuple(f"PCI {d.slot} (device {d.device_id}): driver {d.driver or 'none'}" for d in unbound),
            "install the driver (devserver update HOST) and load it (sudo modprobe nvidia); a GPU bound to vfio-pci "
            "is passed through to a VM and is not this host's",
        )
    ]


def _mismatch(have: Observed) -> list[Finding]:
    smi = have.smi
    if smi is None:
        return []
    loaded = have.module.version if have.module is not None else None
    if smi.error is not None and "mismatch" in smi.error.lower():
        evidence = (f"nvidia-smi: {smi.error}", f"loaded kernel module: {loaded or 'none'}")
    elif loaded is not None and smi.driver_version is not None and smi.driver_version != loaded:
        evidence = (f"NVML library: {smi.driver_version}", f"loaded kernel module: {loaded}")
    else:
        return []
    return [
        Finding(
            "driver-library-mismatch",
            "error",
            "driver/library version mismatch: the loaded kernel module is not the installed driver's",
            evidence,
            "reboot to load the installed driver's module (or stop every GPU process and reload the nvidia modules)",
        )
    ]


def _no_module(have: Observed) -> list[Finding]:
    if have.module is not None or have.lib_modules.get(have.kernel):
        return []
    elsewhere = sorted(k for k, files in have.lib_modules.items() if files and k != have.kernel)
    dkms = sorted(k for k, entries in have.dkms.items() if any(e.endswith(": installed") for e in entries))
    evidence = [f"running kernel {have.kernel}: no nvidia module loaded or under /lib/modules/{have.kernel}"]
    if elsewhere or dkms:
        evidence.append(f"kernels with the module: {', '.join(sorted(set(elsewhere) | set(dkms)))}")
        fix = (
            f"build it for this kernel: sudo apt-get install linux-headers-{have.kernel} && "
            f"sudo dkms autoinstall -k {have.kernel} (devserver update does both)"
        )
    else:
        fix = "install the driver: devserver update HOST"
    return [Finding("no-module-for-kernel", "error", "no NVIDIA module for the running kernel", tuple(evidence), fix)]


def _nouveau(have: Observed) -> list[Finding]:
    if not have.nouveau_loaded:
        return []
    return [
        Finding(
            "nouveau-loaded",
            "error",
            "the nouveau driver is loaded and holds the GPU",
            ("nouveau in /proc/modules", f"blacklist: {', '.join(have.nouveau_blacklist) or 'none'}"),
            "blacklist it (echo 'blacklist nouveau' | sudo tee /etc/modprobe.d/blacklist-nouveau.conf), run "
            "sudo update-initramfs -u and reboot (devserver update writes the blacklist)",
        )
    ]


def _secure_boot(have: Observed, notes: list[str]) -> list[Finding]:
    if have.secure_boot is None:
        notes.append("Secure Boot state unknown (no mokutil, efivars not readable)")
        return []
    if not have.secure_boot:
        return []
    rejected = [line for line in have.kernel_log if "Key was rejected" in line or "verification failed" in line]
    unsigned_file = have.module_file is not None and not have.module_signer
    tainted = "E" in have.module_taints.get("nvidia", "")
    if not (rejected or unsigned_file or tainted):
        return []
    evidence = ["Secure Boot is enabled"]
    if unsigned_file:
        evidence.append(f"{have.module_file} has no signature (modinfo: no signer)")
    if tainted:
        evidence.append("the loaded nvidia module taints the kernel as unsigned (E in /proc/modules)")
    evidence += rejected[-3:]
    return [
        Finding(
            "secure-boot-unsigned-module",
            "error",
            "Secure Boot is on and the NVIDIA module is not signed by a key it trusts",
            tuple(evidence),
            "enroll DKMS's signing key (sudo mokutil --import /var/lib/dkms/mok.pub, then confirm at the next boot) "
            "and rebuild the module, or turn Secure Boot off in the firmware",
        )
    ]


def _persistence(have: Observed) -> list[Finding]:
    off = [g for g in (have.smi.gpus if have.smi is not None else ()) if not g.persistence]
    if not off:
        return []
    fix = (
        "sudo systemctl enable --now nvidia-persistenced"
        if have.systemd
        else "start nvidia-persistenced (no systemd here), or sudo nvidia-smi -pm 1"
    )
    return [
        Finding(
            "persistence-off",
            "warning",
            "persistence mode is off: every CUDA start pays the driver's initialisation",
            tuple(f"{g.pci_bus_id} {g.name}: persistence mode Disabled" for g in off),
            fix,
        )
    ]


def _fabric_manager(have: Observed) -> list[Finding]:
    if not have.nvswitches:
        return []
    switches = f"{len(have.nvswitches)} NVSwitch(es) on the PCI bus"
    package = next((p for n, p in sorted(have.packages.items()) if n.startswith("nvidia-fabricmanager")), None)
    unit = have.units.get("nvidia-fabricmanager")
    running = any(p.startswith("nv-fabricmanag") for p in have.processes)
    fix = "install nvidia-fabricmanager-<branch> at the driver's exact version and start it (devserver update does)"
    if package is None and not running and (unit is None or not unit.loaded):
        return [Finding("fabric-manager-missing", "error", "NVSwitch machine without fabric manager", (switches,), fix)]
    out = []
    if (unit is not None and unit.loaded and unit.active != "active") or (unit is None and not running):
        state = unit.active if unit is not None else "not running"
        out.append(
            Finding(
                "fabric-manager-stopped",
                "error",
                "fabric manager is not running: CUDA fails on NVSwitch machines without it",
                (switches, f"nvidia-fabricmanager: {state}"),
                "sudo systemctl enable --now nvidia-fabricmanager; its log says why it stopped",
            )
        )
    if package is not None and have.module is not None and _upstream(package.version) != have.module.version:
        out.append(
            Finding(
                "fabric-manager-version",
                "error",
                "fabric manager is at another version than the driver",
                (f"{package.name} {package.version}", f"loaded driver {have.module.version}"),
                fix,
            )
        )
    return out


def _runtimes(have: Observed, notes: list[str]) -> list[Finding]:
    out = []
    cdi = ", ".join(sorted(have.cdi_specs)) or "no CDI spec under /etc/cdi or /var/run/cdi"
    if have.docker is not None:
        if not have.docker.running:
            notes.append("docker is installed but its daemon did not answer: its runtimes not read")
        elif "nvidia" not in have.docker.runtimes:
            out.append(
                Finding(
                    "runtime-without-nvidia",
                    "warning",
                    "Docker has no nvidia runtime: containers get no GPU through --runtime=nvidia",
                    (f"docker runtimes: {', '.join(have.docker.runtimes) or 'none'}", cdi),
                    "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker "
                    "(devserver update with container_runtime: docker or both)",
                )
            )
    if have.containerd is not None and have.containerd.running_config and not have.containerd.nvidia_runtime:
        out.append(
            Finding(
                "runtime-without-nvidia",
                "warning",
                "containerd has no nvidia runtime: its containers (Kubernetes pods, nerdctl) get no GPU",
                ("containerd config dump: no runtimes.nvidia", cdi),
                "sudo nvidia-ctk runtime configure --runtime=containerd && sudo systemctl restart containerd "
                "(devserver update with container_runtime: containerd or both)",
            )
        )
    return out


def _containers(have: Observed, notes: list[str]) -> list[Finding]:
    if not have.container_checks:
        notes.append("no container was started: pass --container IMAGE to see a GPU from inside one")
    return [
        Finding(
            "container-no-gpu",
            "error",
            f"no GPU inside a {check.engine} container",
            (check.output or "no output",),
            "check the nvidia runtime registration (nvidia-ctk runtime configure) and the toolkit's log",
        )
        for check in have.container_checks
        if not check.ok
    ]


def _memory(have: Observed) -> list[Finding]:
    out = []
    for gpu in have.smi.gpus if have.smi is not None else ():
        if gpu.ecc_uncorrectable:
            out.append(
                Finding(
                    "ecc-uncorrectable",
                    "error",
                    f"{gpu.pci_bus_id} {gpu.name}: uncorrectable ECC errors",
                    (f"{gpu.ecc_uncorrectable} volatile uncorrectable ECC error(s) since the driver loaded",),
                    "drain the GPU, reset it (sudo nvidia-smi -r -i BUS_ID) or reboot; if they recur, replace it",
                )
            )
        if gpu.remapped_rows_failure:
            out.append(
                Finding(
                    "row-remap-failure",
                    "error",
                    f"{gpu.pci_bus_id} {gpu.name}: row remapping failed",
                    ("remapped_row_failure: Yes",),
                    "the GPU's memory is out of spare rows: have it replaced",
                )
            )
        elif gpu.remapped_rows_pending:
            out.append(
                Finding(
                    "row-remap-pending",
                    "warning",
                    f"{gpu.pci_bus_id} {gpu.name}: a row remap is pending",
                    ("remapped_row_pending: Yes",),
                    "reset the GPU (sudo nvidia-smi -r -i BUS_ID) or reboot to apply the remap",
                )
            )
    return out


def _xids(have: Observed, notes: list[str]) -> list[Finding]:
    if have.kernel_log_source is None:
        notes.append("kernel log not readable (dmesg, journal): Xid errors not checked (run as root)")
        return []
    if not have.xids:
        return []
    codes = sorted({x.code for x in have.xids})
    critical = [c for c in codes if c in CRITICAL_XIDS]
    return [
        Finding(
            "xid-errors",
            "error" if critical else "warning",
            f"the driver reported Xid error(s) {', '.join(map(str, codes))} since boot",
            tuple(x.line for x in have.xids[-5:]),
            "look each Xid up in https://docs.nvidia.com/deploy/xid-errors/ "
            + (
                "(79: the GPU fell off the bus; 48/94/95: memory errors): drain and reset or reboot"
                if critical
                else "(most are application faults: check the job that ran then)"
            ),
        )
    ]


def _reboot(have: Observed) -> list[Finding]:
    evidence = [f"{marker} exists" for marker in have.reboot_markers]
    loaded = have.module.version if have.module is not None else None
    if loaded is not None and have.module_file_version is not None and have.module_file_version != loaded:
        evidence.append(f"loaded module {loaded}, installed module {have.module_file_version} ({have.module_file})")
    installed = sorted({_upstream(p.version) for p in have.driver_packages.values()})
    if loaded is not None and installed and loaded not in installed:
        evidence.append(f"loaded module {loaded}, driver packages {', '.join(installed)}")
    if not evidence:
        return []
    return [
        Finding(
            "reboot-required",
            "warning",
            "a reboot is required (the installed driver or kernel is not the running one)",
            tuple(evidence),
            "reboot the host (software.reboot: true lets devserver update do it)",
        )
    ]
