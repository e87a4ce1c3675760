"""Disk formats: turn an assembled raw disk into each file a target's upload takes, and check every file written.

Which files a target gets is :data:`devserver.images.artifact.TARGET_FORMATS`. Every file is written under a
temporary name, checked, and only then renamed into place; a check that fails raises :class:`ImageBuildError` and
leaves no file under the final name. The checks:

* ``raw``: ``qemu-img compare`` with the source disk (a copy, unless it *is* the source);
* ``qcow2``: ``qemu-img check``, ``qemu-img info`` (format, virtual size) and ``qemu-img compare`` with the raw disk;
* ``vmdk-stream``: ``qemu-img info`` (format, ``create-type: streamOptimized``, virtual size) and ``compare``;
* ``vhd-fixed``: the 512-byte footer parsed (:func:`check_vhd`: cookie ``conectix``, fixed disk type, current size
  equal to the raw size and a whole MiB, file size = data + footer, checksum), then ``qemu-img compare -F vpc``;
* ``gce-tar``: the tar's layout (:func:`check_gce_tar`: exactly one member ``disk.raw``, GNU ``oldgnu`` header,
  stored sparse, its size the raw size and a whole GiB).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devserver.images.artifact import TARGET_FORMATS, DiskFile, DiskFormat
from devserver.images.base import ImageBuildError, one_line

MIB = 1024 * 1024
GIB = 1024 * MIB
VHD_FOOTER = 512
VHD_COOKIE = b"conectix"
VHD_FIXED = 2
GCE_MEMBER = "disk.raw"

_FIX = "rebuild the image; if it happens again, report it with the qemu-img version"


def allocated_bytes(raw: Path) -> int:
    """Bytes of `raw` inside data extents (SEEK_DATA/SEEK_HOLE): what a sparse-aware upload has to send.

    The file is synced first: before writeback a filesystem may report delayed-allocation ranges differently.
    """
    total = 0
    with Path(raw).open("rb") as handle:
        fd = handle.fileno()
        os.fsync(fd)
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            total += stop - start
            pos = stop
    return total


def write_formats(raw: Path, target: str, folder: Path) -> list[DiskFile]:
    """Write `target`'s disk files for the raw disk `raw` into `folder`, each checked; return them in upload order.

    `raw` may itself be ``folder/disk.raw`` (the AWS raw file is then used as is, after its own check).
    """
    raw = Path(raw)
    folder = Path(folder)
    if target not in TARGET_FORMATS:
        raise ImageBuildError(f"target {target!r}", "has no disk formats", f"use one of {', '.join(TARGET_FORMATS)}")
    if shutil.which("qemu-img") is None:
        raise ImageBuildError("qemu-img", "is not installed", "apt-get install qemu-utils (scripts/bootstrap does)")
    size = raw.stat().st_size
    allocated = allocated_bytes(raw)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt, name in TARGET_FORMATS[target]:
        dest = folder / name
        if fmt == "raw" and dest.exists() and dest.samefile(raw):
            check_format("raw", dest, raw)
        else:
            partial = folder / f".{name}.partial"
            try:
                _WRITERS[fmt](raw, partial)
                check_format(fmt, partial, raw)
                partial.replace(dest)
            finally:
                partial.unlink(missing_ok=True)
        files.append(
            DiskFile(
                path=name,
                format=fmt,
                virtual_size=size,
                allocated=allocated,
                file_size=dest.stat().st_size,
                sha256=sha256_file(dest),
            )
        )
    return files


def check_format(fmt: DiskFormat, path: Path, raw: Path) -> None:
    """Check that `path` is a well-formed `fmt` file holding exactly the disk `raw`; raise ImageBuildError if not."""
    size = raw.stat().st_size
    if fmt == "raw":
        _compare(raw, path, "raw")
    elif fmt == "qcow2":
        _qemu_img("check", "-f", "qcow2", str(path))
        _expect_info(path, "qcow2", size)
        _compare(raw, path, "qcow2")
    elif fmt == "vmdk-stream":
        info = _expect_info(path, "vmdk", size)
        create_type = info.get("format-specific", {}).get("data", {}).get("create-type")
        if create_type != "streamOptimized":
            raise ImageBuildError(str(path), f"is a {create_type} VMDK, not streamOptimized", _FIX)
        _compare(raw, path, "vmdk")
    elif fmt == "vhd-fixed":
        check_vhd(path, size)
        _compare(raw, path, "vpc")
    elif fmt == "gce-tar":
        check_gce_tar(path, size)


def check_vhd(path: Path, raw_size: int) -> None:
    """Check a fixed VHD's footer (the file's last 512 bytes) against the raw disk size it must carry."""
    file_size = path.stat().st_size
    if file_size != raw_size + VHD_FOOTER:
        raise ImageBuildError(str(path), f"is {file_size} bytes, not the raw {raw_size} + a 512-byte footer", _FIX)
    with path.open("rb") as handle:
        handle.seek(-VHD_FOOTER, os.SEEK_END)
        footer = handle.read(VHD_FOOTER)
    if footer[:8] != VHD_COOKIE:
        raise ImageBuildError(str(path), f"footer cookie is {footer[:8]!r}, not {VHD_COOKIE!r}", _FIX)
    current_size, disk_type, checksum = struct.unpack_from(">Q", footer, 48)[0], *struct.unpack_from(">II", footer, 60)
    if disk_type != VHD_FIXED:
        raise ImageBuildError(str(path), f"footer disk type is {disk_type}, not 2 (fixed)", _FIX)
    if current_size != raw_size:
        raise ImageBuildError(str(path), f"footer current size is {current_size}, not the raw {raw_size}", _FIX)
    if current_size % MIB:
        raise ImageBuildError(str(path), f"virtual size {current_size} is not a whole MiB (Azure refuses it)", _FIX)
    expected = vhd_checksum(footer)
    if checksum != expected:
        raise ImageBuildError(str(path), f"footer checksum is {checksum:#010x}, not {expected:#010x}", _FIX)


def vhd_checksum(footer: bytes) -> int:
    """The VHD footer checksum: ones' complement of the byte sum with the checksum field (64–67) taken as zero."""
    return ~(sum(footer[:64]) + sum(footer[68:VHD_FOOTER])) & 0xFFFFFFFF


