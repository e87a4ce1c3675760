"""What a host is, parsed from the probe's raw outputs (:mod:`devserver.hoststate.probe`).

:func:`parse` is pure: it takes the probe's JSON and returns :class:`Observed`, so every parser runs in unit tests on
outputs captured from real hosts. A value the host could not give is None (not read), never a guess; the kernel's
view (loaded module, PCI bus, NVML through nvidia-smi) stands beside the package manager's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from devserver.hoststate.probe import PROBE_VERSION, ProbeError
from devserver.hoststate.smi import Gpu as Gpu
from devserver.hoststate.smi import Smi as Smi
from devserver.hoststate.smi import parse_smi as parse_smi

NVIDIA_VENDOR = "0x10de"
# PCI class 0x03xxxx: display controllers (VGA, 3D); 0x0680xx: "other bridge", which is what NVSwitches are.
_GPU_CLASS = "0x03"
_NVSWITCH_CLASS = "0x0680"

Flavour = Literal["open", "proprietary"]


@dataclass(frozen=True)
class LoadedModule:
    """The NVIDIA kernel module the kernel runs (/proc/driver/nvidia/version)."""

    version: str
    flavour: Flavour


@dataclass(frozen=True)
class PciDevice:
    slot: str
    device_id: str  # "0x2335"
    pci_class: str  # "0x030200"
    driver: str | None  # the bound kernel driver, None when none is

    @property
    def is_gpu(self) -> bool:
        return self.pci_class.startswith(_GPU_CLASS)

    @property
    def is_nvswitch(self) -> bool:
        return self.pci_class.startswith(_NVSWITCH_CLASS)


@dataclass(frozen=True)
class Xid:
    """An `NVRM: Xid (PCI:…): <code>, …` kernel log line: the driver's GPU error report."""

    code: int
    pci: str
    line: str


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    held: bool


@dataclass(frozen=True)
class Unit:
    loaded: bool
    active: str  # systemd's ActiveState: active, inactive, failed…
    enabled: str  # systemd's UnitFileState: enabled, disabled, masked… ("" when not loaded)


@dataclass(frozen=True)
class Docker:
    running: bool  # the daemon answered `docker info`
    runtimes: tuple[str, ...]
    default_runtime: str
    root_dir: str


@dataclass(frozen=True)
class Containerd:
    running_config: bool  # `containerd config dump` answered
    nvidia_runtime: bool
    default_runtime: str


@dataclass(frozen=True)
class ContainerCheck:
    engine: str
    ok: bool
    output: str


@dataclass(frozen=True)
class Observed:
    os_id: str
    os_version: str
    os_pretty: str
    kernel: str
    lib_modules: dict[str, tuple[str, ...]]  # kernel → nvidia*.ko* files under /lib/modules/<kernel>
    module: LoadedModule | None
    sys_module_version: str | None
    loaded_modules: frozenset[str] | None  # None: /proc/modules not readable
    module_taints: dict[str, str]  # loaded module → its taint letters from /proc/modules, e.g. "OE"
    pci: tuple[PciDevice, ...]
    smi: Smi | None  # None: no nvidia-smi
    kernel_log_source: str | None  # "dmesg" or "journal"; None: not readable
    xids: tuple[Xid, ...]
    kernel_log: tuple[str, ...]
    secure_boot: bool | None  # None: unknown (no EFI, or neither mokutil nor efivars readable)
    module_file: str | None  # `modinfo nvidia`: the module the running kernel would load
    module_file_version: str | None
    module_signer: str | None
    dkms: dict[str, tuple[str, ...]]  # kernel → "module/version: status" entries of `dkms status`
    dkms_available: bool
    systemd: bool
    units: dict[str, Unit]
    processes: frozenset[str]
    docker: Docker | None  # None: no docker CLI
    daemon_json: dict[str, Any] | None
    containerd: Containerd | None  # None: no containerd
    cdi_specs: dict[str, str]  # path → the spec's `kind`
    packages: dict[str, Package]
    nvcc: str | None  # "release 13.0, V13.0.88" line of `nvcc --version`
    mounts: dict[str, str]  # mount point → device
    nouveau_blacklist: tuple[str, ...]
    reboot_markers: tuple[str, ...]
    container_checks: tuple[ContainerCheck, ...] = field(default=())

    @property
    def gpus_on_bus(self) -> tuple[PciDevice, ...]:
        return tuple(d for d in self.pci if d.is_gpu)

    @property
    def nvswitches(self) -> tuple[PciDevice, ...]:
        return tuple(d for d in self.pci if d.is_nvswitch)

    @property
    def kernels_installed(self) -> list[str]:
        """Kernels installed from packages (linux-image-<release>)."""
        return sorted(n.removeprefix("linux-image-") for n in self.packages if re.match(r"linux-image-\d", n))

    @property
    def driver_packages(self) -> dict[str, Package]:
        """The packages that carry the driver's version (not nvidia-kernel-common, CUDA's nvidia-* libraries…)."""
        return {n: p for n, p in self.packages.items() if _DRIVER_PACKAGE.match(n)}

    @property
    def nouveau_loaded(self) -> bool:
        return self.loaded_modules is not None and "nouveau" in self.loaded_modules

    @property
    def driver_source(self) -> Literal["packages", "loaded, not from packages", "none"]:
        """Where the driver comes from: dpkg packages, or a module loaded that no package installed."""
        if self.driver_packages:
            return "packages"
        return "none" if self.module is None else "loaded, not from packages"

    def package(self, *names: str) -> Package | None:
        """The first of `names` that is installed."""
        return next((self.packages[n] for n in names if n in self.packages), None)


