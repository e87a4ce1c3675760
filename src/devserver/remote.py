"""Fabric (SSH) adapter: the reachability check before Ansible starts, `devserver ssh/exec`, and the probe behind
`devserver status`.

Contract: every function here raises :class:`RemoteError` with a message a user can act on (unreachable, wrong key,
host key changed, sudo refused, unsupported OS) — never a raw paramiko/socket traceback.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devserver.errors import DevserverError
from devserver.hosts import Host

SUPPORTED_OS = {("debian", "12"): "debian-12", ("ubuntu", "22.04"): "ubuntu-22.04", ("ubuntu", "24.04"): "ubuntu-24.04"}


class RemoteError(DevserverError):
    """A host (its `where`: user@address:port) could not be used; `fix` says what to do about it."""

    def __init__(self, host: Host, message: str, fix: str) -> None:
        super().__init__(f"{host.user}@{host.address}:{host.port}", message, fix)
        self.host = host


@dataclass(frozen=True)
class Preflight:
    host: Host
    os: str  # one of SUPPORTED_OS's values
    kernel: str
    python: str  # the host's python3, handed to Ansible so that it skips interpreter discovery
    python_apt: bool  # python3-apt installed: Ansible's apt module can run under Mitogen


@contextmanager
def connect(host: Host, *, known_hosts: Path | None = None, timeout: float = 15) -> Iterator[Any]:
    """An open Fabric connection. Unknown host keys are accepted (a fresh VM); a changed one is refused."""
    import fabric
    import paramiko

    connect_kwargs: dict[str, Any] = {"timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout}
    if host.key_file is not None:
        connect_kwargs["key_filename"] = str(host.key_file)
        connect_kwargs["look_for_keys"] = False
    connection = fabric.Connection(host.address, user=host.user, port=host.port, connect_kwargs=connect_kwargs)
    client = connection.client
    if known_hosts is not None and known_hosts.exists():
        client.load_host_keys(str(known_hosts))
    # Accept-new: a first contact with a new VM is expected; a key that differs from a known one is not.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        connection.open()
    except paramiko.BadHostKeyException:
        raise RemoteError(
            host,
            "its SSH host key differs from the one in known_hosts",
            "if the host was rebuilt, remove its old key: ssh-keygen -R ADDRESS",
        ) from None
    except paramiko.AuthenticationException:
        raise RemoteError(
            host,
            f"SSH login as {host.user} was refused (wrong key or user)",
            "pass the right key with --key, or the right user in user@host",
        ) from None
    except TimeoutError:
        raise RemoteError(
            host,
            "SSH did not answer (timed out)",
            "check the address, that the host is up, and that your network is in ssh.allowed_cidrs",
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(host, f"cannot connect over SSH ({exc})", "check the address and port") from None
    try:
        yield connection
    finally:
        connection.close()


def preflight(host: Host, *, known_hosts: Path | None = None) -> Preflight:
    """Reach the host, check sudo works without a password, the OS is supported and python3 is there."""
    with connect(host, known_hosts=known_hosts) as connection:
        sudo = connection.run("sudo -n true", hide=True, warn=True, in_stream=False)
        if sudo.exited != 0:
            raise RemoteError(
                host,
                f"sudo without a password is refused for {host.user}",
                f"give {host.user} passwordless sudo (cloud-init does this on devserver VMs)",
            )
        release = connection.run(_RELEASE_PROBE, hide=True, warn=True, in_stream=False).stdout
    fields = dict(line.split("=", 1) for line in release.splitlines() if "=" in line and not line.startswith("#"))
    os_id = fields.get("ID", "").strip('"')
    version = fields.get("VERSION_ID", "").strip('"')
    os_name = SUPPORTED_OS.get((os_id, version))
    if os_name is None:
        pretty = fields.get("PRETTY_NAME", f"{os_id} {version}").strip('"')
        raise RemoteError(
            host, f"runs {pretty}, which devserver does not support", "use Debian 12, Ubuntu 22.04 or Ubuntu 24.04"
        )
    python = fields.get(_PYTHON_KEY, "")
    if not python:
        raise RemoteError(host, "has no python3, which Ansible needs", "install it: sudo apt-get install -y python3")
    kernel = release.strip().splitlines()[-1]
    apt = fields.get(_PYTHON_APT_KEY, "") == "installed"
    return Preflight(host=host, os=os_name, kernel=kernel, python=python, python_apt=apt)


# One round trip: os-release's lines, then the host's python3 (empty when there is none) and python3-apt's dpkg
# status on lines of their own, then the running kernel.
_PYTHON_KEY = "DEVSERVER_PYTHON3"
_PYTHON_APT_KEY = "DEVSERVER_PYTHON3_APT"
_RELEASE_PROBE = (
    f"cat /etc/os-release; printf '{_PYTHON_KEY}=%s\\n' \"$(command -v python3)\"; "
    f"printf '{_PYTHON_APT_KEY}=%s\\n' \"$(dpkg-query -W -f='${{db:Status-Status}}' python3-apt 2>/dev/null)\"; "
    "uname -r"
)


def run_command(host: Host, command: str, *, known_hosts: Path | None = None) -> int:
    """Run `command` on the host with its output streamed to ours; returns its exit code."""
    with connect(host, known_hosts=known_hosts) as connection:
        result = connection.run(command, warn=True, pty=False, in_stream=False)
        return int(result.exited)


def probe(host: Host, *, known_hosts: Path | None = None, args: str = "{}") -> dict[str, Any]:
    """The host-state probe (:mod:`devserver.hoststate.probe`) run as root in one SSH round trip: its raw JSON, for
    :func:`devserver.hoststate.observed.parse`. `args`: :func:`devserver.hoststate.probe.script_args`."""
    with connect(host, known_hosts=known_hosts) as connection:
        return _probe(connection, host, args)


def probe_with_stamp(host: Host, *, known_hosts: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The host-state probe and the converge stamp (:mod:`devserver.stamp`: the stamp found and the host's
    fingerprint now), over one SSH connection."""
    with connect(host, known_hosts=known_hosts) as connection:
        return _probe(connection, host, "{}"), _stamp(connection, host, "read")


