"""Base root filesystems: a minimal cloud-ready Debian or Ubuntu tree built with mmdebstrap, cached by its inputs.

The base is what every builder starts from: a cloud kernel with its initramfs, systemd, udev, sshd, cloud-init (with
growpart for bigger cloud disks), the GRUB binaries for BIOS and UEFI boot (the boot loader itself is written by
:mod:`devserver.images.disk`, not installed into a device), python3 for Ansible, and apt sources pointing at the
spec's mirror. It carries no identity: no SSH host keys (cloud-init makes them at first boot), an empty machine-id,
an empty resolv.conf, hostname ``localhost``. The root filesystem is mounted by ``LABEL=rootfs``.

Contracts:

* :func:`base_key` is a sha256 over everything that decides the tree's content (distro recipe, package list,
  sources, keyring, customize hook, :data:`RECIPE_VERSION`). The apt proxy is deliberately not part of it: it
  changes how packages are fetched, not which ones, and it is not left in the tree.
* :func:`build_base` returns ``<cache>/base-<distro>-<key[:16]>.tar.zst``, building it only when absent. Concurrent
  callers serialise on a per-key flock; the tarball appears by rename, so a crash or Ctrl-C never leaves a partial
  one under the final name.
* :func:`extract` unpacks a tarball with ownership, permissions, xattrs (file capabilities) and setuid bits kept.

Needs root (mmdebstrap's root mode, and ownership on extract) and mmdebstrap, tar, zstd on the build machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devserver.errors import DevserverError
from devserver.sysutil import file_lock

if TYPE_CHECKING:
    from devserver.spec import DevserverSpec

# Bump when the build changes in a way the hashed inputs below do not capture (mmdebstrap options, say).
RECIPE_VERSION = "1"

ROOT_LABEL = "rootfs"


class ImageBuildError(DevserverError):
    """An image build step that failed, with what went wrong and what to do (rendered as one line by the CLI)."""


@dataclass(frozen=True)
class Recipe:
    """How one distro's base is made: the names that differ between Debian and Ubuntu."""

    family: str  # 'debian' | 'ubuntu'
    suite: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    keyring: str | None  # host keyring file mmdebstrap verifies the archive with; None: the host's default

    def sources(self, mirror: str, security_mirror: str) -> tuple[str, ...]:
        """The tree's apt sources (also what mmdebstrap installs from): release, updates, security."""
        comps = " ".join(self.components)
        security_suite = f"{self.suite}-security"
        return (
            f"deb {mirror} {self.suite} {comps}",
            f"deb {mirror} {self.suite}-updates {comps}",
            f"deb {security_mirror} {security_suite} {comps}",
        )


# What every base has, whatever the distro calls it. python3 is for Ansible; iproute2, fdisk and e2fsprogs are what
# cloud-init's network setup, growpart and resizefs call; openssh-sftp-server is Ansible's default file transfer.
_COMMON = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "openssh-sftp-server",
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "sudo",
    "python3",
    "ca-certificates",
    "initramfs-tools",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "netbase",
    "iproute2",
    "apt-utils",
    "gnupg",
)

RECIPES: dict[str, Recipe] = {
    # non-free holds the NVIDIA driver; ifupdown + a DHCP client is what Debian's cloud-init renders networks for.
    "debian-12": Recipe(
        family="debian",
        suite="bookworm",
        components=("main", "contrib", "non-free", "non-free-firmware"),
        packages=tuple(sorted({*_COMMON, "linux-image-cloud-amd64", "ifupdown", "isc-dhcp-client"})),
        keyring=None,
    ),
    # Ubuntu's cloud-init renders netplan for systemd-networkd; mmdebstrap needs Ubuntu's keyring on the host.
    "ubuntu-22.04": Recipe(
        family="ubuntu",
        suite="jammy",
        components=("main", "restricted", "universe", "multiverse"),
        packages=tuple(sorted({*_COMMON, "linux-image-virtual", "netplan.io", "ubuntu-keyring"})),
        keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ),
    "ubuntu-24.04": Recipe(
        family="ubuntu",
        suite="noble",
        components=("main", "restricted", "universe", "multiverse"),
        packages=tuple(sorted({*_COMMON, "linux-image-virtual", "netplan.io", "ubuntu-keyring"})),
        keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ),
}

# Runs in mmdebstrap after every package is installed; "$1" is the tree. Part of the cache key.
CUSTOMIZE_HOOK = r"""
set -eu
root="$1"
family="$2"

printf 'LABEL=rootfs\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' > "$root/etc/fstab"

# No identity in a base: each machine made from it gets its own host keys (cloud-init's ssh module), machine-id
# (systemd at first boot) and resolver settings (DHCP).
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
: > "$root/etc/resolv.conf"
echo localhost > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

# The build's apt proxy (if any) must not stay in the image: the roles set the site's proxy from the spec.
rm -f "$root/etc/apt/apt.conf.d/99mmdebstrap"

# The locales package is not in the base; cloud-init's locale module would fail trying to generate one.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
printf '# devserver base: no locales package, keep the C.UTF-8 default\nlocale: false\n' \
    > "$root/etc/cloud/cloud.cfg.d/01_devserver_base.cfg"

if [ "$family" = debian ]; then
    # cloud-init writes the NIC's stanza into interfaces.d.
    printf 'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n' > "$root/etc/network/interfaces"
fi
"""