_DRIVER_PACKAGE = re.compile(
    r"^(nvidia-driver|nvidia-driver-\d+(-server)?(-open)?|nvidia-kernel-dkms|nvidia-open-kernel-dkms"
    r"|nvidia-dkms-\d+(-server)?(-open)?|cuda-drivers(-\d+)?|nvidia-open(-\d+)?)$"
)


def parse(raw: dict[str, Any]) -> Observed:
    """Observed state from the probe's JSON; raises ProbeError for JSON of another probe version."""
    if raw.get("probe_version") != PROBE_VERSION:
        raise ProbeError(f"the probe's output is not version {PROBE_VERSION} of its JSON")
    os_release = parse_os_release(raw.get("os_release") or "")
    modules, taints = parse_proc_modules(raw.get("proc_modules"))
    log = raw.get("kernel_log") or {}
    lines = tuple(str(line) for line in log.get("lines", []))
    modinfo = parse_modinfo(_out(raw.get("modinfo")))
    dkms = raw.get("dkms")
    return Observed(
        os_id=os_release.get("ID", ""),
        os_version=os_release.get("VERSION_ID", ""),
        os_pretty=os_release.get("PRETTY_NAME", ""),
        kernel=str(raw.get("kernel", "")),
        lib_modules={k: tuple(v) for k, v in (raw.get("lib_modules") or {}).items()},
        module=parse_driver_version(raw.get("proc_driver_version")),
        sys_module_version=(raw.get("sys_module_version") or "").strip() or None,
        loaded_modules=modules,
        module_taints=taints,
        pci=parse_pci(raw.get("pci") or []),
        smi=None if raw.get("nvidia_smi") is None else parse_smi(raw["nvidia_smi"]),
        kernel_log_source=log.get("source"),
        xids=parse_xids(lines),
        kernel_log=lines,
        secure_boot=parse_secure_boot(raw.get("secure_boot") or {}),
        module_file=modinfo.get("filename"),
        module_file_version=modinfo.get("version"),
        module_signer=modinfo.get("signer") if modinfo else None,
        dkms=parse_dkms(_out(dkms)),
        dkms_available=dkms is not None,
        systemd=raw.get("init") == "systemd",
        units={name: parse_unit(_out(r)) for name, r in (raw.get("units") or {}).items()},
        processes=frozenset(raw.get("processes") or ()),
        docker=None if raw.get("docker") is None else parse_docker(raw["docker"]),
        daemon_json=_json_object(raw.get("daemon_json")),
        containerd=None if raw.get("containerd_config") is None else parse_containerd(raw["containerd_config"]),
        cdi_specs={path: parse_cdi_kind(text or "") for path, text in (raw.get("cdi") or {}).items()},
        packages=parse_dpkg((raw.get("dpkg") or {}).get("lines", [])),
        nvcc=parse_nvcc(_out(raw.get("nvcc"))),
        mounts=parse_mounts(raw.get("mounts") or ""),
        nouveau_blacklist=tuple(raw.get("nouveau_blacklist") or ()),
        reboot_markers=tuple(raw.get("reboot_markers") or ()),
        container_checks=tuple(
            ContainerCheck(engine, r["rc"] == 0 and "GPU " in r["out"], (r["out"] + r["err"]).strip()[-500:])
            for engine, r in sorted((raw.get("container_checks") or {}).items())
        ),
    )


