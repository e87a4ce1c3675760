"""``python -m devtools.testhost`` (what ``scripts/testhost`` runs): make, inspect and remove test hosts by hand."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import devtools.testhost
from devtools.testhost.host import TestHost, default_cache_dir, default_workdir, gc, teardown, up
from devtools.testhost.rootfs import build_rootfs


def main(argv: Sequence[str] | None = None) -> int:
    """``up NAME`` prints the host's JSON info; ``down NAME`` tears it down; ``ssh NAME [CMD…]``
    execs ssh into it; ``info NAME`` prints the JSON again; ``build`` only builds the rootfs;
    ``gc`` removes hosts left by killed test runs. Hosts made by the CLI live until ``down``."""
    description = (devtools.testhost.__doc__ or "").split("\n", 1)[0]
    parser = argparse.ArgumentParser(prog="testhost", description=description)
    parser.add_argument("--workdir", type=Path, default=default_workdir())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="build (or find) the cached rootfs tarball")
    sub.add_parser("gc", help="tear down hosts whose owning process died (e.g. a killed test run)")
    for action in ("up", "down", "info"):
        sub.add_parser(action).add_argument("name")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("name")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.action == "build":
        print(build_rootfs(args.cache_dir))
        return 0
    if args.action == "gc":
        print("\n".join(gc()))
        return 0
    state_dir = args.workdir.resolve() / args.name
    if args.action == "up":
        started = time.monotonic()
        host = up(args.name, args.workdir, args.cache_dir, owner_pid=0)
        print(json.dumps(host.info() | {"up_seconds": round(time.monotonic() - started, 1)}, indent=2))
        return 0
    if args.action == "down":
        teardown(state_dir)
        return 0
    try:
        host = TestHost.load(state_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            print(f"no test host {args.name!r} in {args.workdir}", file=sys.stderr)
            return 1
        raise
    if args.action == "info":
        print(json.dumps(host.info(), indent=2))
        return 0
    command = host.ssh_argv(*args.command)
    os.execvp(command[0], command)  # noqa: S606 (ssh replaces this process, as `ssh NAME` promises)


if __name__ == "__main__":
    sys.exit(main())
