"""The Debian 12 rootfs every test host boots: built once with mmdebstrap, cached as a tarball keyed on its inputs.

Contracts:

* :func:`rootfs_key` is a sha256 over every input of the build (suite, sources, packages, dpkg options, admin user,
  customize hook, :data:`SCRIPT_VERSION`).
* :func:`build_rootfs` returns the cached tarball, building it only when its input hash changed; concurrent callers
  serialise on a lock, and the tarball appears atomically (rename), so a crash never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from devserver import versions
from devserver.sysutil import file_lock
from devtools.testhost.machine import ensure_tools, tail

# Bump when the build recipe changes in a way the hashed inputs below do not capture.
SCRIPT_VERSION = "1"

SUITE = "bookworm"
MIRROR = versions.DEBIAN_MIRROR
SECURITY_MIRROR = versions.DEBIAN_SECURITY_MIRROR
COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
ADMIN_USER = "devserver"
PACKAGES_FILE = Path(__file__).with_name("host_packages.txt")

# Shrinks the rootfs: no man pages, translations or docs (copyright files kept). Persisted into the
# rootfs's dpkg config, so packages the roles install later are slimmed the same way.
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)

# Runs inside mmdebstrap after all packages are installed; "$1" is the rootfs. Part of the cache key.
CUSTOMIZE_HOOK = r"""
set -eu
root="$1"
user="$2"

# The admin user a cloud image creates: no password (not locked, so sshd's account checks pass),
# key-only login, passwordless sudo. Its authorized_keys is written per host by up().
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo "$user"
chroot "$root" usermod --password '*' "$user"
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" > "$root/etc/sudoers.d/90-$user"
chmod 0440 "$root/etc/sudoers.d/90-$user"
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
    > "$root/etc/ssh/sshd_config.d/50-testhost.conf"

# Host keys must differ per host: drop the build's, regenerate at first boot before sshd starts.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
EOF
chroot "$root" systemctl enable ssh-host-keys.service

# In nspawn: there is no fstab root to remount, and the network is configured from outside
# (the container's netns is set up by the test harness like a DHCP'd cloud NIC).
chroot "$root" systemctl mask systemd-remount-fs.service networking.service

# mmdebstrap copies the build host's files; the test host must not inherit them.
: > "$root/etc/resolv.conf"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo localhost > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
chmod 0644 "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/hosts"
"""


def _packages() -> list[str]:
    """The package list from host_packages.txt (comments and blanks dropped), sorted."""
    names = []
    for line in PACKAGES_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return sorted(set(names))


def _sources() -> list[str]:
    """The rootfs's apt sources: plain http so that apt-cacher-ng can cache them."""
    comps = " ".join(COMPONENTS)
    return [
        f"deb {MIRROR} {SUITE} {comps}",
        f"deb {MIRROR} {SUITE}-updates {comps}",
        f"deb {SECURITY_MIRROR} {SUITE}-security {comps}",
    ]


def rootfs_key() -> str:
    """sha256 over every input of the rootfs build (suite, packages, mirrors, recipe, version)."""
    inputs = {
        "script_version": SCRIPT_VERSION,
        "suite": SUITE,
        "sources": _sources(),
        "packages": _packages(),
        "dpkg_opts": list(DPKG_OPTS),
        "user": ADMIN_USER,
        "hook": CUSTOMIZE_HOOK,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_rootfs(cache_dir: Path) -> Path:
    """Return the cached rootfs tarball in `cache_dir`, building it with mmdebstrap if absent.

    The file is ``rootfs-<suite>-<key[:16]>.tar.zst`` with key = :func:`rootfs_key`, so any change
    of inputs builds a new one (older ones are deleted). Concurrent callers serialise on a lock in
    `cache_dir`; the tarball appears atomically (rename), so a crash never leaves a half-written one.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = rootfs_key()
    tarball = cache_dir / f"rootfs-{SUITE}-{key[:16]}.tar.zst"
    if tarball.exists():
        return tarball
    ensure_tools()
    with file_lock(cache_dir / "rootfs.lock"):
        if tarball.exists():  # built by a concurrent caller while we waited
            return tarball
        partial = tarball.with_name(tarball.name + f".partial-{os.getpid()}.tar.zst")
        argv = [
            "mmdebstrap",
            "--mode=root",
            "--variant=apt",
            "--format=tar",
            f"--components={','.join(COMPONENTS)}",
            f"--include={','.join(_packages())}",
            *[f"--dpkgopt={opt}" for opt in DPKG_OPTS],
            f'--customize-hook=sh -c {shell_quote(CUSTOMIZE_HOOK)} hook "$1" {ADMIN_USER}',
            SUITE,
            str(partial),
            *_sources(),
        ]
        log = cache_dir / "rootfs-build.log"
        try:
            with log.open("w") as out:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed ({proc.returncode}); log {log}:\n{tail(log)}")
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
        for old in cache_dir.glob(f"rootfs-{SUITE}-*.tar.zst"):
            if old != tarball and ".partial-" not in old.name:
                old.unlink(missing_ok=True)
    return tarball


def shell_quote(text: str) -> str:
    """Single-quote `text` for sh (mmdebstrap runs a hook string with sh -c)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"
