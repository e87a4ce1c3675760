"""Fixtures for the image pipeline tests (devserver.images.{base,disk,formats,qemu}).

* ``base_tarball`` (session): the Debian 12 base of the built-in local spec, from the user cache
  (``devserver.images.base.default_cache_dir()``, shared with the other image tests); built on first use (~1–2 min).
* ``base_disk`` (session): that base extracted into a session temp folder and assembled into a raw GPT disk —
  the disk the format and boot tests reuse. Its tree and disk are removed with pytest's session temp folders.

Needs root (mmdebstrap, ownership on extract, chroot for grub-mkimage).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devserver import loader
from devserver.images import base, disk


@dataclass(frozen=True)
class BaseDisk:
    """An assembled base disk: the raw file, its layout, the tree it was made from, and how long assembly took."""

    path: Path
    layout: disk.DiskLayout
    rootfs: Path
    assemble_s: float


@pytest.fixture(scope="session")
def base_tarball() -> Path:
    """The cached Debian 12 base tarball of the built-in local spec (built now if its inputs changed)."""
    if os.geteuid() != 0:
        pytest.fail("image tests need root: mmdebstrap, file ownership, chroot")
    return base.build_base(base.BaseSpec.from_spec(loader.load_builtin_local()), base.default_cache_dir())


@pytest.fixture(scope="session")
def base_disk(base_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> BaseDisk:
    """The base assembled into a raw disk at its default size (read-only for tests: boots use snapshot mode)."""
    work = tmp_path_factory.mktemp("base-disk")
    rootfs = work / "rootfs"
    base.extract(base_tarball, rootfs)
    started = time.monotonic()
    layout = disk.assemble(rootfs, work / "disk.raw")
    return BaseDisk(work / "disk.raw", layout, rootfs, time.monotonic() - started)
