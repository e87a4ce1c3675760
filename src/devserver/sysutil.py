"""File locks and mounts, shared by the image builders and the development tools (devtools/, test hosts and fixtures).

Contracts:

* :func:`tree_hash` and :func:`digest` name inputs: a sha256 over a tree's relative paths and file contents, and over
  a JSON-able value (the image builds' inputs hash, `devserver update`'s converge stamp).
* :func:`file_lock` holds an exclusive ``flock`` on a file (created, with its folder, when absent) for the duration of
  a ``with`` block, waiting until no other process holds it. The lock belongs to the open file, so a process that dies
  never leaves it held.
* :func:`mounts_under` lists the mount points at or strictly below a path in this mount namespace, deepest first: the
  order to unmount them in.
* :func:`mount` runs ``mount ARGS TARGET``; with ``private=True`` it then makes the new mount private, and undoes it
  when that fails, so on any error nothing stays mounted. :func:`unmount` unmounts one mount point, retrying a busy one
  after the caller's ``before_retry`` (which stops what keeps it busy), and detaches it lazily as the last resort. Both
  raise :class:`MountError` with mount(8)'s message.

Standard library only (:mod:`devserver.errors` is too): ``scripts/testhost`` runs devtools with the system python3,
which need not have a virtual environment. Needs util-linux ``mount``/``umount`` (and root) for the mount helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from devserver.errors import DevserverError

RETRY_PAUSE_S = 0.2
MOUNTINFO = Path("/proc/self/mountinfo")


class MountError(DevserverError):
    """mount(8) or umount(8) failed: `where` is the mount point, `message` quotes the command and its error."""

    def __init__(self, target: Path | str, message: str) -> None:
        super().__init__(str(target), message, f"run as root, and see what holds it: findmnt -R {target}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created with its parent folders when absent) while the block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mounts_under(path: Path, *, strictly_below: bool = False, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Mount points at `path` (resolved) or below it in this mount namespace (as `mountinfo` lists them), deepest
    first; with `strictly_below`, `path` itself is left out."""
    prefix = str(Path(path).resolve())
    points = []
    for line in Path(mountinfo).read_text().splitlines():
        # mountinfo escapes blanks and backslashes in paths as octal (\040).
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix + "/") or (point == prefix and not strictly_below):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def mount(target: Path, *args: str, private: bool = False) -> None:
    """``mount ARGS TARGET``; with `private`, also ``mount --make-private TARGET``, so that a bind of a shared mount
    (the host's /dev on systemd hosts) does not join its peer group and leak what is mounted below it later. Raises
    MountError; when making it private fails, the new mount is undone first."""
    _mount_command(target, ["mount", *args, str(target)])
    if private:
        try:
            _mount_command(target, ["mount", "--make-private", str(target)])
        except MountError:
            with contextlib.suppress(MountError):
                unmount(target)
            raise


def unmount(target: Path | str, *, retries: int = 0, before_retry: Callable[[], None] | None = None) -> None:
    """Unmount `target`. A failed attempt is retried up to `retries` times, each after `before_retry` (say, killing
    the processes that keep it busy) and a short pause; then the mount is detached lazily (the kernel frees it when
    its last open file closes). Raises MountError when even that fails."""
    for attempt in range(retries + 1):
        if subprocess.run(["umount", str(target)], capture_output=True, text=True, check=False).returncode == 0:
            return
        if attempt < retries:
            if before_retry is not None:
                before_retry()
            time.sleep(RETRY_PAUSE_S)
    proc = subprocess.run(["umount", "--lazy", str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MountError(target, f"cannot unmount {target}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def _mount_command(target: Path, argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MountError(target, f"{' '.join(argv)} failed: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def tree_hash(root: Path, parts: tuple[str, ...]) -> str:
    """sha256 over the relative paths and contents of every file under `root`/`parts` (sorted, caches skipped)."""
    hasher = hashlib.sha256()
    for part in parts:
        base = root / part
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            hasher.update(str(path.relative_to(root)).encode() + b"\0")
            hasher.update(hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()


def digest(value: object) -> str:
    """sha256 of `value` as sorted JSON (anything else as its str)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
