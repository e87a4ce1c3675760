"""devserver.images.qemu: the base disk booted for real (TCG here, KVM where it works) under BIOS and UEFI, reached
over SSH through cloud-init's NoCloud user, and cleaned up afterwards — also when the block is left by Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devserver.images import qemu
from devserver.images.base import ImageBuildError

if TYPE_CHECKING:
    from conftest import BaseDisk

GIB = 1024**3

# Run on the VM as the injected user: facts read back as JSON.
PROBE = r"""
set -e
fw=bios; [ -d /sys/firmware/efi ] && fw=uefi
keys=$(ls /etc/ssh/ssh_host_*_key | wc -l)
root=$(df --output=size -B1 / | tail -1 | tr -d ' ')
cloud-init status --wait >/dev/null || true
status=$(cloud-init status --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
printf '{"firmware":"%s","kernel":"%s","cmdline":"%s","sudo":"%s","host_keys":%s,"root_bytes":%s,"cloud_init":"%s"}\n' \
  "$fw" "$(uname -r)" "$(cat /proc/cmdline)" "$(sudo -n id -un)" "$keys" "$root" "$status"
"""


def _qemu_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_accel_is_kvm_only_when_a_kvm_guest_really_runs() -> None:
    assert qemu.probe_accel("tcg")  # the probe's guest code really runs and exits with its code
    kvm_works = os.access("/dev/kvm", os.R_OK | os.W_OK) and qemu.kvm_runs_stock_kernels() and qemu.probe_accel("kvm")
    assert qemu.detect_accel() == ("kvm" if kvm_works else "tcg")


@pytest.mark.parametrize(
    ("modules", "stock"),
    [
        ({"kvm", "kvm_pvm"}, False),  # nested PVM: the boot sector runs, a distribution kernel hangs
        ({"kvm", "kvm_intel"}, True),
        ({"kvm", "kvm_amd", "kvm_pvm"}, True),
        ({"kvm"}, True),  # no PVM backend: the boot-sector probe decides
        (set(), True),
    ],
)
def test_pvm_alone_does_not_count_as_kvm(tmp_path: Path, modules: set[str], stock: bool) -> None:
    for name in modules:
        (tmp_path / name).mkdir()
    assert qemu.kvm_runs_stock_kernels(tmp_path) is stock


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_base_disk_boots_to_ssh_through_cloud_init(base_disk: BaseDisk, firmware: str, tmp_path: Path) -> None:
    disk = base_disk.path
    workdir = tmp_path / "vms"
    before = disk.stat()
    target = disk
    if firmware == "uefi":
        # A bigger virtual disk over the raw one: cloud-init's growpart/resizefs must grow the root to fill it.
        target = tmp_path / "bigger.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk), str(target), str(4 * GIB)],
            check=True,
        )
    interrupted = firmware == "bios"  # one of the two leaves the block the way Ctrl-C does
    expect = pytest.raises(KeyboardInterrupt) if interrupted else contextlib.nullcontext()
    with expect, qemu.boot(target, firmware=firmware, workdir=workdir, timeout_s=900) as vm:
        assert _qemu_processes(str(workdir))
        proc = subprocess.run(vm.ssh_argv("sh", "-c", PROBE), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        facts = json.loads(proc.stdout)
        assert facts["firmware"] == firmware
        assert facts["sudo"] == "root"
        assert facts["cloud_init"] == "done"
        assert facts["host_keys"] >= 1  # made at first boot: the base has none
        assert facts["kernel"].endswith("-cloud-amd64")
        assert f"BOOT_IMAGE=/boot/vmlinuz-{facts['kernel']} root=LABEL=rootfs ro" in facts["cmdline"]
        assert "console=ttyS0,115200" in facts["cmdline"]
        if firmware == "uefi":
            assert facts["root_bytes"] > 3 * GIB
        else:
            assert facts["root_bytes"] < 2 * GIB
        assert vm.console_log.is_file()
        assert vm.accel == qemu.detect_accel()
        if interrupted:
            raise KeyboardInterrupt
    assert _qemu_processes(str(workdir)) == []
    assert list(workdir.iterdir()) == []  # key, seed, OVMF vars, logs: all gone
    after = disk.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)  # snapshot: disk untouched


def test_qemu_dying_early_is_reported_with_its_error(base_disk: BaseDisk, tmp_path: Path) -> None:
    with (
        pytest.raises(ImageBuildError, match=r"^qemu: exited \(1\) before SSH answered: .*"),
        qemu.boot(base_disk.path, firmware="bios", workdir=tmp_path, memory_mb=10**9, timeout_s=60),
    ):
        pytest.fail("the block must not run")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match=r"^firmware 'efi': is not a boot mode — fix: use bios or uefi"):
        qemu.boot(tmp_path / "x.raw", firmware="efi", workdir=tmp_path).__enter__()
    with pytest.raises(ImageBuildError, match=r"x.raw: does not exist"):
        qemu.boot(tmp_path / "x.raw", firmware="bios", workdir=tmp_path).__enter__()
