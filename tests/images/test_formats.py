"""devserver.images.formats: every target's files written from the real base disk and checked; the GCE tar's and the
VHD's contents compared byte-for-byte with the raw disk (by readers independent of the writers: Python's tarfile and
plain reads); and the checks shown to fail on broken files."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pytest

from devserver.images import formats
from devserver.images.artifact import TARGET_FORMATS, DiskFile
from devserver.images.base import ImageBuildError

if TYPE_CHECKING:
    from conftest import BaseDisk

MIB = 1024 * 1024
GIB = 1024 * MIB
CHUNK = 4 * MIB


@pytest.fixture(scope="module")
def artifacts(base_disk: BaseDisk, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[DiskFile]]]:
    """Each target's files written from the base disk into a folder of its own."""
    out = {}
    for target in TARGET_FORMATS:
        folder = tmp_path_factory.mktemp(f"artifact-{target}")
        raw = base_disk.path
        if target == "aws":  # the raw disk already in the folder, as build.py leaves it: used in place
            raw = folder / "disk.raw"
            subprocess.run(["cp", "--sparse=always", str(base_disk.path), str(raw)], check=True)
        out[target] = (folder, formats.write_formats(raw, target, folder))
    return out


def _same_bytes(a: BinaryIO, b: BinaryIO, size: int) -> None:
    left = size
    while left:
        n = min(CHUNK, left)
        x, y = a.read(n), b.read(n)
        assert len(x) == len(y) == n
        assert x == y, f"differ within bytes {size - left}..{size - left + n}"
        left -= n


@pytest.mark.parametrize("target", list(TARGET_FORMATS))
def test_every_target_gets_its_checked_files(
    target: str, artifacts: dict[str, tuple[Path, list[DiskFile]]], base_disk: BaseDisk
) -> None:
    folder, files = artifacts[target]
    assert [(f.format, f.path) for f in files] == list(TARGET_FORMATS[target])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.path for f in files)  # no partial files left
    size = base_disk.layout.size_bytes
    # aws used its in-place copy, whose zero blocks cp --sparse=always turned into holes.
    source = folder / "disk.raw" if target == "aws" else base_disk.path
    allocated = formats.allocated_bytes(source)
    for file in files:
        path = folder / file.path
        assert file.virtual_size == size
        assert file.allocated == allocated
        assert file.file_size == path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        assert file.sha256 == digest.hexdigest()
        formats.check_format(file.format, path, source)


def test_allocated_is_the_data_extents(base_disk: BaseDisk, tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as handle:
        handle.truncate(64 * MIB)
        handle.seek(MIB)
        handle.write(b"x" * 8192)
        handle.seek(40 * MIB)
        handle.write(b"y" * 4096)
    assert formats.allocated_bytes(sparse) == 8192 + 4096
    real = formats.allocated_bytes(base_disk.path)
    # st_blocks also counts the host filesystem's extent-tree blocks, so it is a bound, not the value.
    assert 0 < real <= base_disk.path.stat().st_blocks * 512 < base_disk.layout.size_bytes


def test_gce_tar_holds_the_raw_disk_byte_for_byte(
    artifacts: dict[str, tuple[Path, list[DiskFile]]], base_disk: BaseDisk
) -> None:
    folder, files = artifacts["gce"]
    path = folder / files[0].path
    with gzip.open(path, "rb") as stream:
        header = stream.read(512)
    assert header[257:265] == b"ustar  \x00"  # oldgnu magic
    assert header[156:157] == b"S"  # GNU sparse member
    with tarfile.open(path, "r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "disk.raw"
        assert member.issparse()
        assert member.size == base_disk.layout.size_bytes
        assert member.size % GIB == 0
        data = tar.extractfile(member)
        assert data is not None
        with base_disk.path.open("rb") as raw:
            _same_bytes(data, raw, member.size)
    assert path.stat().st_size < base_disk.path.stat().st_blocks * 512  # compressed, holes not stored


def test_vhd_is_the_raw_disk_plus_a_fixed_footer(
    artifacts: dict[str, tuple[Path, list[DiskFile]]], base_disk: BaseDisk
) -> None:
    folder, files = artifacts["azure"]
    path = folder / files[0].path
    size = base_disk.layout.size_bytes
    assert path.stat().st_size == size + 512
    with path.open("rb") as vhd, base_disk.path.open("rb") as raw:
        _same_bytes(vhd, raw, size)
        footer = vhd.read()
    assert footer[:8] == b"conectix"
    assert struct.unpack_from(">QQ", footer, 40) == (size, size)  # original and current size
    assert struct.unpack_from(">I", footer, 60)[0] == 2
    assert struct.unpack_from(">I", footer, 64)[0] == formats.vhd_checksum(footer)
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(path)], capture_output=True, text=True)
    assert f'"virtual-size": {size}' in info.stdout


