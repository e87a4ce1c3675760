"""Ansible connection plugin ``devserver_chroot``: every command runs as ``chroot ROOT /bin/sh -c CMD``.

Files travel through the chroot's own ``cat`` (stdin to a file inside, a file inside to stdout) rather than through
host paths under ROOT, so an absolute symlink inside the image resolves inside the image and never onto the build
host. The connection needs root on the controller and does nothing about mounts: the caller prepares /proc, /sys,
/dev and /run (devserver.images.chroot.prepared).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

DOCUMENTATION = """
    name: devserver_chroot
    short_description: Run tasks inside a root filesystem with chroot(8)
    description:
        - Runs every task inside a directory holding a root filesystem (an image being built), as root.
        - The inventory host's ansible_host is the directory; the caller mounts /proc, /sys, /dev and /run there.
    author: devserver
    options:
        chroot_root:
            description: The root filesystem directory (absolute path on the controller).
            default: inventory_hostname
            type: path
            vars:
                - name: inventory_hostname
                - name: ansible_host
                - name: ansible_devserver_chroot_root
        chroot_executable:
            description: The shell that runs each command inside the root filesystem.
            default: /bin/sh
            type: str
            vars:
                - name: ansible_executable
    extends_documentation_fragment:
        - connection_pipelining
    notes:
        - The remote user is not used; the commands run as the controller's user, which must be root. Set
          ansible_become to false for such hosts (devserver's runner does), or the image needs sudo.
"""

display = Display()

# put_file/fetch_file stream in blocks of this size
_BLOCK = 1024 * 1024


class Connection(ConnectionBase):
    """Commands and file transfers inside a chroot on the controller."""

    transport = "devserver_chroot"
    has_pipelining = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._root = ""
        self._chroot = ""

    def _connect(self) -> Connection:
        if self._connected:
            return self
        root = os.path.abspath(os.path.expanduser(str(self.get_option("chroot_root"))))
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure("devserver_chroot needs root on the controller (chroot(8) does)")
        if not os.path.isdir(root):
            raise AnsibleConnectionFailure(f"devserver_chroot: {root} is not a directory")
        shell = str(self.get_option("chroot_executable"))
        if not os.path.lexists(os.path.join(root, shell.lstrip("/"))):
            raise AnsibleConnectionFailure(f"devserver_chroot: {root} has no {shell}: not a root filesystem")
        chroot = shutil.which("chroot")
        if chroot is None:
            raise AnsibleConnectionFailure("devserver_chroot: chroot(8) is not on PATH (coreutils)")
        self._root = root
        self._chroot = chroot
        self._connected = True
        display.vvv(f"DEVSERVER_CHROOT ROOT {root}", host=root)
        return self

    def _argv(self, cmd: str) -> list[str]:
        return [self._chroot, self._root, str(self.get_option("chroot_executable")), "-c", cmd]

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run `cmd` with the chroot's shell; `in_data` (a pipelined module) goes to its stdin."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        display.vvv(f"EXEC {cmd}", host=self._root)
        proc = subprocess.run(
            self._argv(cmd),
            input=in_data if in_data is not None else b"",
            capture_output=True,
            check=False,
            # the chroot's commands must not see the controller's working directory (it is outside the root)
            cwd="/",
        )
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy the controller's `in_path` to `out_path` inside the root filesystem."""
        super().put_file(in_path, out_path)
        self._connect()
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._root)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        target = shlex.quote(to_text(out_path, errors="surrogate_or_strict"))
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
            proc = subprocess.run(
                self._argv(f"cat > {target}"), stdin=source, capture_output=True, check=False, cwd="/"
            )
        if proc.returncode != 0:
            raise AnsibleError(f"devserver_chroot: failed to write {out_path}: {to_text(proc.stderr).strip()}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy `in_path` inside the root filesystem to the controller's `out_path`."""
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._root)
        source = shlex.quote(to_text(in_path, errors="surrogate_or_strict"))
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as target:
            proc = subprocess.Popen(
                self._argv(f"cat {source}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/"
            )
            assert proc.stdout is not None
            while block := proc.stdout.read(_BLOCK):
                target.write(block)
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError(f"devserver_chroot: failed to read {in_path}: {to_text(stderr).strip()}")

    def close(self) -> None:
        """Nothing stays open between commands."""
        self._connected = False
