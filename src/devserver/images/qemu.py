"""Boot a disk image locally under qemu and reach it over SSH, the way a cloud would first boot it.

A NoCloud seed (a FAT image labelled ``CIDATA`` with ``user-data`` and ``meta-data``) makes cloud-init create the
user with the SSH key(s) and passwordless sudo; user networking forwards a free port on 127.0.0.1 to the guest's
port 22. UEFI boots on q35 with OVMF (a private copy of its variable store); BIOS on qemu's default machine.

Contracts:

* :func:`detect_accel` answers ``kvm`` only when a KVM guest really runs here: it boots a 512-byte boot sector that
  writes to qemu's ``isa-debug-exit`` port, with the CPU model and SMP that :func:`boot` uses under KVM (``-cpu
  host``: a plain ``qemu64`` guest can run where a kernel on the host CPU model cannot, as under nested PVM, where
  qemu aborts setting the host's MSRs), and requires the exit code it sets within seconds. Before that it asks the
  kernel which KVM backend it runs (:func:`kvm_runs_stock_kernels`): nested PVM (``kvm_pvm`` without ``kvm_intel``
  or ``kvm_amd``) runs the probe's real-mode code but hangs a stock distribution kernel, so it means TCG.
  ``/dev/kvm`` existing is not taken as proof. The answer is cached for the process.
* :func:`boot` yields only once a real ``ssh … true`` has succeeded and cloud-init, where the image has it, says it
  is done (``cloud-init status --wait``: its later stages may restart sshd); if qemu exits first, or the timeout
  passes, it raises :class:`ImageBuildError` with the tail of the serial console. On leaving the block — normally,
  by an exception or by KeyboardInterrupt — qemu is killed and everything it made under `workdir` is removed.
  With ``snapshot=True`` (the default) writes go to a throw-away overlay and the disk file is left unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devserver.images.base import ImageBuildError, one_line

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SSH_PROBE_INTERVAL_S = 2.0
KVM_PROBE_TIMEOUT_S = 10.0

# x86 real mode: mov al,0x21; out 0xf4,al; hlt; jmp $-1 — qemu exits with (0x21 << 1) | 1 when it runs.
_PROBE_CODE = bytes.fromhex("b021e6f4f4ebfd")
_PROBE_EXIT = (0x21 << 1) | 1


@dataclass(frozen=True)
class BootedVM:
    """A running VM reachable over SSH at `host`:`port` as `user` with `private_key`."""

    host: str
    port: int
    user: str
    private_key: Path
    known_hosts: Path
    console_log: Path
    accel: str

    def ssh_options(self) -> list[str]:
        """ssh -o options that reach this VM non-interactively (its host key is pinned in `known_hosts`)."""
        return [
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh_argv(self, *cmd: str) -> list[str]:
        """The argv of ``ssh`` running `cmd` on the VM (an interactive shell if `cmd` is empty)."""
        return ["ssh", *self.ssh_options(), "-i", str(self.private_key), "-p", str(self.port),
                f"{self.user}@{self.host}", *cmd]  # fmt: skip


@functools.cache
def detect_accel() -> str:
    """``kvm`` if a KVM guest really runs on this machine, else ``tcg``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not kvm_runs_stock_kernels():
        return "tcg"
    return "kvm" if probe_accel("kvm") else "tcg"


def kvm_runs_stock_kernels(sys_module: Path = Path("/sys/module")) -> bool:
    """False when the kernel's only KVM backend is PVM (``kvm_pvm``: virtualization by page tables, for nested
    clouds without VMX/SVM), whose guests must run a PVM-enabled kernel: a stock Debian or Ubuntu kernel hangs there
    (seen on this project's test machines) although a real-mode probe runs. True with ``kvm_intel`` / ``kvm_amd``, or
    when no PVM backend is loaded (the boot-sector probe decides then)."""
    if (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists():
        return True
    return not (sys_module / "kvm_pvm").exists()


def probe_accel(accel: str) -> bool:
    """Boot the one-sector probe under `accel`; True if it ran to its exit code within the probe timeout."""
    with tempfile.TemporaryDirectory(prefix="devserver-accel-") as tmp:
        sector = Path(tmp) / "probe.img"
        sector.write_bytes(_PROBE_CODE + bytes(510 - len(_PROBE_CODE)) + b"\x55\xaa")
        argv = [
            QEMU, *_accel_args(accel), "-smp", "2", "-m", "64", "-nodefaults", "-display", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={sector},format=raw,if=ide",
        ]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=KVM_PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False
        except FileNotFoundError:
            raise _missing_qemu() from None
        return proc.returncode == _PROBE_EXIT


def qemu_argv(
    disk: Path,
    disk_format: str,
    *,
    firmware: str,
    accel: str,
    seed: Path,
    vars_file: Path | None,
    console_log: Path,
    port: int,
    cpus: int,
    memory_mb: int,
    snapshot: bool,
) -> list[str]:
    """The qemu command line :func:`boot` runs (virtio disk and NIC, serial console to a file, no display)."""
    argv = [
        QEMU, "-name", "devserver-image", *_accel_args(accel), "-smp", str(cpus), "-m", str(memory_mb),
        "-machine", "q35" if firmware == "uefi" else "pc",
        "-nodefaults", "-display", "none", "-vga", "none",
        "-chardev", f"file,id=console,path={console_log}", "-serial", "chardev:console",
        "-drive", f"file={disk},format={disk_format},if=virtio,snapshot={'on' if snapshot else 'off'}",
        "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip
    if firmware == "uefi":
        assert vars_file is not None
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
        ]  # fmt: skip
    return argv


def _accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


@contextlib.contextmanager
def boot(
    disk: Path,
    *,
    firmware: str,
    workdir: Path,
    user: str = "devserver",
    public_key: str | None = None,
    cpus: int = 2,
    memory_mb: int = 2048,
    timeout_s: float = 900,
    snapshot: bool = True,
) -> Iterator[BootedVM]:
    """Boot `disk` (raw, qcow2, VHD or VMDK) under `firmware` ('bios' | 'uefi') and yield it once SSH answers.

    A fresh ed25519 key is made for the VM; `public_key`, if given, is authorised too (for the caller's own
    key). Everything lives in a private folder under `workdir`, removed on exit with qemu killed.
    """
    disk = Path(disk)
    if firmware not in ("bios", "uefi"):
        raise ImageBuildError(f"firmware {firmware!r}", "is not a boot mode", "use bios or uefi")
    if not disk.is_file():
        raise ImageBuildError(str(disk), "does not exist", "give the path of a built disk image")
    if shutil.which(QEMU) is None:
        raise _missing_qemu()
    if firmware == "uefi" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise ImageBuildError(str(OVMF_CODE), "is missing: UEFI boot needs OVMF", "apt-get install ovmf")
    disk_format = _disk_format(disk)
    accel = detect_accel()
    workdir.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="vm-", dir=workdir))
    proc: subprocess.Popen[bytes] | None = None
    try:
        key = run / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "devserver-image-boot", "-f", str(key)],
            check=True, capture_output=True,
        )  # fmt: skip
        keys = [key.with_suffix(".pub").read_text().strip()]
        if public_key:
            keys.append(public_key.strip())
        seed = run / "seed.img"
        _write_seed(seed, run, user, keys)
        vars_file = None
        if firmware == "uefi":
            vars_file = run / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_file)
        console_log = run / "console.log"
        known_hosts = run / "known_hosts"
        port = _free_port()
        argv = qemu_argv(
            disk, disk_format, firmware=firmware, accel=accel, seed=seed, vars_file=vars_file,
            console_log=console_log, port=port, cpus=cpus, memory_mb=memory_mb, snapshot=snapshot,
        )  # fmt: skip
        stderr_log = run / "qemu.stderr"
        with stderr_log.open("wb") as err:
            # Own session: a Ctrl-C in the terminal reaches only us, and the finally below stops qemu in order.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        vm = BootedVM("127.0.0.1", port, user, key, known_hosts, console_log, accel)
        _wait_for_ssh(vm, proc, stderr_log, timeout_s)
        yield vm
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(run, ignore_errors=True)


