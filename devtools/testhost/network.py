"""A test host's network: a private netns with a veth pair, and the apt-cacher-ng on this machine's end.

There is no NAT: the apt proxy bound to the host end of the veth is the host's only way out.

Contracts:

* :func:`make_network` creates the netns and veth of a host, choosing a free 172.30.N.0/30 under a machine-wide lock,
  and reports each resource through ``record`` before creating it (so that a teardown finds a partial one).
* :func:`start_acng` starts the host's apt-cacher-ng on the host end and returns once it accepts connections.
* :func:`delete_network` removes a host's netns and veth, whatever is left of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from devserver.sysutil import file_lock
from devtools.testhost.machine import run, tail

ACNG_PORT = 3142
# Host ends are 172.30.N.1/30, container ends 172.30.N.2/30. 172.30/16 is private and not routed
# here; up() still checks every candidate against the host's routes and addresses.
SUBNET_BASE = "172.30"

# Global lock serialising subnet allocation between concurrent up() calls (other test runs included).
ALLOC_LOCK = Path("/run/devserver-testhost.lock")

# Where a host's resources are written down (the host's state file) before they are made: record(key=value, ...).
Record = Callable[..., None]


def make_network(name: str, record: Record) -> tuple[str, str, str, str]:
    """Create netns + veth; the container end is eth0 with a static /30 and a default route via us.

    Returns (netns, host-side veth, host address, container address). The subnet index N is chosen
    under a machine-wide lock, skipping any 172.30.N.0/30 that collides with this machine's addresses
    or routes, or with another test host's veth. The names and addresses go to `record` before the
    netns and veth are made.
    """
    netns = f"dsth-{name}"
    with file_lock(ALLOC_LOCK):
        used = _used_networks()
        for index in range(256):
            subnet = ipaddress.ip_network(f"{SUBNET_BASE}.{index}.0/30")
            veth = f"dsth{index}"
            if not any(subnet.overlaps(net) for net in used) and not Path(f"/sys/class/net/{veth}").exists():
                break
        else:
            raise RuntimeError(f"no free {SUBNET_BASE}.N.0/30 subnet for a test host")
        host_addr, guest_addr = str(subnet[1]), str(subnet[2])
        record(netns=netns, veth=veth, host_address=host_addr, address=guest_addr)
        if Path(f"/run/netns/{netns}").exists():
            raise RuntimeError(f"network namespace {netns} already exists (another host named {name}?)")
        run(["ip", "netns", "add", netns])
        # The peer is created directly inside the netns, so it can be called eth0 like a VM's NIC.
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "addr", "add", f"{host_addr}/30", "dev", veth])
        run(["ip", "link", "set", veth, "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "addr", "add", f"{guest_addr}/30", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    # Facts gathering (ansible_default_ipv4) wants a default route; nothing forwards beyond us.
    run(["ip", "-n", netns, "route", "add", "default", "via", host_addr])
    return netns, veth, host_addr, guest_addr


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address in or a route to (default route excluded)."""
    nets = []
    addrs = run(["ip", "-4", "-o", "addr", "show"]).stdout
    nets += [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", addrs)]
    for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
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


def start_acng(state_dir: Path, record: Record, cache_dir: Path, address: str) -> None:
    """Start this host's apt-cacher-ng on `address`:3142 and wait until it accepts connections; its pid, config and
    cache folders go to `record` as soon as it runs."""
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
    record(acng_pid=proc.pid, acng_conf=str(conf_dir), acng_cache=str(cache))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"apt-cacher-ng exited {proc.returncode} {ACNG_HINT}:\n{tail(log)}\n{tail(logs / 'apt-cacher.err')}"
            )
        with contextlib.suppress(OSError), socket.create_connection((address, ACNG_PORT), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"apt-cacher-ng did not listen on {address}:{ACNG_PORT}:\n{tail(log)}")


# Shown when our apt-cacher-ng cannot start: the usual cause is the distribution's own service.
ACNG_HINT = "(a system apt-cacher-ng on *:3142 blocks the port: `service apt-cacher-ng stop`)"


def delete_network(netns: str, veth: str | None) -> None:
    """Delete the netns (which destroys its veth end and so the pair) and any stray host end."""
    if Path(f"/run/netns/{netns}").exists():
        run(["ip", "netns", "delete", netns])
    if veth and Path(f"/sys/class/net/{veth}").exists():
        proc = run(["ip", "link", "delete", veth], check=False)
        if proc.returncode != 0 and Path(f"/sys/class/net/{veth}").exists():
            raise RuntimeError(f"cannot delete {veth}: {proc.stderr}")