def _out(result: dict[str, Any] | None) -> str:
    """stdout of a command the probe ran, "" when it did not run or failed."""
    if not result or result.get("rc") != 0:
        return ""
    return str(result.get("out", ""))


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_os_release(text: str) -> dict[str, str]:
    fields = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key: value.strip().strip('"') for key, value in fields}


_NVRM_RE = re.compile(
    r"NVRM version: NVIDIA (?P<kind>.*?Kernel Module)\s+(?:for \S+\s+)?(?P<version>\d+\.\d+(?:\.\d+)?)"
)


def parse_driver_version(text: str | None) -> LoadedModule | None:
    """/proc/driver/nvidia/version → version and flavour. The open modules say "NVIDIA UNIX Open Kernel Module",
    the proprietary ones "NVIDIA UNIX x86_64 Kernel Module" (or another architecture)."""
    if not text:
        return None
    match = _NVRM_RE.search(text)
    if match is None:
        return None
    flavour: Flavour = "open" if "Open Kernel Module" in match["kind"] else "proprietary"
    return LoadedModule(version=match["version"], flavour=flavour)


def parse_proc_modules(text: str | None) -> tuple[frozenset[str] | None, dict[str, str]]:
    """/proc/modules → loaded module names and each module's taint letters ("(OE)": out of tree, unsigned)."""
    if text is None:
        return None, {}
    names = set()
    taints = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        names.add(parts[0])
        flags = re.search(r"\(([A-Z]+)\)\s*$", line)
        if flags:
            taints[parts[0]] = flags[1]
    return frozenset(names), taints


def parse_pci(devices: list[dict[str, Any]]) -> tuple[PciDevice, ...]:
    return tuple(
        PciDevice(slot=d["slot"], device_id=d["device"], pci_class=d["class"], driver=d.get("driver"))
        for d in devices
        if d.get("vendor") == NVIDIA_VENDOR
    )


_XID_RE = re.compile(r"NVRM: Xid \((?P<pci>[^)]*)\): (?P<code>\d+)")


def parse_xids(lines: tuple[str, ...]) -> tuple[Xid, ...]:
    return tuple(
        Xid(code=int(m["code"]), pci=m["pci"].removeprefix("PCI:"), line=line.strip())
        for line in lines
        if (m := _XID_RE.search(line))
    )


def parse_secure_boot(raw: dict[str, Any]) -> bool | None:
    """Secure Boot from `mokutil --sb-state` ("SecureBoot enabled"/"disabled"), else the SecureBoot EFI variable's
    last byte; False on a machine that did not boot through EFI (no Secure Boot there); None when unknown."""
    mokutil = raw.get("mokutil")
    text = (str(mokutil.get("out", "")) + str(mokutil.get("err", ""))) if mokutil else ""
    if "SecureBoot enabled" in text:
        return True
    if "SecureBoot disabled" in text or "not supported" in text:
        return False
    if raw.get("efivar") is not None:
        return bool(raw["efivar"])
    if raw.get("efi") is False:
        return False
    return None


def parse_modinfo(text: str) -> dict[str, str]:
    """`modinfo nvidia`'s first value of each field (filename, version, signer…)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def parse_dkms(text: str) -> dict[str, tuple[str, ...]]:
    """`dkms status` → kernel → entries. Lines are "nvidia/535.247.01, 6.1.0-27-amd64, x86_64: installed" (dkms 3)
    or "nvidia-current, 535.247.01, 6.1.0-27-amd64, x86_64: installed" (dkms 2)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        head, sep, status = line.partition(":")
        parts = [p.strip() for p in head.split(",")]
        if not sep or len(parts) < 3:
            continue
        module = "/".join(parts[:-2])
        out.setdefault(parts[-2], []).append(f"{module}: {status.strip()}")
    return {kernel: tuple(entries) for kernel, entries in out.items()}


def parse_unit(text: str) -> Unit:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    loaded = fields.get("LoadState") == "loaded"
    return Unit(loaded=loaded, active=fields.get("ActiveState", ""), enabled=fields.get("UnitFileState", ""))


