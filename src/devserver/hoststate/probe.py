"""The one read-only probe of a host: a Python script that gathers raw outputs and prints them as one JSON object.

It runs with the host's own python3 (on every supported OS; Ansible needs it too), in one round trip: locally as a
subprocess (:func:`run_local`), or over SSH (:func:`devserver.remote.probe`, which sends :data:`SCRIPT` on stdin).
It parses nothing beyond filtering: every interpretation lives in :mod:`devserver.hoststate.observed`, on the
controller, where it is unit-tested on real outputs. The JSON's keys (see :data:`FIELDS`) are the probe's contract.

Read-only unless asked: with a container check (:func:`script_args`), it also starts one throwaway container per
engine to see a GPU from inside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from devserver.errors import DevserverError

# Bump when a key changes meaning; observed.parse() refuses other versions rather than misreading them.
PROBE_VERSION = 1

FIELDS = (
    "probe_version",
    "os_release",  # /etc/os-release, raw
    "kernel",  # uname -r
    "lib_modules",  # {kernel: [paths of nvidia*.ko* under /lib/modules/<kernel>]} for every kernel there
    "proc_driver_version",  # /proc/driver/nvidia/version (None: no NVIDIA module loaded)
    "sys_module_version",  # /sys/module/nvidia/version
    "proc_modules",  # /proc/modules
    "pci",  # [{slot, vendor, device, class, driver}] for every PCI device of vendor 0x10de
    "nvidia_smi",  # {rc, out, err} of `nvidia-smi -q -x`, None when there is no nvidia-smi
    "kernel_log",  # {source: dmesg|journal|None, rc, err, lines}: NVIDIA-related kernel log lines
    "secure_boot",  # {efi, mokutil: {rc, out, err} | None, efivar: last byte of SecureBoot-* | None}
    "modinfo",  # {rc, out, err} of `modinfo nvidia` (the module the running kernel would load)
    "dkms",  # {rc, out, err} of `dkms status`, None when there is no dkms
    "init",  # /proc/1/comm
    "units",  # {unit: {rc, out}} of `systemctl show` for the NVIDIA units (empty without systemd)
    "processes",  # comm of running NVIDIA daemons (persistenced, fabric manager)
    "docker",  # {rc, out, err} of `docker info` (runtimes, default runtime, root dir as JSON), None: no docker
    "daemon_json",  # /etc/docker/daemon.json
    "containerd_config",  # {rc, out, err} of `containerd config dump`, None: no containerd
    "cdi",  # {path: content} of the CDI specs under /etc/cdi and /var/run/cdi
    "dpkg",  # "<package> <want> <status> <version>" lines of the packages the GPU stack is made of
    "nvcc",  # {rc, out, err} of `nvcc --version`
    "mounts",  # /proc/mounts
    "nouveau_blacklist",  # ["file: line"] of `blacklist nouveau` lines in modprobe.d
    "reboot_markers",  # the reboot-required markers present
    "container_checks",  # {engine: {rc, out, err}}: only when asked
)

SCRIPT = r"""
import glob, json, os, re, shutil, subprocess, sys
env = dict(os.environ)
# where NVIDIA's tools live when they are not on root's PATH (a driver under /usr/local/nvidia, CUDA's nvcc)
env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/sbin:/sbin"
def which(name):
    return shutil.which(name, path=env["PATH"])
def run(argv, limit=400000):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, errors="replace")
        return {"rc": r.returncode, "out": r.stdout[-limit:], "err": r.stderr[-2000:]}
    except OSError as exc:
        return {"rc": 127, "out": "", "err": str(exc)}
    except subprocess.TimeoutExpired:
        return {"rc": 124, "out": "", "err": "timed out after 60 s"}
def tool(name, *args):
    return run([which(name)] + list(args)) if which(name) else None
