"""devserver.images.disk on the real base tree: the GPT read back by sfdisk, both filesystems found by blkid at their
offsets and checked by e2fsck/mtools, the BIOS boot code patched in place, and grub.cfg. (That the disk really
boots under BIOS and UEFI is tests/images/test_boot.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devserver.images import disk
from devserver.images.base import ImageBuildError

if TYPE_CHECKING:
    from conftest import BaseDisk

MIB = 1024 * 1024
GIB = 1024 * MIB


def _blkid(path: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "--probe", "--output", "export", "--offset", str(offset), str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_gpt_layout_read_back_by_sfdisk(base_disk: BaseDisk) -> None:
    layout = base_disk.layout
    assert layout.size_bytes == base_disk.path.stat().st_size == disk.default_size(base_disk.rootfs)
    assert layout.size_bytes % GIB == 0
    assert layout.firmware == ("bios", "uefi")
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(base_disk.path)], capture_output=True, check=True).stdout
    )
    table = table["partitiontable"]
    assert table["label"] == "gpt"
    parts = [(p["name"], p["type"], p["start"] * 512, p["size"] * 512) for p in table["partitions"]]
    root_size = layout.size_bytes - layout.root_offset - MIB
    assert parts == [
        ("bios", disk.BIOS_BOOT_TYPE, MIB, MIB),
        ("esp", disk.ESP_TYPE, layout.esp_offset, disk.ESP_SIZE),
        ("rootfs", disk.LINUX_FS_TYPE, layout.root_offset, root_size),
    ]
    assert table["lastlba"] * 512 >= layout.root_offset + root_size - 512  # the backup GPT fits after root
    # Sparse: the file holds the tree's data, not its virtual size.
    assert base_disk.path.stat().st_blocks * 512 < layout.size_bytes // 2


def test_root_filesystem_at_its_offset_is_clean_and_keeps_the_tree(base_disk: BaseDisk) -> None:
    layout = base_disk.layout
    probe = _blkid(base_disk.path, layout.root_offset)
    assert (probe["TYPE"], probe["LABEL"], probe["UUID"]) == ("ext4", "rootfs", layout.root_uuid)
    device = f"{base_disk.path}?offset={layout.root_offset}"
    fsck = subprocess.run(["e2fsck", "-f", "-n", device], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    debugfs = subprocess.run(
        ["debugfs", "-R", "stat /usr/bin/sudo", device], capture_output=True, text=True, check=True
    ).stdout
    assert "Mode:  04755" in debugfs
    assert "User:     0   Group:     0" in debugfs
    cat = subprocess.run(["debugfs", "-R", "cat /boot/grub/grub.cfg", device], capture_output=True, text=True).stdout
    assert cat == (base_disk.rootfs / "boot/grub/grub.cfg").read_text()
    assert f"--fs-uuid --set=root {layout.root_uuid}" in cat


def test_esp_is_fat32_with_grub_at_the_removable_path(base_disk: BaseDisk, tmp_path: Path) -> None:
    probe = _blkid(base_disk.path, base_disk.layout.esp_offset)
    assert (probe["TYPE"], probe["LABEL"], probe["VERSION"]) == ("vfat", "ESP", "FAT32")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = f"{base_disk.path}@@{base_disk.layout.esp_offset}"
    # fsck.vfat takes no offset: check a copy of the partition.
    esp = tmp_path / "esp.img"
    with base_disk.path.open("rb") as src, esp.open("wb") as dst:
        src.seek(base_disk.layout.esp_offset)
        dst.write(src.read(disk.ESP_SIZE))
    fsck = subprocess.run(["fsck.vfat", "-n", str(esp)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    listing = subprocess.run(["mdir", "-b", "-/", "-i", image, "::/"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI"]
    efi = subprocess.run(
        ["mtype", "-i", image, "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, env=env, check=True
    ).stdout
    pe = struct.unpack_from("<I", efi, 0x3C)[0]
    assert efi[:2] == b"MZ"
    assert efi[pe : pe + 4] == b"PE\0\0"
    assert struct.unpack_from("<H", efi, pe + 4)[0] == 0x8664  # x86-64


def test_bios_boot_code_is_patched_like_grub_bios_setup(base_disk: BaseDisk) -> None:
    boot_img = (base_disk.rootfs / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    with base_disk.path.open("rb") as handle:
        mbr = handle.read(512)
        handle.seek(MIB)
        core_head = handle.read(512)
    assert mbr[510:] == b"\x55\xaa"
    assert mbr[0x1C2] == 0xEE  # the protective MBR entry survived
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == MIB // 512
    assert mbr[0x64] == 0xFF
    assert mbr[0x66:0x68] == b"\x90\x90"
    untouched = [i for i in range(0x1B8) if not (0x5C <= i < 0x65 or 0x66 <= i < 0x68)]
    assert all(mbr[i] == boot_img[i] for i in untouched)
    start, sectors, segment = struct.unpack_from("<QHH", core_head, 512 - 12)
    assert (start, segment) == (MIB // 512 + 1, 0x820)
    assert 0 < sectors < MIB // 512


def test_grub_cfg_picks_the_newest_kernel_and_adds_the_trees_cmdline(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for version in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "5.10.0-30-amd64"):
        (tmp_path / "boot" / f"vmlinuz-{version}").touch()
        (tmp_path / "boot" / f"initrd.img-{version}").touch()
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("nvme_core.io_timeout=4294967295\n")
    cfg = disk.grub_cfg(tmp_path, "0a1b")
    assert (
        "    linux /boot/vmlinuz-6.1.0-10-cloud-amd64 root=LABEL=rootfs ro console=tty0 console=ttyS0,115200 "
        "nvme_core.io_timeout=4294967295\n    initrd /boot/initrd.img-6.1.0-10-cloud-amd64\n"
    ) in cfg
    (tmp_path / "boot/initrd.img-6.1.0-10-cloud-amd64").unlink()
    with pytest.raises(ImageBuildError, match=r"has no initrd.img-6.1.0-10-cloud-amd64 — fix: run update-initramfs"):
        disk.grub_cfg(tmp_path, "0a1b")


def test_bad_sizes_and_trees_are_clear_errors(base_disk: BaseDisk, tmp_path: Path) -> None:
    out = tmp_path / "d.raw"
    with pytest.raises(ImageBuildError, match=r"^size_bytes: 1073741825 is not a whole MiB"):
        disk.assemble(base_disk.rootfs, out, size_bytes=GIB + 1)
    with pytest.raises(ImageBuildError, match=r"^size_bytes: .* leaves no room"):
        disk.assemble(base_disk.rootfs, out, size_bytes=128 * MIB)
    # A tree with 96 MiB of data against the smallest allowed disk (a 64 MiB root): mkfs runs out of blocks.
    tree = tmp_path / "tree"
    for folder in ("etc", "boot", "tmp", "usr/lib/grub/i386-pc", "usr/lib/grub/x86_64-efi"):
        (tree / folder).mkdir(parents=True)
    (tree / "boot/vmlinuz-1.0").touch()
    (tree / "boot/initrd.img-1.0").touch()
    (tree / "data").write_bytes(os.urandom(96 * MIB))
    too_small = r"^mkfs.ext4: failed \(exit 1\): [^\n]*Could not allocate block[^\n]* — fix: make the disk bigger"
    with pytest.raises(ImageBuildError, match=too_small):
        disk.assemble(tree, out, size_bytes=disk.ROOT_START + disk.TAIL + 64 * MIB)
    shutil.rmtree(tree)
    with pytest.raises(ImageBuildError, match=r"is not a root filesystem"):
        disk.assemble(tmp_path, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    assert stat.S_ISDIR((base_disk.rootfs / "tmp").stat().st_mode)
    assert list((base_disk.rootfs / "tmp").iterdir()) == []  # grub-mkimage's scratch folder is gone
