"""devserver.images.base: the recipes (every distro, including Ubuntu, whose archive is unreachable here), the cache
key, the cached build of the real Debian 12 base, and extraction keeping owners, modes and xattrs."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devserver import loader
from devserver.images import base
from devserver.spec import DevserverSpec

if TYPE_CHECKING:
    from conftest import BaseDisk

DEBIAN = base.BaseSpec("debian-12", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security")

# What the brief for a cloud-ready base asks for, in each distro's names.
ALWAYS = {
    "systemd", "systemd-sysv", "udev", "openssh-server", "cloud-init", "cloud-guest-utils", "e2fsprogs", "sudo",
    "python3", "ca-certificates", "initramfs-tools", "grub-pc-bin", "grub-efi-amd64-bin", "netbase", "dbus",
    "apt-utils", "gnupg",
}  # fmt: skip


def _spec(os_name: str, repositories: str = "") -> DevserverSpec:
    text = f"name: t\ncloud: {{provider: local}}\nos: {os_name}\n{repositories}"
    return loader.load_spec_bytes(text.encode())


def test_debian_recipe_is_cloud_ready_with_non_free() -> None:
    recipe = base.RECIPES["debian-12"]
    assert ALWAYS | {"linux-image-cloud-amd64", "ifupdown", "isc-dhcp-client"} <= set(recipe.packages)
    assert recipe.components == ("main", "contrib", "non-free", "non-free-firmware")
    assert recipe.keyring is None  # the host's debian-archive-keyring
    assert recipe.sources("http://m/debian", "http://s/debian-security") == (
        "deb http://m/debian bookworm main contrib non-free non-free-firmware",
        "deb http://m/debian bookworm-updates main contrib non-free non-free-firmware",
        "deb http://s/debian-security bookworm-security main contrib non-free non-free-firmware",
    )


@pytest.mark.parametrize(("distro", "suite"), [("ubuntu-22.04", "jammy"), ("ubuntu-24.04", "noble")])
def test_ubuntu_recipe_uses_ubuntu_names_and_keyring(distro: str, suite: str) -> None:
    spec = _spec(distro, "repositories: {ubuntu_mirror: 'http://mirror.example/ubuntu'}\n")
    b = base.BaseSpec.from_spec(spec)
    assert (b.mirror, b.security_mirror) == ("http://mirror.example/ubuntu", "http://mirror.example/ubuntu")
    recipe = b.recipe
    assert ALWAYS | {"linux-image-virtual", "netplan.io", "ubuntu-keyring"} <= set(recipe.packages)
    assert not {"linux-image-cloud-amd64", "ifupdown"} & set(recipe.packages)
    argv = base.mmdebstrap_argv(b, Path("/out.tar.zst"))
    assert "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg" in argv
    assert "--components=main,restricted,universe,multiverse" in argv
    assert argv[-5:] == [
        suite,
        "/out.tar.zst",
        f"deb http://mirror.example/ubuntu {suite} main restricted universe multiverse",
        f"deb http://mirror.example/ubuntu {suite}-updates main restricted universe multiverse",
        f"deb http://mirror.example/ubuntu {suite}-security main restricted universe multiverse",
    ]
    assert any(arg.startswith("--customize-hook=") and arg.endswith(" ubuntu") for arg in argv)


def test_from_spec_takes_mirrors_and_proxy() -> None:
    spec = _spec(
        "debian-12",
        "repositories:\n  debian_mirror: http://m.example/debian\n  debian_security_mirror: http://s.example/sec\n"
        "  apt_proxy: http://proxy.example:3142\n",
    )
    b = base.BaseSpec.from_spec(spec)
    assert b == base.BaseSpec(
        "debian-12", "http://m.example/debian", "http://s.example/sec", "http://proxy.example:3142"
    )
    argv = base.mmdebstrap_argv(b, Path("/o.tar.zst"))
    assert '--aptopt=Acquire::http::Proxy "http://proxy.example:3142"' in argv
    assert "deb http://m.example/debian bookworm main contrib non-free non-free-firmware" in argv


def test_key_covers_every_content_input_but_not_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base.base_key(DEBIAN)
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert base.base_key(base.BaseSpec(DEBIAN.distro, DEBIAN.mirror, DEBIAN.security_mirror)) == key
    changed = {
        base.base_key(base.BaseSpec("debian-12", "http://other/debian", DEBIAN.security_mirror)),
        base.base_key(base.BaseSpec("debian-12", DEBIAN.mirror, "http://other/security")),
        base.base_key(base.BaseSpec("ubuntu-24.04", DEBIAN.mirror, DEBIAN.security_mirror)),
    }
    with monkeypatch.context() as patch:
        recipe = base.RECIPES["debian-12"]
        patch.setitem(
            base.RECIPES, "debian-12", base.Recipe(**{**recipe.__dict__, "packages": (*recipe.packages, "vim")})
        )
        changed.add(base.base_key(DEBIAN))
    with monkeypatch.context() as patch:
        patch.setattr(base, "CUSTOMIZE_HOOK", base.CUSTOMIZE_HOOK + "\ntrue\n")
        changed.add(base.base_key(DEBIAN))
    with monkeypatch.context() as patch:
        patch.setattr(base, "RECIPE_VERSION", base.RECIPE_VERSION + "x")
        changed.add(base.base_key(DEBIAN))
    assert len(changed) == 6
    assert key not in changed
    proxied = base.BaseSpec(DEBIAN.distro, DEBIAN.mirror, DEBIAN.security_mirror, "http://proxy:3142")
    assert base.base_key(proxied) == key  # how packages are fetched is not what the tree holds


def test_unknown_distro_is_one_clear_error() -> None:
    with pytest.raises(base.ImageBuildError) as err:
        base.BaseSpec("debian-11", DEBIAN.mirror, DEBIAN.security_mirror)
    assert str(err.value) == (
        "distro 'debian-11': is not a known base distro — fix: use one of debian-12, ubuntu-22.04, ubuntu-24.04"
    )


def test_default_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DEVSERVER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert base.default_cache_dir() == tmp_path / ".cache/devserver"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base.default_cache_dir() == tmp_path / "xdg/devserver"
    monkeypatch.setenv("DEVSERVER_CACHE", str(tmp_path / "own"))
    assert base.default_cache_dir() == tmp_path / "own"


def test_second_build_returns_the_cached_tarball(base_tarball: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = base_tarball.stat()
    # With no mmdebstrap on PATH a rebuild would fail its preflight: returning proves nothing was built.
    monkeypatch.setenv("PATH", "/nonexistent")
    again = base.build_base(base.BaseSpec.from_spec(loader.load_builtin_local()), base_tarball.parent)
    after = again.stat()
    assert again == base_tarball
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    key = base.base_key(base.BaseSpec.from_spec(loader.load_builtin_local()))
    assert base_tarball.name == f"base-debian-12-{key[:16]}.tar.zst"
    assert not list(base_tarball.parent.glob(".*partial*"))


def test_build_without_mmdebstrap_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(base.ImageBuildError, match=r"mmdebstrap: is not installed — fix: apt-get install mmdebstrap"):
        base.build_base(DEBIAN, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _installed_packages(rootfs: Path) -> set[str]:
    installed, name = set(), ""
    for line in (rootfs / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line == "Status: install ok installed":
            installed.add(name)
    return installed


def test_base_tree_is_cloud_ready_and_carries_no_identity(base_disk: BaseDisk) -> None:
    root = base_disk.rootfs
    assert set(base.RECIPES["debian-12"].packages) <= _installed_packages(root)
    assert (root / "etc/fstab").read_text() == "LABEL=rootfs\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert not (root / "etc/apt/apt.conf.d/99mmdebstrap").exists()
    assert "locale: false" in (root / "etc/cloud/cloud.cfg.d/01_devserver_base.cfg").read_text()
    sources = (root / "etc/apt/sources.list").read_text().split("\n")
    assert [s for s in sources if s] == list(base.RECIPES["debian-12"].sources(DEBIAN.mirror, DEBIAN.security_mirror))
    assert list((root / "boot").glob("vmlinuz-*-cloud-amd64"))
    assert list((root / "boot").glob("initrd.img-*"))
    for tool in ("usr/bin/growpart", "usr/sbin/resize2fs", "usr/sbin/sfdisk", "usr/bin/python3", "usr/bin/cloud-init"):
        assert (root / tool).exists(), tool
    for platform in ("i386-pc", "x86_64-efi"):
        assert (root / "usr/lib/grub" / platform / "normal.mod").is_file()


def test_extract_keeps_owners_modes_setuid_and_xattrs(base_disk: BaseDisk, tmp_path: Path) -> None:
    sudo = (base_disk.rootfs / "usr/bin/sudo").stat()
    assert sudo.st_mode & stat.S_ISUID
    assert (sudo.st_uid, sudo.st_gid) == (0, 0)
    shadow = (base_disk.rootfs / "etc/shadow").stat()
    assert shadow.st_gid == 42
    assert stat.S_IMODE(shadow.st_mode) == 0o640
    src = tmp_path / "src"
    src.mkdir()
    tool = src / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, 1234, 5678)
    tool.chmod(0o4755)
    os.setxattr(tool, "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(tool, "user.devserver", b"kept")
    tarball = tmp_path / "t.tar.zst"
    subprocess.run(
        ["tar", "--zstd", "--xattrs", "--xattrs-include=*", "-cf", str(tarball), "-C", str(src), "."], check=True
    )
    base.extract(tarball, tmp_path / "dest")
    got = tmp_path / "dest/tool"
    st = got.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert os.getxattr(got, "user.devserver") == b"kept"
    assert os.getxattr(got, "security.capability") == os.getxattr(tool, "security.capability")


def test_extract_of_a_broken_tarball_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(base.ImageBuildError, match=r"bad.tar.zst: cannot be extracted: .* — fix: delete it"):
        base.extract(bad, tmp_path / "dest")
