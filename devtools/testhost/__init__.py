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
apt-get (see :func:`devtools.testhost.machine.ensure_tools`).

CLI: ``python -m devtools.testhost up|down|ssh|info NAME``, ``build``, ``gc`` (see ``--help``; ``scripts/testhost``
runs it).

Modules: :mod:`~devtools.testhost.host` (:class:`TestHost`, :func:`up`, :func:`down`, :func:`gc`, :func:`leftovers`),
:mod:`~devtools.testhost.rootfs` (the cached rootfs), :mod:`~devtools.testhost.network` (netns, veth, apt-cacher-ng),
:mod:`~devtools.testhost.machine` (commands, processes, tools on this machine). Locks and mounts are
:mod:`devserver.sysutil`'s, shared with the image builders.
"""

from devtools.testhost.host import (
    DOCKERD_NETWORK_SETTINGS,
    TestHost,
    default_cache_dir,
    default_workdir,
    down,
    gc,
    leftovers,
    up,
)
from devtools.testhost.network import ACNG_PORT
from devtools.testhost.rootfs import ADMIN_USER, build_rootfs, rootfs_key

__all__ = [
    "ACNG_PORT",
    "ADMIN_USER",
    "DOCKERD_NETWORK_SETTINGS",
    "TestHost",
    "build_rootfs",
    "default_cache_dir",
    "default_workdir",
    "down",
    "gc",
    "leftovers",
    "rootfs_key",
    "up",
]