def check_gce_tar(path: Path, raw_size: int) -> None:
    """Check GCE's image tarball: one member ``disk.raw`` in an oldgnu header, stored sparse, of a whole GiB."""
    if raw_size % GIB:
        raise ImageBuildError(str(path), f"disk size {raw_size} is not a whole GiB (GCE refuses it)", _FIX)
    with gzip.open(path, "rb") as stream:
        header = stream.read(512)
    if header[257:265] != b"ustar  \x00":
        raise ImageBuildError(str(path), "first header is not in GNU oldgnu format", _FIX)
    if header[156:157] != b"S":  # GNUTYPE_SPARSE; checked here so a dense tar fails before a full read
        raise ImageBuildError(str(path), f"{GCE_MEMBER} is not stored sparse", _FIX)
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    if names != [GCE_MEMBER]:
        raise ImageBuildError(str(path), f"holds {names}, not exactly [{GCE_MEMBER!r}]", _FIX)
    member = members[0]
    if member.size != raw_size:
        raise ImageBuildError(str(path), f"{GCE_MEMBER} is {member.size} bytes, not {raw_size}", _FIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _write_raw(raw: Path, out: Path) -> None:
    _tool(["cp", "--sparse=always", "--reflink=auto", str(raw), str(out)])


def _write_qcow2(raw: Path, out: Path) -> None:
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(out))


def _write_vmdk(raw: Path, out: Path) -> None:
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(out))


def _write_vhd(raw: Path, out: Path) -> None:
    size = raw.stat().st_size
    if size % MIB:
        raise ImageBuildError(str(raw), f"is {size} bytes, not a whole MiB (Azure's rule)", "assemble a MiB-sized disk")
    # force_size: keep the exact byte size instead of rounding to a CHS geometry.
    _qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", str(raw), str(out))


def _write_gce_tar(raw: Path, out: Path) -> None:
    size = raw.stat().st_size
    if size % GIB:
        raise ImageBuildError(str(raw), f"is {size} bytes, not a whole GiB (GCE's rule)", "assemble a GiB-sized disk")
    compress = ["--use-compress-program=pigz"] if shutil.which("pigz") else ["--gzip"]
    _tool(
        [
            "tar",
            "--format=oldgnu",
            "--sparse",
            *compress,
            "--create",
            "--file",
            str(out),
            "--directory",
            str(raw.parent),
            f"--transform=s|.*|{GCE_MEMBER}|",
            raw.name,
        ]
    )


_WRITERS: dict[DiskFormat, Callable[[Path, Path], None]] = {
    "raw": _write_raw,
    "qcow2": _write_qcow2,
    "vmdk-stream": _write_vmdk,
    "vhd-fixed": _write_vhd,
    "gce-tar": _write_gce_tar,
}


def _expect_info(path: Path, fmt: str, size: int) -> dict[str, Any]:
    """qemu-img's JSON description of `path`, after checking it reads as `fmt` of `size` bytes."""
    info: dict[str, Any] = json.loads(_qemu_img("info", "--output=json", "-f", fmt, str(path)))
    if info.get("format") != fmt or info.get("virtual-size") != size:
        raise ImageBuildError(
            str(path), f"qemu-img reads it as {info.get('format')} of {info.get('virtual-size')} bytes", _FIX
        )
    return info


def _compare(raw: Path, path: Path, fmt: str) -> None:
    proc = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt, str(raw), str(path)], capture_output=True, text=True
    )
    if proc.returncode == 1:
        raise ImageBuildError(str(path), "does not hold the same disk as the raw image (qemu-img compare)", _FIX)
    if proc.returncode != 0:
        raise ImageBuildError(str(path), f"cannot be compared: {one_line(proc.stderr)}", _FIX)


def _qemu_img(*args: str) -> str:
    return _tool(["qemu-img", *args])


def _tool(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(argv[0], f"{' '.join(argv[:3])} failed: {one_line(proc.stderr)}", _FIX)
    return proc.stdout
