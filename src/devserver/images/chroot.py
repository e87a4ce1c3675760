"""The chroot builder's runtime: a root filesystem made ready for package installs, and the playbooks run in it.

Contracts:

* :func:`prepared` mounts /proc, /sys (read-only), /dev, /dev/pts, /dev/shm and a tmpfs /run inside `rootfs`, forbids
  service starts (``/usr/sbin/policy-rc.d`` exiting 101), gives apt the build host's resolver configuration
  (bind-mounted over the image's ``/etc/resolv.conf`` from a copy on the tmpfs, so nothing of the host is written
  into the image), and tells dpkg not to fsync every file it unpacks (``force-unsafe-io`` in a dpkg.cfg.d file of
  devserver's own, as mmdebstrap does for the base: a build that dies is thrown away, so durability per file buys
  nothing and costs minutes for the driver, CUDA and their headers). On exit — normal, an exception,
  KeyboardInterrupt — every process whose root is inside `rootfs` is killed, every mount undone, the dpkg setting
  removed (the image keeps dpkg's safe default) and the image's own policy-rc.d (if any) put back; SIGINT is held
  off while that runs, and delivered afterwards. Entering it for a root already prepared by this process changes
  nothing.
* :func:`run_playbook` runs ``playbooks/devserver.yml`` or ``playbooks/image.yml`` inside `rootfs` (prepared for the
  duration) through devserver's own ``devserver_chroot`` connection plugin and returns the run's
  :class:`~devserver.runner.RunSummary`; a KeyboardInterrupt stops ansible-playbook before it propagates.

Needs root and util-linux ``mount``/``umount``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from devserver import sysutil
from devserver.errors import DevserverError
from devserver.runner import RunSummary, TaskEvent

PLAYBOOKS = ("devserver.yml", "image.yml")
# The inventory name of the image in a chroot run (what RunSummary.hosts is keyed by).
HOST = "image"
POLICY_RC_D = "usr/sbin/policy-rc.d"
# invoke-rc.d's contract (/usr/share/doc/init-system-helpers/README.policy-rc.d): 101 = action forbidden.
POLICY_RC_D_SCRIPT = "#!/bin/sh\n# Written by devserver while it builds this image: no service starts.\nexit 101\n"
DPKG_UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/devserver-build-unsafe-io"
# Where the host's resolver configuration is copied (on the /run tmpfs) for the bind mount over etc/resolv.conf.
RESOLV_COPY = "run/devserver-resolv.conf"
TERM_GRACE_S = 5.0

# (mount point inside the root, mount(8) arguments); mounted in this order, undone in reverse.
_MOUNTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("proc", ("-t", "proc", "-o", "nosuid,nodev,noexec", "proc")),
    ("sys", ("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs")),
    ("dev", ("--bind", "/dev")),
    ("dev/pts", ("--bind", "/dev/pts")),
    ("dev/shm", ("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "shm")),
    ("run", ("-t", "tmpfs", "-o", "nosuid,nodev,mode=0755", "run")),
)

_active: set[Path] = set()
_active_lock = threading.Lock()


class ChrootError(DevserverError):
    """The root filesystem cannot be prepared (not a rootfs, not root, a mount failed), with the reason."""

    def __init__(self, message: str, fix: str = "run as root on a local filesystem") -> None:
        super().__init__("chroot", message, fix)


@contextlib.contextmanager
def prepared(rootfs: Path) -> Iterator[Path]:
    """`rootfs` (resolved) ready for a playbook; see the module docstring for what is set up and undone."""
    root = Path(rootfs).resolve()
    with _active_lock:
        nested = root in _active
        if not nested:
            _active.add(root)
    if nested:
        yield root
        return
    undo: list[Callable[[], None]] = []
    try:
        _check_root(root)
        for point, args in _MOUNTS:
            _mount(root, point, args, undo)
        _forbid_service_starts(root, undo)
        _unsafe_dpkg_io(root, undo)
        _host_resolver(root, undo)
        yield root
    finally:
        with _sigint_held():
            _kill_processes_in(root)
            errors = []
            for step in reversed(undo):
                try:
                    step()
                except ChrootError as exc:
                    errors.append(exc.message)
            with _active_lock:
                _active.discard(root)
        if errors:
            raise ChrootError("; ".join(errors))


def run_playbook(
    rootfs: Path,
    playbook: str,
    extravars: dict[str, object],
    *,
    tags: Sequence[str] = (),
    on_event: Callable[[TaskEvent | str], None] | None = None,
) -> RunSummary:
    """Run playbooks/`playbook` inside `rootfs` (prepared for the run) and summarise it. `tags` selects roles or
    phases (<role>, <role>_install, <role>_configure); `on_event` as in :func:`devserver.runner.run`. Raises
    ValueError for a playbook other than devserver.yml / image.yml."""
    from devserver import runner

    if playbook not in PLAYBOOKS:
        raise ValueError(f"playbook {playbook!r}: a chroot build runs one of {', '.join(PLAYBOOKS)}")
    with prepared(rootfs) as root:
        return runner.run(playbook, inventory(root), extravars, tags=tags, on_event=on_event)


def inventory(root: Path) -> dict[str, object]:
    """The one-host inventory of a chroot run: devserver's connection plugin, no become (the build runs as root),
    the image's own python3, Ansible's remote temp files on the /run tmpfs (gone with it)."""
    return {
        "all": {
            "hosts": {
                HOST: {
                    "ansible_connection": "devserver_chroot",
                    "ansible_host": str(root),
                    "ansible_become": False,
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_remote_tmp": "/run/.ansible-devserver",
                    "ansible_pipelining": True,
                }
            }
        }
    }


def _check_root(root: Path) -> None:
    if os.geteuid() != 0:
        raise ChrootError("a chroot build needs root (mount, chroot): run it with sudo")
    if not (root / "etc").is_dir() or not (root / "usr" / "bin").is_dir():
        raise ChrootError(f"{root} is not a root filesystem (no etc/ or usr/bin/): extract a base image into it")
    if mounted_under(root):
        raise ChrootError(
            f"{root} already has mounts under it ({', '.join(mounted_under(root))}): another build is using it, "
            "or an earlier one was killed; unmount them first"
        )


def _mount(root: Path, point: str, args: tuple[str, ...], undo: list[Callable[[], None]]) -> None:
    target = root / point
    # A symlink here (e.g. an image's /dev/shm -> /run/shm) would make mount(8) follow it out of the root.
    if target.is_symlink():
        raise ChrootError(f"{target} is a symlink: refusing to mount over it")
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _mount_errors():
        sysutil.mount(target, *args, private=True)
    undo.append(lambda: _umount(root, target))


def _umount(root: Path, target: Path) -> None:
    """Unmount `target`; processes still inside the root keep it busy, so they are killed and it is retried."""
    with _mount_errors():
        sysutil.unmount(target, retries=2, before_retry=lambda: _kill_processes_in(root))


@contextlib.contextmanager
def _mount_errors() -> Iterator[None]:
    """mount(8)'s failures raised as ChrootError, the error callers of this module handle."""
    try:
        yield
    except sysutil.MountError as exc:
        raise ChrootError(exc.message) from None


