"""The converge stamp: what lets a no-op `devserver update` answer "up to date" without running Ansible.

After a full converge succeeds on a host (every role, not check mode, no task failed, the run finished), the
controller writes :data:`STAMP_PATH` there: the inputs hash of that run (:func:`inputs_hash`: the playbook, roles
and plugins, and the variables the spec gave them) and a fingerprint of the state the run left (:data:`SCRIPT`:
every package with its version and dpkg selection — holds included —, every file and link under /etc, the mounted
block filesystems, the running kernel). The next update reads both back in the same round trip as the host-state
probe. Same inputs, same state and no drift in the host-state model: the host is up to date. Anything else —
another spec or devserver version, a package removed or upgraded, a hold lifted, a config edited by hand, the data
volume unmounted — runs the playbook, which then writes a new stamp. A run that fails, is interrupted or runs only
some roles (`--only`, `--check`) writes none, so an old stamp never outlives the state it described.
"""

from __future__ import annotations

import json
from typing import Any

from devserver import __version__
from devserver.sysutil import digest, tree_hash

STAMP_PATH = "/var/lib/devserver/converged.json"

# Run as root with python3 (stdin), argv: read PATH | write PATH INPUTS. Prints one JSON object: the stamp found
# (null when absent or unreadable) and the fingerprint of the host now. `write` replaces the stamp atomically.
SCRIPT = r"""
import hashlib, json, os, subprocess, sys

BLOCK_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "zfs"}


def fingerprint():
    digest = hashlib.sha256()
    packages = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
        capture_output=True, text=True, check=False,
    )
    digest.update(packages.stdout.encode())
    for root, dirs, files in os.walk("/etc"):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            digest.update(path.encode() + b"\0")
            if os.path.islink(path):
                digest.update(b"link " + os.readlink(path).encode())
            elif name in files:
                try:
                    with open(path, "rb") as handle:
                        digest.update(hashlib.sha256(handle.read()).digest())
                except OSError:
                    digest.update(b"unreadable")
    with open("/proc/self/mounts") as handle:
        mounts = sorted(line.split()[:3] for line in handle if line.split()[2] in BLOCK_FILESYSTEMS)
    digest.update(json.dumps(mounts).encode())
    digest.update(os.uname().release.encode())
    return digest.hexdigest()


mode, path = sys.argv[1], sys.argv[2]
state = fingerprint()
if mode == "write":
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump({"inputs": sys.argv[3], "state": state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
try:
    with open(path) as handle:
        stamp = json.load(handle)
except (OSError, ValueError):
    stamp = None
print(json.dumps({"stamp": stamp, "state": state}))
"""


def inputs_hash(extravars: dict[str, object]) -> str:
    """What a converge ran: the Ansible tree devserver ships, the variables, and devserver's version."""
    from devserver.runner import ansible_root

    tree = tree_hash(ansible_root(), ("ansible.cfg", "plugins", "playbooks", "roles"))
    return digest({"ansible": tree, "vars": extravars, "devserver": __version__})


def matches(found: dict[str, Any], inputs: str) -> bool:
    """Whether the script's answer shows a stamp of these `inputs` whose state is the host's state now."""
    stamp = found.get("stamp")
    return isinstance(stamp, dict) and stamp.get("inputs") == inputs and stamp.get("state") == found.get("state")


def decode(stdout: str) -> dict[str, Any]:
    """The script's JSON answer; ValueError when it printed something else."""
    found = json.loads(stdout.strip().splitlines()[-1])
    if not isinstance(found, dict) or "state" not in found:
        raise ValueError("no fingerprint in the answer")
    return found
