"""The machine test hosts run on: its commands, its processes, and the tools a test host needs installed.

Contracts:

* :func:`run` runs a command capturing text; a failure (with ``check``) raises RuntimeError quoting its output.
* :func:`stop_process` ends a process this machine started, identified by pid *and* a marker in its argv (a recycled
  pid is left alone): SIGTERM, a grace period, then SIGKILL; RuntimeError if it survives that.
* :func:`ensure_tools` installs the Debian packages of missing tools (needs root and Debian's archive).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run(argv: Sequence[str], *, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command capturing text output; on failure raise with its stderr (not just the code)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc


def tail(path: Path, lines: int = 60) -> str:
    """Last lines of a log file, or a note that it is missing (used in error messages)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def pid_cmdline(pid: int) -> list[str]:
    """A process's argv, or [] if it is gone (or a zombie, which has an empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its argv contains `marker` (guards against a recycled pid)."""
    return any(marker in arg for arg in pid_cmdline(pid))


def pidns(pid: int) -> str | None:
    """The pid namespace id of a process (``pid:[4026...]``), or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct children of a process (all threads)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def pids_in_pidns(ns: str) -> list[int]:
    """Every process whose pid namespace is `ns`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pidns(int(entry.name)) == ns:
            found.append(int(entry.name))
    return found


def stop_process(pid: int, marker: str, *, grace_s: float) -> None:
    """SIGTERM `pid` (if it is still the process we started), wait `grace_s`, then SIGKILL."""
    if not pid_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, marker):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid, marker):
            return
        time.sleep(0.1)
    raise RuntimeError(f"process {pid} ({marker}) survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect a child's exit status if it is ours, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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
        if run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env).returncode != 0:
            run(["apt-get", "update", "-q"], env=env)
            run(["apt-get", "install", "-y", "-q", *missing], env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if "apt-cacher-ng" in missing:
        run(["update-rc.d", "apt-cacher-ng", "disable"], check=False)
        run(["service", "apt-cacher-ng", "stop"], check=False)