def _wait_for_ssh(vm: BootedVM, proc: subprocess.Popen[bytes], stderr_log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise ImageBuildError(
                "qemu",
                f"exited ({code}) before SSH answered: {_tail(stderr_log, 5)}\nconsole:\n{_tail(vm.console_log)}",
                "read the console output above",
            )
        try:
            probe = subprocess.run(vm.ssh_argv("true"), capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
            if probe.returncode == 0:
                # Seen once under TCG: the caller's connection just after this first login was reset while
                # reading sshd's banner, cloud-init's later stages (which may restart sshd) still running. Its exit
                # code is ignored (2: done, with recoverable errors; 127: no cloud-init); ssh's own 255 means the
                # connection went: probe again.
                left = max(1.0, deadline - time.monotonic())
                argv = vm.ssh_argv("cloud-init status --wait >/dev/null 2>&1; true")
                probe = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=left)
                if probe.returncode == 0:
                    return
        except subprocess.TimeoutExpired:  # sshd accepted but stalled (still starting under emulation): retry
            last = "ssh timed out"
        else:
            last = probe.stderr.decode(errors="replace").strip()[-200:]
        if time.monotonic() > deadline:
            raise ImageBuildError(
                f"{vm.user}@{vm.host}:{vm.port}",
                f"no SSH after {timeout_s:.0f} s under {vm.accel} (last: {last})\nconsole:\n{_tail(vm.console_log)}",
                "read the console output above; under TCG allow more time (timeout_s)",
            )
        time.sleep(SSH_PROBE_INTERVAL_S)


def _write_seed(seed: Path, run: Path, user: str, keys: list[str]) -> None:
    """A NoCloud seed: a FAT image labelled CIDATA holding user-data and meta-data (JSON is valid YAML)."""
    user_data = {
        "users": [
            {
                "name": user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": keys,
            }
        ],
        "ssh_pwauth": False,
    }
    meta_data = {"instance-id": f"iid-devserver-{secrets.token_hex(6)}", "local-hostname": "devserver-image"}
    (run / "user-data").write_text("#cloud-config\n" + json.dumps(user_data, indent=2) + "\n")
    (run / "meta-data").write_text(json.dumps(meta_data) + "\n")
    _run(["mkfs.vfat", "-n", "CIDATA", "-C", str(seed), "2048"])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    _run(["mcopy", "-i", str(seed), str(run / "user-data"), str(run / "meta-data"), "::/"], env=env)


def _disk_format(disk: Path) -> str:
    proc = _run(["qemu-img", "info", "--output=json", str(disk)])
    fmt = str(json.loads(proc)["format"])
    if fmt not in ("raw", "qcow2", "vpc", "vmdk"):
        raise ImageBuildError(str(disk), f"is a {fmt} image, which this cannot boot", "give a raw or qcow2 disk")
    return fmt


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (qemu binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM qemu, then SIGKILL if it has not gone within 10 s; always reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _missing_qemu() -> ImageBuildError:
    return ImageBuildError(QEMU, "is not installed", "apt-get install qemu-system-x86 (scripts/bootstrap does)")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError as exc:
        return f"<{path.name}: {exc.strerror}>"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImageBuildError(argv[0], f"failed (exit {proc.returncode}): {one_line(proc.stderr)}", "see above")
    return proc.stdout