def read(path, limit=400000):
    try:
        with open(path, errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None
args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
lib_modules = {}
for kdir in sorted(glob.glob("/lib/modules/*")):
    found = []
    for root, _dirs, files in os.walk(kdir):
        found += [os.path.join(root, f) for f in files if f.startswith("nvidia") and ".ko" in f]
    lib_modules[os.path.basename(kdir)] = sorted(found)
pci = []
for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
    if (read(dev + "/vendor") or "").strip() != "0x10de":
        continue
    driver = os.path.basename(os.path.realpath(dev + "/driver")) if os.path.exists(dev + "/driver") else None
    pci.append({"slot": os.path.basename(dev), "vendor": "0x10de", "device": (read(dev + "/device") or "").strip(),
                "class": (read(dev + "/class") or "").strip(), "driver": driver})
log_re = re.compile(r"NVRM|nvidia|nouveau|Xid|Lockdown|Key was rejected|module verification failed", re.I)
kernel_log = {"source": None, "rc": 127, "err": "no dmesg or journalctl", "lines": []}
for source, argv in (("dmesg", ["dmesg"]), ("journal", ["journalctl", "-k", "-b", "--no-pager", "-q"])):
    if not which(argv[0]):
        continue
    r = run([which(argv[0])] + argv[1:], limit=10000000)
    lines = [l for l in r["out"].splitlines() if log_re.search(l)]
    kernel_log = {"source": source if r["rc"] == 0 else None, "rc": r["rc"], "err": r["err"], "lines": lines[-500:]}
    if r["rc"] == 0:
        break
efivars = glob.glob("/sys/firmware/efi/efivars/SecureBoot-*")
efivar = None
if efivars:
    try:
        with open(efivars[0], "rb") as f:
            data = f.read()
        efivar = data[-1] if data else None
    except OSError:
        pass
init = (read("/proc/1/comm") or "").strip()
units = {}
if init == "systemd" and which("systemctl"):
    for unit in ("nvidia-persistenced", "nvidia-fabricmanager"):
        units[unit] = run([which("systemctl"), "show", unit, "-p", "LoadState", "-p", "ActiveState", "-p",
                           "UnitFileState"])
processes = []
for comm in glob.glob("/proc/[0-9]*/comm"):
    name = (read(comm) or "").strip()
    if name.startswith("nvidia-persist") or name.startswith("nv-fabricmanag"):
        processes.append(name)
cdi = {}
for path in sorted(glob.glob("/etc/cdi/*") + glob.glob("/var/run/cdi/*")):
    if path.endswith((".yaml", ".yml", ".json")):
        cdi[path] = read(path, 20000)
dpkg = None
if which("dpkg-query"):
    r = run([which("dpkg-query"), "-W", "-f", "${Package} ${db:Status-Want} ${db:Status-Status} ${Version}\n"])
    stack = re.compile(r"^(linux-image-|nvidia|libnvidia|cuda|docker|containerd|dkms |moby|runc )")
    dpkg = {"rc": r["rc"], "err": r["err"], "lines": [l for l in r["out"].splitlines() if stack.match(l)]}
blacklist = []
modprobe_d = glob.glob("/etc/modprobe.d/*") + glob.glob("/usr/lib/modprobe.d/*") + glob.glob("/lib/modprobe.d/*")
for path in sorted(modprobe_d):
    for line in (read(path) or "").splitlines():
        if re.match(r"\s*blacklist\s+nouveau\b", line):
            blacklist.append(path + ": " + line.strip())
docker_format = '{"runtimes": {{json .Runtimes}}, "default": {{json .DefaultRuntime}}, "root": {{json .DockerRootDir}}}'
checks = {}
image = args.get("container_image")
if image and which("docker"):
    checks["docker"] = run([which("docker"), "run", "--rm", "--runtime=nvidia", "--gpus", "all", image,
                            "nvidia-smi", "-L"])
if image and which("ctr") and "containerd" in args.get("engines", []):
    pull = run([which("ctr"), "image", "pull", image])
    checks["containerd"] = pull if pull["rc"] != 0 else run(
        [which("ctr"), "run", "--rm", "--gpus", "0", image, "devserver-doctor", "nvidia-smi", "-L"])
facts = {
    "probe_version": 1,
    "os_release": read("/etc/os-release"),
    "kernel": os.uname().release,
    "lib_modules": lib_modules,
    "proc_driver_version": read("/proc/driver/nvidia/version"),
    "sys_module_version": read("/sys/module/nvidia/version"),
    "proc_modules": read("/proc/modules"),
    "pci": pci,
    "nvidia_smi": tool("nvidia-smi", "-q", "-x"),
    "kernel_log": kernel_log,
    "secure_boot": {"efi": os.path.isdir("/sys/firmware/efi"), "mokutil": tool("mokutil", "--sb-state"),
                    "efivar": efivar},
    "modinfo": tool("modinfo", "nvidia"),
    "dkms": tool("dkms", "status"),
    "init": init,
    "units": units,
    "processes": sorted(processes),
    "docker": tool("docker", "info", "--format", docker_format),
    "daemon_json": read("/etc/docker/daemon.json"),
    "containerd_config": tool("containerd", "config", "dump"),
    "cdi": cdi,
    "dpkg": dpkg,
    "nvcc": tool("nvcc", "--version"),
    "mounts": read("/proc/mounts"),
    "nouveau_blacklist": blacklist,
    "reboot_markers": [p for p in ("/run/reboot-required", "/var/run/devserver/reboot-required") if os.path.exists(p)],
    "container_checks": checks,
}
print(json.dumps(facts))
"""


class ProbeError(DevserverError):
    """The probe did not run or did not print its JSON; the message says what it printed instead."""

    def __init__(self, message: str) -> None:
        super().__init__("host-state probe", message, "check that the host's python3 runs (python3 -c 'print(1)')")


def script_args(container_image: str | None = None, engines: Sequence[str] = ()) -> str:
    """The probe's one argument: JSON. With `container_image`, it runs `nvidia-smi -L` in a container of that image
    through each of `engines` (docker, containerd) that is installed."""
    return json.dumps({"container_image": container_image, "engines": list(engines)} if container_image else {})


def decode(stdout: str) -> dict[str, Any]:
    """The probe's JSON, checked to be a probe of this version; raises ProbeError otherwise."""
    try:
        raw = json.loads(stdout)
    except ValueError:
        raise ProbeError(f"the probe printed no JSON: {stdout.strip()[-300:]!r}") from None
    if not isinstance(raw, dict) or raw.get("probe_version") != PROBE_VERSION:
        raise ProbeError(f"the probe's output is not version {PROBE_VERSION} of its JSON")
    return raw


def run_local(args: str = "{}", *, python: str = sys.executable, timeout: float = 300) -> dict[str, Any]:
    """Run the probe on this machine as a subprocess (no SSH, no sudo: what the caller may read)."""
    try:
        result = subprocess.run(
            [python, "-", args], input=SCRIPT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"the probe did not run: {exc}") from None
    if result.returncode != 0:
        raise ProbeError(f"the probe failed (exit {result.returncode}): {result.stderr.strip()[-300:]}")
    return decode(result.stdout)
