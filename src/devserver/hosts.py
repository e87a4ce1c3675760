"""Where `devserver update/status/ssh/exec` go: a `user@host[:port]`, an Ansible inventory, or a stack folder.

:func:`parse_hosts` turns the HOST argument into :class:`Host` values or raises
:class:`~devserver.errors.SpecError` (rendered as a usage problem, exit 2). It reads an inventory through
`ansible-inventory --list` and a stack folder through `pulumi stack output --json` (the outputs contract every stack
exports: `host`, `ssh_user`, `ssh_port`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devserver.errors import Problem, SpecError

_HOST_RE = re.compile(
    r"^(?:(?P<user>[a-z_][a-z0-9_-]{0,31})@)?"
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>\d{1,5}))?$"
)


@dataclass(frozen=True)
class Host:
    """One machine to reach over SSH. `name` is the inventory name Ansible reports it under. `data_device`: the
    data volume's stable device path on it, where the host came from a stack that exports one."""

    name: str
    address: str
    user: str
    port: int = 22
    key_file: Path | None = None
    data_device: str | None = None


def parse_hosts(argument: str, *, default_user: str, key_file: Path | None) -> list[Host]:
    """Hosts named by the HOST argument: an existing directory is a stack folder, an existing file an inventory, else
    `user@host[:port]` (the user defaults to the spec's admin user)."""
    path = Path(argument)
    if path.is_dir():
        return [_from_stack(path, key_file)]
    if path.is_file():
        return _from_inventory(path, default_user, key_file)
    match = _HOST_RE.match(argument)
    if match is None:
        raise _bad(
            argument, "is not user@host[:port], an inventory file or a stack folder", "e.g. devserver@203.0.113.7"
        )
    port = int(match["port"] or 22)
    if not 0 < port < 65536:
        raise _bad(argument, f"port {port} is out of range", "use a port between 1 and 65535")
    address = match["host"].strip("[]")
    return [Host(name=address, address=address, user=match["user"] or default_user, port=port, key_file=key_file)]


def _bad(argument: str, message: str, fix: str) -> SpecError:
    return SpecError("HOST", [Problem("HOST", message, fix, repr(argument))])


def _from_stack(folder: Path, key_file: Path | None) -> Host:
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise _bad(
            str(folder),
            "is a stack folder, but the pulumi CLI is not installed",
            "install it (https://www.pulumi.com/docs/install/) or pass user@host",
        )
    result = subprocess.run(
        [pulumi, "stack", "output", "--json", "--show-secrets=false"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise _bad(str(folder), f"`pulumi stack output` failed: {detail}", "run `pulumi up` there first")
    try:
        outputs = json.loads(result.stdout)
        device = outputs.get("data_device")
        return Host(
            name=str(outputs["host"]),
            address=str(outputs["host"]),
            user=str(outputs["ssh_user"]),
            port=int(outputs.get("ssh_port", 22)),
            key_file=key_file,
            data_device=str(device) if device else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _bad(
            str(folder),
            f"stack outputs lack host/ssh_user/ssh_port ({exc})",
            "deploy the stack with this version of devserver",
        ) from None


def _from_inventory(path: Path, default_user: str, key_file: Path | None) -> list[Host]:
    tool = Path(sys.executable).with_name("ansible-inventory")
    result = subprocess.run(
        [str(tool if tool.exists() else "ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise _bad(str(path), f"is not a readable Ansible inventory: {detail}", "check the inventory syntax")
    data = json.loads(result.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = sorted({h for group in data.values() if isinstance(group, dict) for h in group.get("hosts", [])})
    if not names:
        raise _bad(str(path), "lists no hosts", "add at least one host")
    hosts = []
    for name in names:
        hv = hostvars.get(name, {})
        key = hv.get("ansible_ssh_private_key_file")
        hosts.append(
            Host(
                name=name,
                address=str(hv.get("ansible_host", name)),
                user=str(hv.get("ansible_user", default_user)),
                port=int(hv.get("ansible_port", 22)),
                key_file=Path(key) if key else key_file,
            )
        )
    return hosts
