"""Disk assembly: a raw GPT disk image from a root filesystem folder, bootable under BIOS and UEFI, without loop
devices or mounts (so it works in containers and unprivileged CI, and an interrupted build leaves nothing mounted).

Layout (``sfdisk`` on the plain file):

====  ==========  =========  ===========================================================================
 #    start       size       what
====  ==========  =========  ===========================================================================
 1    1 MiB       1 MiB      BIOS boot partition: GRUB's core.img, loaded by boot.img in the MBR
 2    2 MiB       126 MiB    EFI system partition, FAT32 ``ESP``: ``/EFI/BOOT/BOOTX64.EFI`` (the removable path)
 3    128 MiB     the rest   ext4 ``rootfs``; last, so cloud-init's growpart can grow it on a bigger disk
====  ==========  =========  ===========================================================================

The root filesystem is made straight into the file with ``mkfs.ext4 -E offset=… -d ROOTFS`` (owners, modes,
setuid bits and xattrs kept); the ESP is a FAT image made with ``mkfs.vfat -C`` and mtools, then copied in. Both GRUB
images are made with the tree's own ``grub-mkimage`` (run in a chroot, so its modules match the tool) with every
module they need built in and an embedded config that finds the root filesystem by its UUID; they then read
``/boot/grub/grub.cfg`` from the root. ``grub-bios-setup`` refuses a plain file, so the MBR and core.img are patched
here exactly as it would (see :func:`_install_bios`).

``/boot/grub/grub.cfg`` (written into the tree) boots the newest ``/boot/vmlinuz-*`` with its initrd,
``root=LABEL=rootfs ro console=tty0 console=ttyS0,115200`` plus the words of the tree's ``/etc/kernel/cmdline`` if it
has one (where a role adds per-cloud kernel arguments).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from devserver.images.base import ROOT_LABEL, ImageBuildError, one_line

MIB = 1024 * 1024
GIB = 1024 * MIB
SECTOR = 512

BIOS_START = 1 * MIB
BIOS_SIZE = 1 * MIB
ESP_START = BIOS_START + BIOS_SIZE
ESP_SIZE = 126 * MIB
ROOT_START = ESP_START + ESP_SIZE
# Room after the root partition for the backup GPT (33 sectors), kept MiB-aligned.
TAIL = 1 * MIB

ESP_LABEL = "ESP"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

KERNEL_ARGS = ("ro", "console=tty0", "console=ttyS0,115200")

# Built into both GRUB images, so nothing has to be loaded from /boot/grub/<platform>/ (which the tree lacks).
_GRUB_MODULES = (
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "search_fs_uuid",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "gzio",
    "xzio",
    "zstd",
    "echo",
    "test",
    "ls",
    "cat",
    "minicmd",
    "serial",
    "terminal",
    "terminfo",
    "sleep",
    "reboot",
    "halt",
)
_GRUB_PLATFORM_MODULES = {
    "i386-pc": ("biosdisk",),
    "x86_64-efi": ("efi_gop", "all_video"),
}


@dataclass(frozen=True)
class DiskLayout:
    """Where things are in an assembled disk: byte offsets, the root filesystem's UUID, the boot modes it has."""

    size_bytes: int
    root_offset: int
    esp_offset: int
    root_uuid: str
    firmware: tuple[str, ...]