def _forbid_service_starts(root: Path, undo: list[Callable[[], None]]) -> None:
    path = root / POLICY_RC_D
    saved = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if path.is_symlink():
        raise ChrootError(f"{path} is a symlink: refusing to replace it")
    mode = path.stat().st_mode & 0o7777 if saved is not None else 0o755
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(POLICY_RC_D_SCRIPT)
    path.chmod(0o755)

    def restore() -> None:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)
            path.chmod(mode)

    undo.append(restore)


def _unsafe_dpkg_io(root: Path, undo: list[Callable[[], None]]) -> None:
    path = root / DPKG_UNSAFE_IO
    if path.is_symlink():
        raise ChrootError(f"{path} is a symlink: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by devserver while it builds this image; removed when the build leaves the tree.\nforce-unsafe-io\n"
    )
    undo.append(lambda: path.unlink(missing_ok=True))


def _host_resolver(root: Path, undo: list[Callable[[], None]]) -> None:
    """The host's resolv.conf, seen at the image's /etc/resolv.conf (or where its symlink points) for the run."""
    host = Path("/etc/resolv.conf")
    copy = root / RESOLV_COPY
    copy.write_bytes(host.read_bytes() if host.exists() else b"")
    target = _inside(root, Path("etc/resolv.conf"))
    created = not target.exists()
    if created:
        # absent, or a symlink to a file that only exists on a running system (systemd-resolved's stub in /run)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    with _mount_errors():
        sysutil.mount(target, "--bind", str(copy))

    def unbind() -> None:
        _umount(root, target)
        if created:
            target.unlink(missing_ok=True)

    undo.append(unbind)


def _inside(root: Path, relative: Path) -> Path:
    """`relative` resolved the way a process chrooted into `root` sees it: symlinks are followed inside the root."""
    current = Path("/")
    parts = list(relative.parts)
    hops = 0
    while parts:
        candidate = Path(os.path.normpath(current / parts.pop(0)))
        on_host = root / candidate.relative_to("/")
        if not on_host.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > 40:
            raise ChrootError(f"{root / relative}: too many levels of symbolic links")
        link = Path(os.readlink(on_host))
        if link.is_absolute():
            current, parts = Path("/"), [*link.parts[1:], *parts]
        else:
            parts = [*link.parts, *parts]
    return root / current.relative_to("/")


def mounted_under(root: Path) -> list[str]:
    """Mount points strictly below `root` in this mount namespace, deepest first."""
    return sysutil.mounts_under(root, strictly_below=True)


def processes_in(root: Path) -> list[int]:
    """PIDs of the processes whose root directory is `root` or below it."""
    prefix = str(root)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            proc_root = os.readlink(entry / "root")
        except OSError:
            continue  # gone, or a kernel thread
        if proc_root == prefix or proc_root.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found


def _kill_processes_in(root: Path) -> None:
    """SIGTERM every process inside `root`, then SIGKILL what is left after TERM_GRACE_S."""
    pids = processes_in(root)
    if not pids:
        return
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while (pids := processes_in(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(pids, signal.SIGKILL)
    deadline = time.monotonic() + TERM_GRACE_S
    while processes_in(root) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT in this thread while cleaning up; one that arrived meanwhile is delivered on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