def write_stamp(host: Host, inputs: str, *, known_hosts: Path | None = None) -> None:
    """Record on the host that a converge of `inputs` finished and left it as it is now."""
    with connect(host, known_hosts=known_hosts) as connection:
        _stamp(connection, host, "write", inputs)


_DONE = {"read": "read", "write": "written"}


def _stamp(connection: Any, host: Host, *mode: str) -> dict[str, Any]:
    from devserver.stamp import SCRIPT, STAMP_PATH, decode

    command = shlex.join(["sudo", "-n", "python3", "-", mode[0], STAMP_PATH, *mode[1:]])
    result = connection.run(command, hide=True, warn=True, in_stream=io.StringIO(SCRIPT))
    try:
        if result.exited != 0:
            raise ValueError(result.stderr.strip()[-300:])
        return decode(result.stdout)
    except ValueError as exc:
        raise RemoteError(
            host,
            f"the converge stamp could not be {_DONE[mode[0]]} ({exc})",
            "check that python3 and sudo work on the host",
        ) from None


def _probe(connection: Any, host: Host, args: str) -> dict[str, Any]:
    from devserver.hoststate.probe import SCRIPT, ProbeError, decode

    result = connection.run(
        f"sudo -n python3 - {shlex.quote(args)}", hide=True, warn=True, in_stream=io.StringIO(SCRIPT)
    )
    if result.exited != 0:
        raise RemoteError(
            host,
            f"the status probe failed: {result.stderr.strip()[-300:]}",
            "check that python3 and sudo work on the host",
        )
    try:
        return decode(result.stdout)
    except ProbeError as exc:
        raise RemoteError(host, exc.message, exc.fix) from None
