"""HOST parsing for update/status/ssh/exec: user@host[:port], inventories, stack folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from devserver.errors import SpecError
from devserver.hosts import Host, parse_hosts


def test_user_host_port() -> None:
    (host,) = parse_hosts("alice@203.0.113.7:2222", default_user="devserver", key_file=None)
    assert host == Host(name="203.0.113.7", address="203.0.113.7", user="alice", port=2222)


def test_default_user_and_ipv6() -> None:
    (host,) = parse_hosts("[2001:db8::5]:22", default_user="devserver", key_file=Path("/k"))
    assert (host.address, host.user, host.key_file) == ("2001:db8::5", "devserver", Path("/k"))


@pytest.mark.parametrize("bad", ["", "a b", "user@host:99999", "@host", "user@host:port"])
def test_bad_hosts(bad: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_hosts(bad, default_user="devserver", key_file=None)
    assert info.value.problems[0].path == "HOST"


def test_inventory_through_ansible(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[gpu]\nbox1 ansible_host=127.0.0.2 ansible_port=2201 ansible_user=ops\nbox2 ansible_host=127.0.0.3\n"
    )
    hosts = parse_hosts(str(inventory), default_user="devserver", key_file=None)
    assert [(h.name, h.address, h.port, h.user) for h in hosts] == [
        ("box1", "127.0.0.2", 2201, "ops"),
        ("box2", "127.0.0.3", 22, "devserver"),
    ]


def test_stack_folder_reads_pulumi_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fixture: a stand-in `pulumi` executable (the real CLI cannot be installed here) that prints the outputs
    # contract every devserver stack exports.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pulumi"
    fake.write_text('#!/bin/sh\necho \'{"host": "198.51.100.9", "ssh_user": "devserver", "ssh_port": 22}\'\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    stack = tmp_path / "stack"
    stack.mkdir()
    (host,) = parse_hosts(str(stack), default_user="ignored", key_file=None)
    assert (host.address, host.user, host.port) == ("198.51.100.9", "devserver", 22)


def test_stack_folder_without_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpecError) as info:
        parse_hosts(str(tmp_path), default_user="devserver", key_file=None)
    assert "pulumi CLI is not installed" in info.value.problems[0].message
