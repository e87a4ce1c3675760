"""HOST parsing for update/status/ssh/exec: user@host[:port], inventories, stack folders."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from devserver.errors import SpecError
from devserver.hosts import Host, parse_hosts
from devserver.loader import load_spec
from devserver.plan import resolve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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


def _stack_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outputs: dict[str, object]) -> Path:
    """A stack folder whose `pulumi stack output --json` prints `outputs`: a stand-in `pulumi` executable on PATH
    (the real CLI cannot be installed here) that checks it is asked for exactly that."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pulumi"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$*" = "stack output --json --show-secrets=false" ] || { echo "unexpected: $*" >&2; exit 3; }\n'
        f"cat <<'JSON'\n{json.dumps(outputs)}\nJSON\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    stack = tmp_path / "stack"
    stack.mkdir()
    return stack


GCE_OUTPUTS = {
    "host": "203.0.113.10",
    "ssh_user": "devserver",
    "ssh_port": 22,
    "instance_id": "projects/p/zones/z/instances/ml-dev-gce-vm",
    "gpu": "1x NVIDIA T4",
    "image": "projects/debian-cloud/global/images/family/debian-12",
    "data_device": "/dev/disk/by-id/google-data",
}


def test_stack_folder_carries_the_exported_data_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (host,) = parse_hosts(str(_stack_folder(tmp_path, monkeypatch, GCE_OUTPUTS)), default_user="x", key_file=None)
    assert host == Host(
        name="203.0.113.10", address="203.0.113.10", user="devserver", data_device=GCE_OUTPUTS["data_device"]
    )


def test_stack_folder_without_a_data_disk_has_no_data_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {k: v for k, v in GCE_OUTPUTS.items() if k != "data_device"}
    (host,) = parse_hosts(str(_stack_folder(tmp_path, monkeypatch, outputs)), default_user="x", key_file=None)
    assert host.data_device is None


def _update_vars(monkeypatch: pytest.MonkeyPatch, hosts: list[Host], spec: Path, data_device: str | None) -> dict:
    """The role variables `devserver update --check` would run the playbook with (preflight and playbook stubbed
    out; check mode neither probes for nor writes a converge stamp, so nothing else reaches a host)."""
    from devserver import update as update_module
    from devserver.remote import Preflight
    from devserver.runner import RunSummary

    ran: dict[str, dict] = {}

    def check_hosts(found: list[Host], *_args: object) -> list[Preflight]:
        return [Preflight(host, "debian-12", "6.1.0-28-cloud-amd64", "/usr/bin/python3", True) for host in found]

    monkeypatch.setattr(update_module, "check_hosts", check_hosts)

    def run_playbook(_hosts: object, extravars: dict, **_kwargs: object) -> RunSummary:
        ran["vars"] = extravars
        return RunSummary(rc=0, status="successful")

    monkeypatch.setattr(update_module, "run_playbook", run_playbook)
    resolved = resolve(load_spec(spec), str(spec))
    update_module.update(
        hosts, resolved, check=True, diff=False, only=[], data_device=data_device, known_hosts=None, mitogen=False
    )
    return ran["vars"]


def test_update_of_a_stack_folder_mounts_the_exported_data_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = parse_hosts(str(_stack_folder(tmp_path, monkeypatch, GCE_OUTPUTS)), default_user="x", key_file=None)
    variables = _update_vars(monkeypatch, hosts, EXAMPLES / "gce.yaml", None)
    assert variables["data_volume_device"] == "/dev/disk/by-id/google-data"
    assert variables["data_volume_mount_point"] == "/data"
    assert variables["data_volume_docker_data_root"] is True  # examples/gce.yaml: docker_data_root on Docker


def test_data_device_option_overrides_the_stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = parse_hosts(str(_stack_folder(tmp_path, monkeypatch, GCE_OUTPUTS)), default_user="x", key_file=None)
    variables = _update_vars(monkeypatch, hosts, EXAMPLES / "gce.yaml", "/dev/sdc")
    assert variables["data_volume_device"] == "/dev/sdc"


def test_hosts_without_a_stack_leave_the_data_volume_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = parse_hosts("devserver@203.0.113.7", default_user="devserver", key_file=None)
    variables = _update_vars(monkeypatch, hosts, EXAMPLES / "gce.yaml", None)
    assert variables["data_volume_device"] == ""
    assert variables["data_volume_docker_data_root"] is False


def test_stack_data_device_with_a_spec_without_data_disk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = parse_hosts(str(_stack_folder(tmp_path, monkeypatch, GCE_OUTPUTS)), default_user="x", key_file=None)
    document = yaml.safe_load((EXAMPLES / "gce.yaml").read_text())
    del document["disks"]["data"]
    spec = tmp_path / "no-data.yaml"
    spec.write_text(yaml.safe_dump(document))
    with pytest.raises(SpecError) as info:
        _update_vars(monkeypatch, hosts, spec, None)
    (problem,) = info.value.problems
    assert problem.path == "disks.data"
    assert "/dev/disk/by-id/google-data" in problem.message
    assert "--spec" in problem.fix