def default_size(rootfs: Path) -> int:
    """The rootfs's allocated size plus headroom (filesystem metadata, and at least 512 MiB free), plus the boot
    partitions, rounded up to a whole GiB (which also satisfies GCE's whole-GiB and Azure's whole-MiB rules)."""
    used = _du_bytes(rootfs)
    root = int(used * 1.10) + max(used // 4, 512 * MIB)
    return -(-(ROOT_START + root + TAIL) // GIB) * GIB


def assemble(rootfs: Path, out: Path, *, size_bytes: int | None = None) -> DiskLayout:
    """Write a raw GPT disk of `rootfs` to `out` (replaced atomically; sparse), bootable under BIOS and UEFI.

    Writes ``/boot/grub/grub.cfg`` into `rootfs` first. `size_bytes` defaults to :func:`default_size`; it must be a
    whole MiB. Raises :class:`ImageBuildError` when the tree has no kernel/initrd or no GRUB binaries, when the size
    is too small for the tree, or when a tool fails.
    """
    rootfs = Path(rootfs)
    out = Path(out)
    if not (rootfs / "etc").is_dir():
        raise ImageBuildError(str(rootfs), "is not a root filesystem (no etc/)", "give the folder of a built base")
    size = default_size(rootfs) if size_bytes is None else size_bytes
    if size % MIB:
        raise ImageBuildError("size_bytes", f"{size} is not a whole MiB", "round it up to a multiple of 1048576")
    if size < ROOT_START + TAIL + 64 * MIB:
        raise ImageBuildError("size_bytes", f"{size} leaves no room for the root filesystem", "give at least 1 GiB")
    for tool, package in (("sfdisk", "fdisk"), ("mkfs.ext4", "e2fsprogs"), ("mkfs.vfat", "dosfstools")):
        if shutil.which(tool) is None:
            raise ImageBuildError(tool, "is not installed", f"apt-get install {package} (scripts/bootstrap does)")
    if shutil.which("mcopy") is None:
        raise ImageBuildError("mcopy", "is not installed", "apt-get install mtools (scripts/bootstrap does)")
    for platform in _GRUB_PLATFORM_MODULES:
        if not (rootfs / "usr/lib/grub" / platform).is_dir():
            raise ImageBuildError(
                str(rootfs),
                f"has no GRUB {platform} binaries",
                "build it from a base (grub-pc-bin, grub-efi-amd64-bin)",
            )

    root_uuid = str(uuid.uuid4())
    root_size = size - ROOT_START - TAIL
    grub_dir = rootfs / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(grub_cfg(rootfs, root_uuid))

    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            handle.truncate(size)
        _partition(partial, root_size)
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                ROOT_LABEL,
                "-U",
                root_uuid,
                "-E",
                # The file is fresh, so all zeros already: no zeroing. Zeroing would leave unwritten extents, which
                # SEEK_DATA counts as data or not depending on the page cache (formats.allocated_bytes).
                f"offset={ROOT_START},nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                "-d",
                str(rootfs),
                str(partial),
                f"{root_size // 1024}k",
            ],
            fix="make the disk bigger (size_bytes) or the tree smaller",
        )
        with tempfile.TemporaryDirectory(prefix="grub-", dir=rootfs / "tmp") as tmp:
            work = Path(tmp)
            inner = Path("/") / work.relative_to(rootfs)
            (work / "early.cfg").write_text(
                f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n"
            )
            for platform, name in (("i386-pc", "core.img"), ("x86_64-efi", "BOOTX64.EFI")):
                _run(
                    [
                        "chroot",
                        str(rootfs),
                        "grub-mkimage",
                        "-O",
                        platform,
                        "-o",
                        str(inner / name),
                        "-c",
                        str(inner / "early.cfg"),
                        "-p",
                        "/boot/grub",
                        *_GRUB_MODULES,
                        *_GRUB_PLATFORM_MODULES[platform],
                    ],
                    fix="check the tree's grub-pc-bin / grub-efi-amd64-bin packages",
                )
            _install_bios(partial, (rootfs / "usr/lib/grub/i386-pc/boot.img").read_bytes(), (work / "core.img"))
            _install_esp(partial, work / "BOOTX64.EFI", work / "esp.img")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return DiskLayout(
        size_bytes=size,
        root_offset=ROOT_START,
        esp_offset=ESP_START,
        root_uuid=root_uuid,
        firmware=("bios", "uefi"),
    )


def grub_cfg(rootfs: Path, root_uuid: str) -> str:
    """The GRUB config booting the tree's newest kernel (serial and screen consoles both live)."""
    version = newest_kernel(rootfs)
    args = [f"root=LABEL={ROOT_LABEL}", *KERNEL_ARGS]
    extra = rootfs / "etc/kernel/cmdline"
    if extra.is_file():
        args += extra.read_text().split()
    return (
        "set default=0\n"
        "set timeout=1\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        f"menuentry 'Linux {version}' {{\n"
        f"    search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        f"    linux /boot/vmlinuz-{version} {' '.join(args)}\n"
        f"    initrd /boot/initrd.img-{version}\n"
        "}\n"
    )


def newest_kernel(rootfs: Path) -> str:
    """The newest kernel version in the tree's /boot that has an initrd (versions compared number by number)."""
    versions = [p.name.removeprefix("vmlinuz-") for p in (rootfs / "boot").glob("vmlinuz-*")]
    if not versions:
        raise ImageBuildError(str(rootfs / "boot"), "has no vmlinuz-*", "install a kernel in the tree")
    newest = max(versions, key=_version_key)
    if not (rootfs / "boot" / f"initrd.img-{newest}").is_file():
        raise ImageBuildError(
            str(rootfs / "boot"), f"has no initrd.img-{newest}", f"run update-initramfs -c -k {newest} in the tree"
        )
    return newest


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|[a-z]+", version))


def _partition(disk: Path, root_size: int) -> None:
    """Write the GPT (three partitions, see the module docstring) and check sfdisk put them where asked."""
    s = SECTOR
    script = (
        "label: gpt\n"
        "unit: sectors\n"
        f'start={BIOS_START // s}, size={BIOS_SIZE // s}, type={BIOS_BOOT_TYPE}, name="bios"\n'
        f'start={ESP_START // s}, size={ESP_SIZE // s}, type={ESP_TYPE}, name="esp"\n'
        f'start={ROOT_START // s}, size={root_size // s}, type={LINUX_FS_TYPE}, name="{ROOT_LABEL}"\n'
    )
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], input=script, fix="see the error")
    table = json.loads(_run(["sfdisk", "--json", str(disk)], fix="see the error"))["partitiontable"]
    got = [(p["start"] * s, p["size"] * s) for p in table["partitions"]]
    want = [(BIOS_START, BIOS_SIZE), (ESP_START, ESP_SIZE), (ROOT_START, root_size)]
    if got != want:
        raise ImageBuildError(str(disk), f"sfdisk wrote partitions {got}, not {want}", "report this as a bug")


