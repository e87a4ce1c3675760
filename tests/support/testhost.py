"""Booted Debian 12 test hosts, reached over real SSH, for running the Ansible roles.

A test host is a ``systemd-nspawn -b`` container of a Debian 12 rootfs, in a network namespace of
its own, that looks to Ansible like a fresh cloud VM:

* an admin user (``devserver``) with passwordless sudo, reached with a freshly generated ed25519 key;
* sshd host keys generated at first boot;
* ``eth0`` with a static address in a private /30; the other end of the veth pair (in the host's
  namespace) runs an apt-cacher-ng instance, which is the host's only way out (there is no NAT, and
  the rootfs carries no proxy setting: the roles set it from the spec);
* a second, empty 2 GiB disk (a loop device over a sparse file) for the ``data_volume`` role;
* Debian's ``linux-image-amd64`` and ``linux-headers-amd64`` installed as packages, so DKMS builds
  target the rootfs's kernel, not the (foreign) running one.

The rootfs is built once with mmdebstrap and cached as a tarball whose name carries a sha256 of the
build inputs; every host extracts its own copy, so hosts are independent and always "fresh"
(never converged).

Contracts:

* :func:`build_rootfs` returns the cached tarball, building it only when its input hash changed.
* :func:`up` returns a :class:`TestHost` whose SSH already answered; on any failure it tears down
  everything it made before raising.
* :func:`down` is idempotent, safe after a partial :func:`up` (it works from the state file that
  :func:`up` writes before creating each resource), and leaves no process, netns, veth, loop device,
  mount or directory behind.

Needs root, and these commands: mmdebstrap, systemd-nspawn (systemd-container), apt-cacher-ng,
ssh/ssh-keygen (openssh-client), ip (iproute2), losetup (mount), zstd. Missing ones are installed with
apt-get (see :func:`ensure_tools`).

CLI: ``python -m tests.support.testhost up|down|ssh|info NAME``, ``build``, ``gc`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Bump when the build recipe changes in a way the hashed inputs below do not capture.
SCRIPT_VERSION = "1"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
ADMIN_USER = "devserver"
PACKAGES_FILE = Path(__file__).with_name("host_packages.txt")

ACNG_PORT = 3142
# daemon.json keys that let dockerd start inside a test host: the container has no CAP_NET_ADMIN, so no iptables,
# no forwarding and no bridge (tests and bench/update_noop.py write them before the roles run; the roles keep them).
DOCKERD_NETWORK_SETTINGS = {"iptables": False, "ip-forward": False, "bridge": "none"}
# Host ends are 172.30.N.1/30, container ends 172.30.N.2/30. 172.30/16 is private and not routed
# here; up() still checks every candidate against the host's routes and addresses.
SUBNET_BASE = "172.30"
DATA_DISK_BYTES = 2 * 1024**3
# Sparse: only what the host writes takes space. Room for the NVIDIA driver, DKMS and CUDA toolkit.
ROOT_DISK_BYTES = 24 * 1024**3
SSH_TIMEOUT_S = 90.0

# Global lock serialising subnet allocation between concurrent up() calls (other test runs included).
ALLOC_LOCK = Path("/run/devserver-testhost.lock")
STATE_FILE = "state.json"
HOST_FILE = "host.json"

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


# --------------------------------------------------------------------------------------------------
# Small helpers


def _run(argv: Sequence[str], *, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command capturing text output; on failure raise with its stderr (not just the code)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc


def _tail(path: Path, lines: int = 60) -> str:
    """Last lines of a log file, or a note that it is missing (used in error messages)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _pid_cmdline(pid: int) -> list[str]:
    """A process's argv, or [] if it is gone (or a zombie, which has an empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its argv contains `marker` (guards against a recycled pid)."""
    return any(marker in arg for arg in _pid_cmdline(pid))