def test_raw_is_copied_sparse_when_not_in_place(tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    with raw.open("wb") as handle:
        handle.truncate(8 * MIB)
        handle.write(b"boot")
    formats.check_format("raw", raw, raw)
    copy = tmp_path / "copy.raw"
    formats._write_raw(raw, copy)
    formats.check_format("raw", copy, raw)
    assert formats.allocated_bytes(copy) == 4096
    copy.write_bytes(b"short")
    with pytest.raises(ImageBuildError, match=r"copy.raw: cannot be compared|does not hold the same disk"):
        formats.check_format("raw", copy, raw)


@pytest.fixture
def small_vhd(tmp_path: Path) -> tuple[Path, int]:
    """A fixed VHD of a 4 MiB disk, written by qemu-img like the real one, to corrupt."""
    size = 4 * MIB
    raw = tmp_path / "small.raw"
    raw.write_bytes(os.urandom(size))
    vhd = tmp_path / "small.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", str(raw), str(vhd)],
        check=True,
    )
    formats.check_vhd(vhd, size)
    formats.check_format("vhd-fixed", vhd, raw)
    return vhd, size


def _patch_footer(vhd: Path, offset: int, data: bytes, *, fix_checksum: bool) -> None:
    with vhd.open("r+b") as handle:
        handle.seek(-512, os.SEEK_END)
        footer = bytearray(handle.read(512))
        footer[offset : offset + len(data)] = data
        if fix_checksum:
            struct.pack_into(">I", footer, 64, formats.vhd_checksum(bytes(footer)))
        handle.seek(-512, os.SEEK_END)
        handle.write(footer)


@pytest.mark.parametrize(
    ("offset", "data", "fix_checksum", "message"),
    [
        (0, b"conectiy", True, r"footer cookie is b'conectiy', not b'conectix'"),
        (60, struct.pack(">I", 3), True, r"footer disk type is 3, not 2 \(fixed\)"),
        (48, struct.pack(">Q", 8 * MIB), True, r"footer current size is 8388608, not the raw 4194304"),
        (20, b"\x01", False, r"footer checksum is 0x[0-9a-f]{8}, not 0x[0-9a-f]{8}"),
    ],
)
def test_corrupted_vhd_footer_is_caught(
    small_vhd: tuple[Path, int], offset: int, data: bytes, fix_checksum: bool, message: str
) -> None:
    vhd, size = small_vhd
    _patch_footer(vhd, offset, data, fix_checksum=fix_checksum)
    with pytest.raises(ImageBuildError, match=message):
        formats.check_vhd(vhd, size)


def test_truncated_or_unaligned_vhd_is_caught(small_vhd: tuple[Path, int]) -> None:
    vhd, size = small_vhd
    with pytest.raises(ImageBuildError, match=r"not the raw 4194305 \+ a 512-byte footer"):
        formats.check_vhd(vhd, size + 1)
    with vhd.open("r+b") as handle:
        handle.truncate(size)
    with pytest.raises(ImageBuildError, match=r"is 4194304 bytes, not the raw 4194304 \+ a 512-byte footer"):
        formats.check_vhd(vhd, size)