@dataclass(frozen=True)
class BaseSpec:
    """Which base to build and where its packages come from.

    `distro` is a key of :data:`RECIPES`; `mirror`/`security_mirror` are the archive URLs written into the tree's
    apt sources; `apt_proxy` is used only while building.
    """

    distro: str
    mirror: str
    security_mirror: str
    apt_proxy: str | None = None

    def __post_init__(self) -> None:
        if self.distro not in RECIPES:
            raise ImageBuildError(
                f"distro {self.distro!r}", "is not a known base distro", f"use one of {', '.join(sorted(RECIPES))}"
            )

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.distro]

    @classmethod
    def from_spec(cls, spec: DevserverSpec) -> BaseSpec:
        """The base for `spec.os` with the spec's mirrors and proxy.

        Ubuntu has no separate security mirror field: its archive mirror also serves ``<suite>-security``.
        """
        repos = spec.repositories
        if spec.os.startswith("ubuntu"):
            return cls(spec.os, repos.ubuntu_mirror, repos.ubuntu_mirror, repos.apt_proxy)
        return cls(spec.os, repos.debian_mirror, repos.debian_security_mirror, repos.apt_proxy)


def base_key(base: BaseSpec) -> str:
    """sha256 hex over every input that decides the tree's content (not the build-time proxy)."""
    recipe = base.recipe
    inputs = {
        "recipe_version": RECIPE_VERSION,
        "distro": base.distro,
        "suite": recipe.suite,
        "components": list(recipe.components),
        "packages": list(recipe.packages),
        "sources": list(recipe.sources(base.mirror, base.security_mirror)),
        "keyring": recipe.keyring,
        "hook": CUSTOMIZE_HOOK,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """$DEVSERVER_CACHE, else $XDG_CACHE_HOME/devserver, else ~/.cache/devserver."""
    if env := os.environ.get("DEVSERVER_CACHE"):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "devserver"
    return Path.home() / ".cache" / "devserver"


def tarball_path(base: BaseSpec, cache_dir: Path) -> Path:
    """Where :func:`build_base` keeps the tarball for `base` (whether or not it exists yet)."""
    return Path(cache_dir) / f"base-{base.distro}-{base_key(base)[:16]}.tar.zst"


def mmdebstrap_argv(base: BaseSpec, out: Path) -> list[str]:
    """The mmdebstrap command that builds `base` into the tarball `out` (compressed by its .zst suffix)."""
    recipe = base.recipe
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--format=tar",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
    ]
    if recipe.keyring is not None:
        argv.append(f"--keyring={recipe.keyring}")
    if base.apt_proxy is not None:
        argv.append(f'--aptopt=Acquire::http::Proxy "{base.apt_proxy}"')
    argv += [
        f'--customize-hook=sh -c {_shell_quote(CUSTOMIZE_HOOK)} hook "$1" {recipe.family}',
        recipe.suite,
        str(out),
        *recipe.sources(base.mirror, base.security_mirror),
    ]
    return argv


def build_base(base: BaseSpec, cache_dir: Path, *, log: Path | None = None) -> Path:
    """Return the cached base tarball for `base`, building it first if it is not in `cache_dir`.

    mmdebstrap's output goes to `log` (default ``<cache>/base-<distro>.log``); a failed build raises
    :class:`ImageBuildError` with the log's tail. Expect about a minute for a cold Debian build.
    """
    cache_dir = Path(cache_dir)
    tarball = tarball_path(base, cache_dir)
    if tarball.exists():
        return tarball
    _preflight(base)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(tarball.with_name(tarball.name + ".lock")):
        if tarball.exists():  # a concurrent caller built it while we waited
            return tarball
        partial = tarball.with_name(f".{tarball.name}.partial-{os.getpid()}.tar.zst")
        log = log or cache_dir / f"base-{base.distro}.log"
        try:
            with log.open("w") as out:
                proc = subprocess.run(
                    mmdebstrap_argv(base, partial), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            if proc.returncode != 0:
                raise ImageBuildError(
                    f"base {base.distro}",
                    f"mmdebstrap failed (exit {proc.returncode}):\n{_tail(log)}",
                    f"read {log}; check that {base.mirror} is reachable (or set repositories.apt_proxy)",
                )
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
    return tarball


def extract(tarball: Path, dest: Path) -> None:
    """Unpack a base tarball into `dest` (created if missing), keeping owners, modes, setuid bits and xattrs."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            "tar",
            "--zstd",
            "--extract",
            "--file",
            str(tarball),
            "--directory",
            str(dest),
            "--numeric-owner",
            "--same-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageBuildError(
            str(tarball),
            f"cannot be extracted: {one_line(proc.stderr)}",
            "delete it so it is rebuilt",
        )


def _preflight(base: BaseSpec) -> None:
    """Refuse early, with the fix, what would otherwise fail minutes into mmdebstrap."""
    if os.geteuid() != 0:
        raise ImageBuildError(f"base {base.distro}", "building a base needs root", "run the build with sudo")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("zstd", "zstd")):
        if shutil.which(tool) is None:
            raise ImageBuildError(tool, "is not installed", f"apt-get install {package} (scripts/bootstrap does)")
    keyring = base.recipe.keyring
    if keyring is not None and not Path(keyring).is_file():
        raise ImageBuildError(
            keyring, f"is missing: mmdebstrap needs it to verify {base.distro}", "apt-get install ubuntu-keyring"
        )


def one_line(text: str, limit: int = 600) -> str:
    """A tool's stderr as one line for an error message: its non-blank lines joined with "; ", the end kept."""
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else "…" + joined[-limit:]


def _tail(path: Path, lines: int = 25) -> str:
    """The last non-blank lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _shell_quote(text: str) -> str:
    """Single-quote `text` for sh (mmdebstrap runs a hook string with sh -c)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"
