"""Booted test hosts: up() and down(), the registry that finds hosts of killed runs, and leftover checks.

See :mod:`devtools.testhost` for what a test host is and the contracts of :func:`up`, :func:`down` and :func:`gc`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from devserver import sysutil
from devtools.testhost import network
from devtools.testhost.machine import (
    children,
    ensure_tools,
    pid_alive,
    pid_cmdline,
    pidns,
    pids_in_pidns,
    run,
    stop_process,
    tail,
)
from devtools.testhost.rootfs import ADMIN_USER, build_rootfs, shell_quote

# daemon.json keys that let dockerd start inside a test host: the container has no CAP_NET_ADMIN, so no iptables,
# no forwarding and no bridge (tests and bench/update_noop.py write them before the roles run; the roles keep them).
DOCKERD_NETWORK_SETTINGS = {"iptables": False, "ip-forward": False, "bridge": "none"}
DATA_DISK_BYTES = 2 * 1024**3
# Sparse: only what the host writes takes space. Room for the NVIDIA driver, DKMS and CUDA toolkit.
ROOT_DISK_BYTES = 24 * 1024**3
SSH_TIMEOUT_S = 90.0
STATE_FILE = "state.json"
HOST_FILE = "host.json"


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
        return f"http://{self.host_address}:{network.ACNG_PORT}"

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
        data["ssh_command"] = " ".join(shell_quote(a) if " " in a else a for a in self.ssh_argv())
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
        teardown(state_dir, unregister=False)
    state_dir.mkdir(parents=True)
    state = _State(state_dir)
    try:
        return _up(name, state_dir, state, tarball, cache_dir, ssh_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(state_dir, keep_logs=True)
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
    with sysutil.file_lock(REGISTRY / ".lock"):
        path = REGISTRY / f"{name}.json"
        with contextlib.suppress(OSError, ValueError):
            entry = json.loads(path.read_text())
            if Path(entry["state_dir"]) != state_dir and _owner_alive(entry):
                raise RuntimeError(f"test host name {name!r} is in use ({entry['state_dir']})")
            if Path(entry["state_dir"]) != state_dir:
                teardown(Path(entry["state_dir"]), unregister=False)
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
                teardown(Path(entry["state_dir"]))
                removed.append(path.stem)
    return removed


def _up(name: str, state_dir: Path, state: _State, tarball: Path, cache_dir: Path, ssh_timeout: float) -> TestHost:
    """The body of up(); the caller tears down on any exception."""
    root = state_dir / "root"
    state.set(name=name, root=str(root))
    _make_root_disk(state_dir, state, root)
    # A private copy of the rootfs: numeric owners and xattrs (file capabilities) kept as built.
    run(["tar", "--zstd", "-xpf", str(tarball), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root)])

    key = state_dir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"devserver-testhost-{name}", "-f", str(key)])
    _personalise(root, name, key.with_suffix(".pub").read_text())

    netns, _veth, host_addr, guest_addr = network.make_network(name, state.set)

    # The second disk: sparse file behind a loop device, which keeps its name inside the container.
    image = state_dir / "data.img"
    with image.open("wb") as handle:
        handle.truncate(DATA_DISK_BYTES)
    state.set(data_image=str(image))
    loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    state.set(loop=loop)

    network.start_acng(state_dir, state.set, cache_dir, host_addr)

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
    own = pidns(os.getpid())
    for child in children(proc.pid):
        ns = pidns(child)
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
    loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    state.set(root_loop=loop)
    run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", "-L", "testhost-root", loop])
    root.mkdir()
    state.set(root_mounted=True)
    sysutil.mount(root, "-o", "noinit_itable,barrier=0,noatime", loop)


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


def _wait_for_ssh(host: TestHost, nspawn: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll with a real `ssh … true` until it succeeds; fail early if nspawn dies, else at timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(
                f"systemd-nspawn for {host.name} exited {nspawn.returncode} before SSH came up; "
                f"console log {host.console_log}:\n{tail(host.console_log)}"
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
        f"console log {host.console_log}:\n{tail(host.console_log)}"
    )


def down(host: TestHost) -> None:
    """Tear `host` down completely: container processes, apt-cacher-ng, loop device, veth, netns,
    and its state directory. Idempotent."""
    teardown(host.state_dir)


def teardown(state_dir: Path, *, keep_logs: bool = False, unregister: bool = True) -> None:
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
        step(stop_process, int(data["acng_pid"]), "apt-cacher-ng", grace_s=5.0)
    if "loop" in data and "data_image" in data:
        step(_detach_loop, data["loop"], data["data_image"])
    if "root" in data:
        step(_unmount, Path(data["root"]))
    if "root_loop" in data and "root_image" in data:
        step(_detach_loop, data["root_loop"], data["root_image"])
    if "netns" in data:
        step(network.delete_network, data["netns"], data.get("veth"))
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
    if pid is not None and pid_alive(int(pid), marker):
        # Learn the pid namespace now, in case up() failed before recording it.
        own = pidns(os.getpid())
        namespaces.update(ns for child in children(int(pid)) if (ns := pidns(child)) and ns != own)
        stop_process(int(pid), marker, grace_s=15.0)
    for ns in namespaces:
        for _ in range(50):
            pids = pids_in_pidns(ns)
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
    for point in sysutil.mounts_under(path):
        sysutil.unmount(point)


def _detach_loop(loop: str, image: str) -> None:
    """Detach `loop` if it is still backed by our image (a reused loop number is someone else's)."""
    proc = run(["losetup", "--noheadings", "--output", "BACK-FILE", loop], check=False)
    if proc.returncode == 0 and proc.stdout.strip().removesuffix(" (deleted)") == image:
        run(["losetup", "--detach", loop])


def _remove_dir(state_dir: Path, keep_logs: bool) -> None:
    """Remove the state dir, refusing to recurse into anything still mounted there."""
    if not state_dir.exists():
        return
    _unmount(state_dir)
    if mounted := sysutil.mounts_under(state_dir):
        raise RuntimeError(f"still mounted under {state_dir}: {mounted}")
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
    veth = run(["ip", "-o", "addr", "show", "to", f"{host.host_address}/32"], check=False).stdout
    if veth.strip():
        found.append(f"host address {host.host_address}: {veth.strip()}")
    loops = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], check=False).stdout
    if str(host.state_dir) in loops:
        found.append(f"loop device: {loops.strip()}")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = " ".join(pid_cmdline(int(entry.name)))
            if str(host.state_dir) in argv or (host.pidns and pidns(int(entry.name)) == host.pidns):
                found.append(f"process {entry.name}: {argv}")
    if Path(f"/run/systemd/nspawn/propagate/{host.name}").exists():
        found.append(f"nspawn propagate dir /run/systemd/nspawn/propagate/{host.name}")
    found += [f"mount {point}" for point in sysutil.mounts_under(host.state_dir)]
    if host.state_dir.exists():
        found.append(f"directory {host.state_dir}")
    return found


def default_cache_dir() -> Path:
    """$DEVSERVER_TEST_CACHE, else ~/.cache/devserver-tests (shared with the pytest fixtures)."""
    env = os.environ.get("DEVSERVER_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devserver-tests"


def default_workdir() -> Path:
    """$DEVSERVER_TESTHOST_DIR, else /var/tmp/devserver-testhosts (CLI hosts live here)."""
    return Path(os.environ.get("DEVSERVER_TESTHOST_DIR", "/var/tmp/devserver-testhosts"))  # noqa: S108 (root only)