def parse_docker(result: dict[str, Any]) -> Docker:
    """`docker info` with the probe's format; a daemon that does not answer gives running=False."""
    try:
        info = json.loads(str(result.get("out", "")))
    except ValueError:
        info = {}
    running = result.get("rc") == 0 and isinstance(info, dict)
    runtimes = info.get("runtimes") if running else None
    return Docker(
        running=running,
        runtimes=tuple(sorted(runtimes)) if isinstance(runtimes, dict) else (),
        default_runtime=str(info.get("default") or "") if running else "",
        root_dir=str(info.get("root") or "") if running else "",
    )


def parse_containerd(result: dict[str, Any]) -> Containerd:
    """`containerd config dump` (TOML): is a runtime named nvidia registered, and which runtime is the default."""
    text = _out(result)
    default = re.search(r'^\s*default_runtime_name\s*=\s*"([^"]*)"', text, re.M)
    return Containerd(
        running_config=bool(text),
        nvidia_runtime=re.search(r"runtimes\.['\"]?nvidia['\"]?\]", text) is not None,
        default_runtime=default[1] if default else "",
    )


def parse_cdi_kind(text: str) -> str:
    match = re.search(r'^\s*"?kind"?\s*:\s*"?([^"\s,]+)', text, re.M)
    return match[1] if match else ""


def parse_dpkg(lines: list[str]) -> dict[str, Package]:
    """dpkg-query lines "<package> <want> <status> <version>" → the installed packages (held or not)."""
    packages = {}
    for line in lines:
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] == "installed":
            packages[parts[0]] = Package(name=parts[0], version=parts[3], held=parts[1] == "hold")
    return packages


def parse_nvcc(text: str) -> str | None:
    match = re.search(r"release \d+\.\d+, V\S+", text)
    return match[0] if match else None


def parse_mounts(text: str) -> dict[str, str]:
    mounts = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            # /proc/mounts escapes a space in a path as \040
            mounts[parts[1].replace("\\040", " ")] = parts[0]
    return mounts


def status_facts(have: Observed) -> dict[str, object]:
    """The facts `devserver status` shows (and prints as JSON), in its order: JSON values only."""
    module = have.module
    return {
        "os": have.os_pretty or f"{have.os_id} {have.os_version}",
        "kernel": have.kernel,
        "kernels_installed": have.kernels_installed,
        "driver": None if module is None else f"{module.version} ({module.flavour} kernel module)",
        "driver_source": have.driver_source,
        "driver_packages": {n: p.version for n, p in sorted(have.driver_packages.items())},
        "gpus": [
            {"name": g.name, "uuid": g.uuid, "pci": g.pci_bus_id, "device_id": g.pci_device_id}
            for g in (have.smi.gpus if have.smi is not None else ())
        ],
        "gpus_on_pci_bus": len(have.gpus_on_bus),
        "nvidia_smi_error": have.smi.error if have.smi is not None else "nvidia-smi not found",
        "cuda_driver_version": have.smi.cuda_version if have.smi is not None else None,
        "dkms": {kernel: list(entries) for kernel, entries in sorted(have.dkms.items())},
        "nouveau": "loaded" if have.nouveau_loaded else ("blacklisted" if have.nouveau_blacklist else "not loaded"),
        "persistence": _persistence_fact(have),
        "nvcc": have.nvcc,
        "toolkit": p.version if (p := have.package("nvidia-container-toolkit")) else None,
        "docker": p.version if (p := have.package("docker.io", "docker-ce")) else None,
        "containerd": p.version if (p := have.package("containerd", "containerd.io")) else None,
        "docker_runtimes": list(have.docker.runtimes) if have.docker is not None and have.docker.running else None,
        "containerd_nvidia": have.containerd.nvidia_runtime if have.containerd is not None else None,
        "cdi_specs": sorted(have.cdi_specs),
        "reboot_required": bool(have.reboot_markers),
    }


def _persistence_fact(have: Observed) -> str:
    unit = have.units.get("nvidia-persistenced")
    if unit is not None and unit.loaded:
        return f"nvidia-persistenced {unit.enabled}, {unit.active}"
    gpus = have.smi.gpus if have.smi is not None else ()
    if gpus:
        on = sum(g.persistence for g in gpus)
        return f"persistence mode on for {on} of {len(gpus)} GPU(s)"
    return "nvidia-persistenced running" if any(p.startswith("nvidia-persist") for p in have.processes) else "unknown"