def _gce_like_tar(
    tmp_path: Path, members: dict[str, bytes | None], *, fmt: str = "oldgnu", sparse: bool = True
) -> Path:
    """A tar.gz written by GNU tar; a member's None content is a sparse 1 GiB file."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, content in members.items():
        with (src / name).open("wb") as handle:
            if content is None:
                handle.truncate(GIB)
                handle.seek(GIB // 2)
                handle.write(b"data")
            else:
                handle.write(content)
    out = tmp_path / "t.tar.gz"
    # gzip -1: the dense 1 GiB case compresses a gigabyte of zeros.
    argv = ["tar", f"--format={fmt}", "--use-compress-program=gzip -1", "-cf", str(out), "-C", str(src), *members]
    subprocess.run(argv[:1] + (["--sparse"] if sparse else []) + argv[1:], check=True)
    return out


def test_gce_tar_layout_checks_fail_on_wrong_layouts(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    formats.check_gce_tar(_gce_like_tar(tmp_path / "good", {"disk.raw": None}, fmt="oldgnu"), GIB)
    cases = [
        ({"disk.raw": None, "extra": b"x"}, "oldgnu", True, GIB, r"holds \['disk.raw', 'extra'\], not exactly"),
        ({"image.raw": None}, "oldgnu", True, GIB, r"holds \['image.raw'\]"),
        ({"disk.raw": None}, "pax", True, GIB, r"first header is not in GNU oldgnu format"),
        ({"disk.raw": None}, "oldgnu", False, GIB, r"disk.raw is not stored sparse"),
        ({"disk.raw": None}, "oldgnu", True, 2 * GIB, r"disk.raw is 1073741824 bytes, not 2147483648"),
        ({"disk.raw": None}, "oldgnu", True, GIB + MIB, r"disk size 1074790400 is not a whole GiB"),
    ]
    for i, (members, fmt, sparse, size, message) in enumerate(cases):
        case = tmp_path / f"case{i}"
        case.mkdir()
        tar = _gce_like_tar(case, members, fmt=fmt, sparse=sparse)
        with pytest.raises(ImageBuildError, match=message):
            formats.check_gce_tar(tar, size)
        shutil.rmtree(case)


def test_qcow2_that_differs_from_the_raw_is_caught(tmp_path: Path) -> None:
    raw = tmp_path / "a.raw"
    raw.write_bytes(os.urandom(2 * MIB))
    qcow2 = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    formats.check_format("qcow2", qcow2, raw)
    with raw.open("r+b") as handle:
        handle.seek(MIB)
        handle.write(b"changed")
    with pytest.raises(ImageBuildError, match=r"does not hold the same disk as the raw image"):
        formats.check_format("qcow2", qcow2, raw)
    with pytest.raises(ImageBuildError, match=r"^qemu-img: qemu-img info --output=json failed: "):
        formats.check_format("vmdk-stream", qcow2, raw)


def test_sizes_clouds_refuse_are_refused_before_writing(tmp_path: Path) -> None:
    raw = tmp_path / "odd.raw"
    with raw.open("wb") as handle:
        handle.truncate(GIB + MIB)
    with pytest.raises(ImageBuildError, match=r"not a whole GiB \(GCE's rule\)"):
        formats.write_formats(raw, "gce", tmp_path / "gce")
    with raw.open("r+b") as handle:
        handle.truncate(MIB + 512)
    with pytest.raises(ImageBuildError, match=r"not a whole MiB \(Azure's rule\)"):
        formats.write_formats(raw, "azure", tmp_path / "azure")
    assert list((tmp_path / "gce").iterdir()) == list((tmp_path / "azure").iterdir()) == []
    with pytest.raises(ImageBuildError, match=r"target 'ec2': has no disk formats"):
        formats.write_formats(raw, "ec2", tmp_path / "x")