def _pidns(pid: int) -> str | None:
    """The pid namespace id of a process (``pid:[4026...]``), or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Direct children of a process (all threads)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def _pids_in_pidns(ns: str) -> list[int]:
    """Every process whose pid namespace is `ns`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pidns(int(entry.name)) == ns:
            found.append(int(entry.name))
    return found


def _stop_process(pid: int, marker: str, *, grace_s: float) -> None:
    """SIGTERM `pid` (if it is still the process we started), wait `grace_s`, then SIGKILL."""
    if not _pid_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _pid_alive(pid, marker):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not _pid_alive(pid, marker):
            return
        time.sleep(0.1)
    raise RuntimeError(f"process {pid} ({marker}) survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect a child's exit status if it is ours, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _mounts_under(path: Path) -> list[str]:
    """Mount points (in this mount namespace) at or below `path`, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


# --------------------------------------------------------------------------------------------------
# Tools on this machine

# command -> Debian package providing it
REQUIRED_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "losetup": "mount",
    "zstd": "zstd",
    "mkfs.ext4": "e2fsprogs",
}


def ensure_tools() -> None:
    """Install the Debian packages providing any missing tool (needs root and Debian's archive).

    apt-cacher-ng's package would start a system daemon on *:3142 (which would also block our
    per-host instances from binding port 3142): it is installed under a policy-rc.d that forbids
    service starts, then disabled. Host PID 1 is not systemd here, so systemctl is not an option.
    """
    missing = sorted({pkg for cmd, pkg in REQUIRED_TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# devserver testhost: no service starts during install\nexit 101\n")
        policy.chmod(0o755)
    try:
        if _run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env).returncode != 0:
            _run(["apt-get", "update", "-q"], env=env)
            _run(["apt-get", "install", "-y", "-q", *missing], env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if "apt-cacher-ng" in missing:
        _run(["update-rc.d", "apt-cacher-ng", "disable"], check=False)
        _run(["service", "apt-cacher-ng", "stop"], check=False)


# --------------------------------------------------------------------------------------------------
# Rootfs


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
    with _locked(cache_dir / "rootfs.lock"):
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
            f'--customize-hook=sh -c {_shell_quote(CUSTOMIZE_HOOK)} hook "$1" {ADMIN_USER}',
            SUITE,
            str(partial),
            *_sources(),
        ]
        log = cache_dir / "rootfs-build.log"
        try:
            with log.open("w") as out:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed ({proc.returncode}); log {log}:\n{_tail(log)}")
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
        for old in cache_dir.glob(f"rootfs-{SUITE}-*.tar.zst"):
            if old != tarball and ".partial-" not in old.name:
                old.unlink(missing_ok=True)
    return tarball


def _shell_quote(text: str) -> str:
    """Single-quote `text` for sh (mmdebstrap runs a hook string with sh -c)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# Test host


@dataclasses.dataclass(frozen=True)
class TestHost:
    """A booted test host. All paths are on this machine except `data_device` (inside the host,
    which is also where it is in this machine: the loop device keeps its name)."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    netns: str
    address: str  # the host's own address (container end of the veth), the SSH target
    host_address: str  # this machine's end of the veth: the apt proxy's address
    user: str
    private_key: Path
    known_hosts: Path
    data_device: str  # block device inside the host for the data_volume role, e.g. /dev/loop3
    machine_root: Path  # the host's root filesystem (a private copy of the cached rootfs)
    state_dir: Path  # where up() keeps state, keys and logs; removed by down()
    console_log: Path
    ssh_port: int = 22
    pidns: str = ""  # pid namespace of the container's processes (``pid:[…]``), for leak checks

    @property
    def apt_proxy(self) -> str:
        """URL of this host's apt-cacher-ng, for Acquire::http::Proxy."""
        return f"http://{self.host_address}:{ACNG_PORT}"

    def ssh_options(self) -> list[str]:
        """ssh -o options that reach this host non-interactively (also usable as Ansible's
        ansible_ssh_common_args). Host keys are new per host, so accept-new into a per-host file."""
        return [
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh_argv(self, *command: str) -> list[str]:
        """The full ssh command line running `command` (a remote shell string) on the host."""
        return [
            "ssh", *self.ssh_options(), "-i", str(self.private_key), "-p", str(self.ssh_port),
            f"{self.user}@{self.address}", *command,
        ]  # fmt: skip

    def ssh(self, command: str, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `command` on the host over SSH as the admin user; raise on non-zero exit if `check`."""
        proc = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"ssh {self.name}: {command!r} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
            )
        return proc

    def info(self) -> dict[str, Any]:
        """JSON-ready description (what the CLI prints)."""
        data = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
        data["apt_proxy"] = self.apt_proxy
        data["ssh_command"] = " ".join(_shell_quote(a) if " " in a else a for a in self.ssh_argv())
        return data

    @classmethod
    def load(cls, state_dir: Path) -> TestHost:
        """The TestHost that up() recorded in `state_dir`."""
        data = json.loads((Path(state_dir) / HOST_FILE).read_text())
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {k: Path(v) if fields[k].type == "Path" else v for k, v in data.items() if k in fields}
        return cls(**kwargs)


class _State:
    """Resources up() has created (or is about to create), persisted after every change so that
    down() can undo a partial up() even from another process."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def set(self, **values: Any) -> None:
        self.data.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def up(
    name: str, workdir: Path, cache_dir: Path, *, ssh_timeout: float = SSH_TIMEOUT_S, owner_pid: int | None = None
) -> TestHost:
    """Boot a fresh test host called `name` and return it once SSH answers.

    State lives in ``workdir/name`` (leftovers of a crashed run there are torn down first).
    `cache_dir` holds the rootfs tarball and the apt-cacher-ng caches (``cache_dir/acng*``), reused
    between runs. On failure everything created is torn down and RuntimeError is raised with the
    relevant log tail (the console log for boot/SSH problems); the logs stay in ``workdir/name``.

    Names are machine-wide (they name the netns ``dsth-NAME``): a name registered by a live owner
    raises RuntimeError. `owner_pid` (default: this process) is the process whose death makes the
    host garbage for :func:`gc`; the CLI passes 0 for hosts that live until ``down``.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"test host name {name!r} must match {_NAME_RE.pattern}")
    if os.geteuid() != 0:
        raise RuntimeError("test hosts need root (netns, veth, loop devices, systemd-nspawn)")
    ensure_tools()
    cache_dir = Path(cache_dir).resolve()
    tarball = build_rootfs(cache_dir)
    state_dir = Path(workdir).resolve() / name
    _register(name, state_dir, os.getpid() if owner_pid is None else owner_pid)
    if state_dir.exists():
        _teardown(state_dir, unregister=False)
    state_dir.mkdir(parents=True)
    state = _State(state_dir)
    try:
        return _up(name, state_dir, state, tarball, cache_dir, ssh_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            _teardown(state_dir, keep_logs=True)
        raise


# Machine-wide registry of test hosts, so that hosts of a killed test run can be found and removed.
REGISTRY = Path("/run/devserver-testhost")


def _start_time(pid: int) -> str | None:
    """A process's start time (guards pid reuse), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(entry: dict[str, Any]) -> bool:
    """True if the registry entry's owner still runs (owner 0: lives until an explicit down)."""
    pid = int(entry.get("owner_pid", 0))
    return pid == 0 or (_start_time(pid) is not None and _start_time(pid) == entry.get("owner_start"))


def _register(name: str, state_dir: Path, owner_pid: int) -> None:
    """Claim `name` machine-wide; a stale claim (dead owner) is torn down first."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with _locked(REGISTRY / ".lock"):
        path = REGISTRY / f"{name}.json"
        with contextlib.suppress(OSError, ValueError):
            entry = json.loads(path.read_text())
            if Path(entry["state_dir"]) != state_dir and _owner_alive(entry):
                raise RuntimeError(f"test host name {name!r} is in use ({entry['state_dir']})")
            if Path(entry["state_dir"]) != state_dir:
                _teardown(Path(entry["state_dir"]), unregister=False)
        entry = {"state_dir": str(state_dir), "owner_pid": owner_pid, "owner_start": _start_time(owner_pid)}
        path.write_text(json.dumps(entry))


def _unregister(state_dir: Path) -> None:
    """Drop the registry entry that points at `state_dir`, if any."""
    with contextlib.suppress(OSError):
        for path in REGISTRY.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if Path(json.loads(path.read_text())["state_dir"]) == state_dir:
                    path.unlink()


def gc() -> list[str]:
    """Tear down every registered test host whose owner process has died (e.g. a test run that
    was killed before its fixtures could clean up). Returns the names removed."""
    removed = []
    for path in sorted(REGISTRY.glob("*.json")) if REGISTRY.exists() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            entry = json.loads(path.read_text())
            if not _owner_alive(entry):
                _teardown(Path(entry["state_dir"]))
                removed.append(path.stem)
    return removed


def _up(name: str, state_dir: Path, state: _State, tarball: Path, cache_dir: Path, ssh_timeout: float) -> TestHost:
    """The body of up(); the caller tears down on any exception."""
    root = state_dir / "root"
    state.set(name=name, root=str(root))
    _make_root_disk(state_dir, state, root)
    # A private copy of the rootfs: numeric owners and xattrs (file capabilities) kept as built.
    _run(["tar", "--zstd", "-xpf", str(tarball), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root)])

    key = state_dir / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"devserver-testhost-{name}", "-f", str(key)])
    _personalise(root, name, key.with_suffix(".pub").read_text())

    netns, _veth, host_addr, guest_addr = _make_network(name, state)

    # The second disk: sparse file behind a loop device, which keeps its name inside the container.
    image = state_dir / "data.img"
    with image.open("wb") as handle:
        handle.truncate(DATA_DISK_BYTES)
    state.set(data_image=str(image))
    loop = _run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    state.set(loop=loop)

    _start_acng(state_dir, state, cache_dir, host_addr)

    console = state_dir / "console.log"
    argv = [
        "systemd-nspawn",
        "--boot",
        f"--directory={root}",
        f"--machine={name}",
        # Host PID 1 is not systemd (cgroups v1): no machined registration, stay in our cgroup.
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns}",
        # The loop device node; the devices cgroup here allows all devices (we are not in a unit).
        f"--bind={loop}",
        "--resolv-conf=off",  # apt reaches the proxy by IP; keep the rootfs's empty resolv.conf
        "--link-journal=no",
        "--timezone=off",
        "--console=read-only",  # container console -> our stdout -> console.log, no tty needed
        "--setenv=SYSTEMD_COLORS=0",  # plain-text boot messages in console.log / error messages
    ]
    with console.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    state.set(nspawn_pid=proc.pid)

    host = TestHost(
        name=name,
        netns=netns,
        address=guest_addr,
        host_address=host_addr,
        user=ADMIN_USER,
        private_key=key,
        known_hosts=state_dir / "known_hosts",
        data_device=loop,
        machine_root=root,
        state_dir=state_dir,
        console_log=console,
    )
    _wait_for_ssh(host, proc, ssh_timeout)
    # Remember the container's pid namespace so down() can find every process of the container.
    own = _pidns(os.getpid())
    for child in _children(proc.pid):
        ns = _pidns(child)
        if ns and ns != own:
            state.set(container_pidns=ns)
            host = dataclasses.replace(host, pidns=ns)
    (state_dir / HOST_FILE).write_text(json.dumps(host.info(), indent=2))
    return host


def _make_root_disk(state_dir: Path, state: _State, root: Path) -> None:
    """Mount a fresh ext4 file system (sparse image on a loop device) at `root`.

    Why not a plain directory: on this machine's ext4 every file creation costs ~0.8 ms, so
    extracting the ~31k-file rootfs into a directory takes ~30 s; into an ext4 on a loop device it
    takes ~3 s, and later dpkg/DKMS work in the host is fast too. No journal and barrier=0: the disk
    is thrown away, and without them every fsync inside the host (dpkg does many) would reach the
    real disk through the loop device.
    """
    image = state_dir / "root.img"
    with image.open("wb") as handle:
        handle.truncate(ROOT_DISK_BYTES)
    state.set(root_image=str(image))
    loop = _run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    state.set(root_loop=loop)
    _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", "-L", "testhost-root", loop])
    root.mkdir()
    state.set(root_mounted=True)
    _run(["mount", "-o", "noinit_itable,barrier=0,noatime", loop, str(root)])


def _personalise(root: Path, name: str, pubkey: str) -> None:
    """Per-host identity in the copy: hostname, hosts, machine-id, the admin's authorized_keys."""
    (root / "etc/hostname").write_text(f"{name}\n")
    # sudo resolves the hostname; there is no DNS in the host, so /etc/hosts must have it.
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    uid, gid = _passwd_ids(root, ADMIN_USER)
    ssh_dir = root / "home" / ADMIN_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(pubkey)
    auth.chmod(0o600)
    for path in (ssh_dir, auth):
        os.chown(path, uid, gid)


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    """uid and gid of `user` in the rootfs's /etc/passwd (not this machine's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"user {user} missing from {root}/etc/passwd")


def _make_network(name: str, state: _State) -> tuple[str, str, str, str]:
    """Create netns + veth; the container end is eth0 with a static /30 and a default route via us.

    Returns (netns, host-side veth, host address, container address). The subnet index N is chosen
    under a machine-wide lock, skipping any 172.30.N.0/30 that collides with this machine's addresses
    or routes, or with another test host's veth.
    """
    netns = f"dsth-{name}"
    with _locked(ALLOC_LOCK):
        used = _used_networks()
        for index in range(256):
            subnet = ipaddress.ip_network(f"{SUBNET_BASE}.{index}.0/30")
            veth = f"dsth{index}"
            if not any(subnet.overlaps(net) for net in used) and not Path(f"/sys/class/net/{veth}").exists():
                break
        else:
            raise RuntimeError(f"no free {SUBNET_BASE}.N.0/30 subnet for a test host")
        host_addr, guest_addr = str(subnet[1]), str(subnet[2])
        state.set(netns=netns, veth=veth, host_address=host_addr, address=guest_addr)
        if Path(f"/run/netns/{netns}").exists():
            raise RuntimeError(f"network namespace {netns} already exists (another host named {name}?)")
        _run(["ip", "netns", "add", netns])
        # The peer is created directly inside the netns, so it can be called eth0 like a VM's NIC.
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "addr", "add", f"{host_addr}/30", "dev", veth])
        _run(["ip", "link", "set", veth, "up"])
    _run(["ip", "-n", netns, "link", "set", "lo", "up"])
    _run(["ip", "-n", netns, "addr", "add", f"{guest_addr}/30", "dev", "eth0"])
    _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    # Facts gathering (ansible_default_ipv4) wants a default route; nothing forwards beyond us.
    _run(["ip", "-n", netns, "route", "add", "default", "via", host_addr])
    return netns, veth, host_addr, guest_addr


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address in or a route to (default route excluded)."""
    nets = []
    addrs = _run(["ip", "-4", "-o", "addr", "show"]).stdout
    nets += [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", addrs)]
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        words = line.split()
        dest = words[1] if words and words[0] in ("local", "broadcast", "unicast") and len(words) > 1 else words[0]
        if dest != "default" and re.match(r"^[0-9./]+$", dest):
            nets.append(ipaddress.ip_network(dest, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


ACNG_CONF = """\
# Minimal apt-cacher-ng: a plain caching proxy. No Remap-* lines (the stock config remaps Debian
# to an empty backend list and answers 503) and no pass-through (CONNECT) patterns.
CacheDir: {cache}
LogDir: {logs}
SupportDir: /usr/lib/apt-cacher-ng
Port: {port}
BindAddress: {address}
SocketPath: {socket}
PidFile: {pidfile}
PassThroughPattern:
ExThreshold: 4
UnbufferLogs: 1
VerboseLog: 1
"""


ACNG_CACHE_SLOTS = 4


def _claim_acng_cache(cache_dir: Path, state_dir: Path) -> tuple[Path, int | None]:
    """Pick the apt cache directory for a new apt-cacher-ng instance, and the fd of its lock.

    apt-cacher-ng does not lock its cache files, so two instances must never share a cache
    directory at the same time. Slots ``cache_dir/acng``, ``acng-1``, … are persistent (fast
    re-runs); a slot is taken with a non-blocking flock whose fd is inherited by apt-cacher-ng, so
    it stays held exactly as long as that process lives (even if the test process dies). If every
    slot is busy, the instance gets a throwaway cache in `state_dir`.
    """
    for slot in range(ACNG_CACHE_SLOTS):
        cache = cache_dir / ("acng" if slot == 0 else f"acng-{slot}")
        cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir / f"{cache.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return cache, fd
    cache = state_dir / "acng-cache"
    cache.mkdir()
    return cache, None


def _start_acng(state_dir: Path, state: _State, cache_dir: Path, address: str) -> None:
    """Start this host's apt-cacher-ng on `address`:3142 and wait until it accepts connections."""
    conf_dir = state_dir / "acng"
    logs = conf_dir / "log"
    logs.mkdir(parents=True)
    cache, lock_fd = _claim_acng_cache(cache_dir, state_dir)
    (conf_dir / "acng.conf").write_text(
        ACNG_CONF.format(
            cache=cache, logs=logs, port=ACNG_PORT, address=address,
            socket=conf_dir / "socket", pidfile=conf_dir / "pid",
        )
    )  # fmt: skip
    log = conf_dir / "stdout.log"
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["apt-cacher-ng", "-c", str(conf_dir), "ForeGround=1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=() if lock_fd is None else (lock_fd,),
            )  # fmt: skip
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # the child's copy now holds the lock
    state.set(acng_pid=proc.pid, acng_conf=str(conf_dir), acng_cache=str(cache))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"apt-cacher-ng exited {proc.returncode} {ACNG_HINT}:\n{_tail(log)}\n{_tail(logs / 'apt-cacher.err')}"
            )
        with contextlib.suppress(OSError), socket.create_connection((address, ACNG_PORT), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"apt-cacher-ng did not listen on {address}:{ACNG_PORT}:\n{_tail(log)}")


# Shown when our apt-cacher-ng cannot start: the usual cause is the distribution's own service.
ACNG_HINT = "(a system apt-cacher-ng on *:3142 blocks the port: `service apt-cacher-ng stop`)"


def _wait_for_ssh(host: TestHost, nspawn: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll with a real `ssh … true` until it succeeds; fail early if nspawn dies, else at timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(
                f"systemd-nspawn for {host.name} exited {nspawn.returncode} before SSH came up; "
                f"console log {host.console_log}:\n{_tail(host.console_log)}"
            )
        try:
            proc = subprocess.run(host.ssh_argv("true"), capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            last = "ssh hung for 30 s"
            continue
        if proc.returncode == 0:
            return
        last = proc.stderr.strip()
        time.sleep(0.3)
    raise RuntimeError(
        f"SSH to {host.user}@{host.address} not ready after {timeout:.0f}s (last error: {last}); "
        f"console log {host.console_log}:\n{_tail(host.console_log)}"
    )


def down(host: TestHost) -> None:
    """Tear `host` down completely: container processes, apt-cacher-ng, loop device, veth, netns,
    and its state directory. Idempotent."""
    _teardown(host.state_dir)


def _teardown(state_dir: Path, *, keep_logs: bool = False, unregister: bool = True) -> None:
    """Undo whatever the state file in `state_dir` records, each step only if still present.

    Every step runs even if an earlier one failed; the first error is re-raised at the end.
    With `keep_logs` (used after a failed up()) the logs stay for inspection, the rest goes.
    """
    state_dir = Path(state_dir)
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((state_dir / STATE_FILE).read_text())
    errors: list[BaseException] = []

    def step(func: Any, *args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception as exc:  # collected; re-raised after the other steps have run
            errors.append(exc)

    step(_stop_container, data)
    if "acng_pid" in data:
        step(_stop_process, int(data["acng_pid"]), "apt-cacher-ng", grace_s=5.0)
    if "loop" in data and "data_image" in data:
        step(_detach_loop, data["loop"], data["data_image"])
    if "root" in data:
        step(_unmount, Path(data["root"]))
    if "root_loop" in data and "root_image" in data:
        step(_detach_loop, data["root_loop"], data["root_image"])
    if "netns" in data:
        step(_delete_network, data["netns"], data.get("veth"))
    step(_remove_dir, state_dir, keep_logs)
    if unregister and not errors:
        _unregister(state_dir)
    if errors:
        raise RuntimeError(f"teardown of {state_dir} incomplete: {errors[0]}") from errors[0]


def _stop_container(data: dict[str, Any]) -> None:
    """Halt the container (nspawn turns SIGTERM into a clean poweroff), then make sure nothing of
    it survives: SIGKILL anything left in its pid namespace."""
    namespaces = set()
    if data.get("container_pidns"):
        namespaces.add(data["container_pidns"])
    pid = data.get("nspawn_pid")
    marker = f"--machine={data.get('name')}"
    if pid is not None and _pid_alive(int(pid), marker):
        # Learn the pid namespace now, in case up() failed before recording it.
        own = _pidns(os.getpid())
        namespaces.update(ns for child in _children(int(pid)) if (ns := _pidns(child)) and ns != own)
        _stop_process(int(pid), marker, grace_s=15.0)
    for ns in namespaces:
        for _ in range(50):
            pids = _pids_in_pidns(ns)
            if not pids:
                break
            for leftover in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
            time.sleep(0.1)
        else:
            raise RuntimeError(f"processes in container pid namespace {ns} survived SIGKILL")


def _unmount(path: Path) -> None:
    """Unmount everything at or below `path` (the container is stopped by now, so nothing is busy;
    a lazy unmount is the fallback so that teardown still completes)."""
    for point in _mounts_under(path):
        if _run(["umount", point], check=False).returncode != 0:
            _run(["umount", "--lazy", point])


def _detach_loop(loop: str, image: str) -> None:
    """Detach `loop` if it is still backed by our image (a reused loop number is someone else's)."""
    proc = _run(["losetup", "--noheadings", "--output", "BACK-FILE", loop], check=False)
    if proc.returncode == 0 and proc.stdout.strip().removesuffix(" (deleted)") == image:
        _run(["losetup", "--detach", loop])


def _delete_network(netns: str, veth: str | None) -> None:
    """Delete the netns (which destroys its veth end and so the pair) and any stray host end."""
    if Path(f"/run/netns/{netns}").exists():
        _run(["ip", "netns", "delete", netns])
    if veth and Path(f"/sys/class/net/{veth}").exists():
        proc = _run(["ip", "link", "delete", veth], check=False)
        if proc.returncode != 0 and Path(f"/sys/class/net/{veth}").exists():
            raise RuntimeError(f"cannot delete {veth}: {proc.stderr}")


def _remove_dir(state_dir: Path, keep_logs: bool) -> None:
    """Remove the state dir, refusing to recurse into anything still mounted there."""
    if not state_dir.exists():
        return
    _unmount(state_dir)
    if _mounts_under(state_dir):
        raise RuntimeError(f"still mounted under {state_dir}: {_mounts_under(state_dir)}")
    if not keep_logs:
        shutil.rmtree(state_dir)
        return
    for entry in state_dir.iterdir():
        if entry.name in ("root", "root.img", "data.img"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def leftovers(host: TestHost) -> list[str]:
    """What of `host` still exists on this machine (empty after a complete down()): its netns, the
    veth's address, loop devices over its files, its processes (nspawn, apt-cacher-ng, anything in
    the container's pid namespace), its mounts and its directory."""
    found = []
    if Path(f"/run/netns/{host.netns}").exists():
        found.append(f"netns {host.netns}")
    veth = _run(["ip", "-o", "addr", "show", "to", f"{host.host_address}/32"], check=False).stdout
    if veth.strip():
        found.append(f"host address {host.host_address}: {veth.strip()}")
    loops = _run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], check=False).stdout
    if str(host.state_dir) in loops:
        found.append(f"loop device: {loops.strip()}")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = " ".join(_pid_cmdline(int(entry.name)))
            if str(host.state_dir) in argv or (host.pidns and _pidns(int(entry.name)) == host.pidns):
                found.append(f"process {entry.name}: {argv}")
    if Path(f"/run/systemd/nspawn/propagate/{host.name}").exists():
        found.append(f"nspawn propagate dir /run/systemd/nspawn/propagate/{host.name}")
    found += [f"mount {point}" for point in _mounts_under(host.state_dir)]
    if host.state_dir.exists():
        found.append(f"directory {host.state_dir}")
    return found


# --------------------------------------------------------------------------------------------------
# CLI


def default_cache_dir() -> Path:
    """$DEVSERVER_TEST_CACHE, else ~/.cache/devserver-tests (shared with the pytest fixtures)."""
    env = os.environ.get("DEVSERVER_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devserver-tests"


def default_workdir() -> Path:
    """$DEVSERVER_TESTHOST_DIR, else /var/tmp/devserver-testhosts (CLI hosts live here)."""
    return Path(os.environ.get("DEVSERVER_TESTHOST_DIR", "/var/tmp/devserver-testhosts"))


def main(argv: Sequence[str] | None = None) -> int:
    """``up NAME`` prints the host's JSON info; ``down NAME`` tears it down; ``ssh NAME [CMD…]``
    execs ssh into it; ``info NAME`` prints the JSON again; ``build`` only builds the rootfs;
    ``gc`` removes hosts left by killed test runs. Hosts made by the CLI live until ``down``."""
    parser = argparse.ArgumentParser(prog="testhost", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=default_workdir())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="build (or find) the cached rootfs tarball")
    sub.add_parser("gc", help="tear down hosts whose owning process died (e.g. a killed test run)")
    for action in ("up", "down", "info"):
        sub.add_parser(action).add_argument("name")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("name")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.action == "build":
        print(build_rootfs(args.cache_dir))
        return 0
    if args.action == "gc":
        print("\n".join(gc()))
        return 0
    state_dir = args.workdir.resolve() / args.name
    if args.action == "up":
        started = time.monotonic()
        host = up(args.name, args.workdir, args.cache_dir, owner_pid=0)
        print(json.dumps(host.info() | {"up_seconds": round(time.monotonic() - started, 1)}, indent=2))
        return 0
    if args.action == "down":
        _teardown(state_dir)
        return 0
    try:
        host = TestHost.load(state_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            print(f"no test host {args.name!r} in {args.workdir}", file=sys.stderr)
            return 1
        raise
    if args.action == "info":
        print(json.dumps(host.info(), indent=2))
        return 0
    command = host.ssh_argv(*args.command)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