def _install_bios(disk: Path, boot_img: bytes, core_path: Path) -> None:
    """What grub-bios-setup does for a GPT disk with a BIOS boot partition, done on the file.

    boot.img's code (bytes 0–0x1B7) goes into the MBR, keeping the protective partition table after it; boot.img
    is told where core.img starts (u64 LBA at 0x5C), to use the drive the BIOS booted from (0xFF at 0x64), and not
    to second-guess it (the drive check at 0x66 becomes two NOPs). core.img goes at the BIOS boot partition; its
    first sector (diskboot.img) ends with a blocklist, set to load the rest of core.img from the next sectors.
    """
    core = bytearray(core_path.read_bytes())
    if len(boot_img) != SECTOR:
        raise ImageBuildError("boot.img", f"is {len(boot_img)} bytes, not {SECTOR}", "reinstall grub-pc-bin")
    if len(core) > BIOS_SIZE:
        raise ImageBuildError("core.img", f"is {len(core)} bytes, over the BIOS boot partition", "report this")
    if len(core) % SECTOR:
        core += bytes(SECTOR - len(core) % SECTOR)
    core_lba = BIOS_START // SECTOR
    # struct grub_boot_blocklist {u64 start; u16 len; u16 segment} at the end of core.img's first sector;
    # segment 0x820: right after diskboot.img, which is loaded at 0x8000.
    struct.pack_into("<QHH", core, SECTOR - 12, core_lba + 1, len(core) // SECTOR - 1, 0x820)
    with disk.open("r+b") as handle:
        mbr = bytearray(handle.read(SECTOR))
        mbr[:0x1B8] = boot_img[:0x1B8]
        struct.pack_into("<Q", mbr, 0x5C, core_lba)
        mbr[0x64] = 0xFF
        mbr[0x66:0x68] = b"\x90\x90"
        handle.seek(0)
        handle.write(mbr)
        handle.seek(BIOS_START)
        handle.write(core)


def _install_esp(disk: Path, efi_binary: Path, esp_img: Path) -> None:
    """Make the FAT32 ESP as its own image, put GRUB at the removable-media path, and copy it into partition 2."""
    _run(
        ["mkfs.vfat", "-F", "32", "-S", str(SECTOR), "-n", ESP_LABEL, "-C", str(esp_img), str(ESP_SIZE // 1024)],
        fix="see the error",
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    _run(["mmd", "-i", str(esp_img), "::/EFI", "::/EFI/BOOT"], env=env, fix="see the error")
    _run(["mcopy", "-i", str(esp_img), str(efi_binary), "::/EFI/BOOT/BOOTX64.EFI"], env=env, fix="see the error")
    _copy_into(esp_img, disk, ESP_START)


def _copy_into(src: Path, disk: Path, offset: int, chunk: int = MIB) -> None:
    """Copy `src` into `disk` at `offset`, skipping all-zero chunks (the disk is sparse there, so they stay holes)."""
    zero = bytes(chunk)
    with src.open("rb") as inp, disk.open("r+b") as outp:
        pos = offset
        while block := inp.read(chunk):
            if block != zero[: len(block)]:
                outp.seek(pos)
                outp.write(block)
            pos += len(block)


def _du_bytes(path: Path) -> int:
    """Bytes allocated by a tree (hard links counted once), as du reports them."""
    out = _run(["du", "--summarize", "--block-size=1", "--one-file-system", str(path)], fix="see the error")
    return int(out.split()[0])


def _run(argv: list[str], *, fix: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, env=env)
    if proc.returncode != 0:
        raise ImageBuildError(argv[0], f"failed (exit {proc.returncode}): {one_line(proc.stderr)}", fix)
    return proc.stdout
