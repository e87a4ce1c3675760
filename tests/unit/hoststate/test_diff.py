"""Expected vs observed (what `devserver status` and `devserver update` compare), on the real H200 outputs and on a
package-level host, and on variants derived from them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devserver.cli.main import app
from devserver.hoststate.diff import Drift, drift
from devserver.hoststate.expected import expected
from devserver.hoststate.observed import parse
from devserver.loader import load_spec_bytes
from devserver.plan import Resolved, resolve

H200_SPEC = (Path(__file__).parent / "real" / "h200-ubuntu2404-driver580" / "spec.yaml").read_bytes()


def items(raw: dict[str, Any], resolved: Resolved, **changes: Any) -> list[Drift]:
    want = dataclasses.replace(expected(resolved), **changes)
    return drift(want, parse(raw))


def test_h200_real_in_sync(h200: dict[str, Any], h200_resolved: Resolved) -> None:
    """The driver loaded outside dpkg is judged by the kernel and NVML: no drift for the missing packages."""
    assert items(h200, h200_resolved) == []


def test_h200_real_against_another_branch(h200: dict[str, Any], debian_resolved: Resolved) -> None:
    have = {(d.item, d.have) for d in items(h200, debian_resolved)}
    assert ("nvidia driver", "580.159.04 (loaded, not from packages)") in have
    assert ("nvidia driver flavour", "open (loaded)") in have
    # no package-level drift on a host whose driver is not from packages
    assert not any(d.startswith(("dkms", "hold", "nvidia-persistenced")) for d, _ in have)
    assert "not installed" not in {h for d, h in have if d == "nvidia driver"}


def test_h200_persistence_off_derived(h200: dict[str, Any], h200_resolved: Resolved) -> None:
    """derived: the real XML with persistence mode Disabled."""
    xml = h200["nvidia_smi"]["out"]
    h200["nvidia_smi"]["out"] = xml.replace("<persistence_mode>Enabled", "<persistence_mode>Disabled")
    assert items(h200, h200_resolved) == [Drift("persistence mode", "on", "off on 00000000:00:06.0")]


def test_h200_fabric_manager_expected(h200: dict[str, Any], h200_resolved: Resolved) -> None:
    assert items(h200, h200_resolved, fabric_manager=True) == [
        Drift("nvidia-fabricmanager", "branch 580", "not installed")
    ]
    h200["dpkg"]["lines"].append("nvidia-fabricmanager-580 hold installed 580.95.05-1")
    assert items(h200, h200_resolved, fabric_manager=True) == [
        Drift("nvidia-fabricmanager", "driver's version 580.159.04", "580.95.05-1")
    ]


def test_package_host_in_sync(debian_host: dict[str, Any], debian_resolved: Resolved) -> None:
    assert items(debian_host, debian_resolved) == []


def test_hold_lifted_derived(debian_host: dict[str, Any], debian_resolved: Resolved) -> None:
    lines = debian_host["dpkg"]["lines"]
    debian_host["dpkg"]["lines"] = [line.replace(" hold ", " install ") for line in lines]
    assert {d.item for d in items(debian_host, debian_resolved)} == {
        "hold on nvidia-driver",
        "hold on nvidia-kernel-dkms",
        "hold on nvidia-container-toolkit",
        "hold on nvidia-container-toolkit-base",
    }


def test_nouveau_and_persistenced_derived(debian_host: dict[str, Any], debian_resolved: Resolved) -> None:
    debian_host["nouveau_blacklist"] = []
    debian_host["proc_modules"] = "nouveau 2760704 0 - Live 0xffffffffc0a00000\n"
    debian_host["units"]["nvidia-persistenced"]["out"] = (
        "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled"
    )
    assert items(debian_host, debian_resolved) == [
        Drift("nouveau", "not loaded", "loaded"),
        Drift("nouveau", "blacklisted", "not blacklisted"),
        Drift("nvidia-persistenced", "enabled", "disabled"),
    ]


def test_default_runtime_and_data_volume(debian_host: dict[str, Any], debian_resolved: Resolved) -> None:
    assert items(
        debian_host, debian_resolved, default_runtime_nvidia=True, data_mount="/data", docker_data_root="/data/docker"
    ) == [
        Drift("docker default runtime", "nvidia", "runc"),
        Drift("docker data-root", "/data/docker", "/var/lib/docker"),
        Drift("containerd default runtime", "nvidia", "runc"),
        Drift("data volume", "mounted on /data", "not mounted"),
    ]


def test_expected_data_volume_only_with_a_device() -> None:
    """As role_vars: the data volume (and Docker's data-root on it) is expected where the update has its device."""
    spec = (
        H200_SPEC.replace(b"container_runtime: none", b"container_runtime: docker") + b"disks: {data: {size_gb: 100}}\n"
    )
    resolved = resolve(load_spec_bytes(spec))
    assert (expected(resolved).data_mount, expected(resolved).docker_data_root) == (None, None)
    with_device = expected(resolved, data_device="/dev/sdb")
    assert (with_device.data_mount, with_device.docker_data_root) == ("/data", "/data/docker")


def test_status_cli_on_h200_facts(h200: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`devserver status --json` end to end, with the SSH probe answering the H200 host's outputs."""
    from devserver import update

    spec = tmp_path / "h200.yaml"
    spec.write_bytes(H200_SPEC)
    monkeypatch.setattr(update, "probe", lambda host, known_hosts: h200)
    result = CliRunner().invoke(app, ["status", "devserver@203.0.113.7", "--spec", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output)
    assert report["in_sync"] is True
    assert report["drift"] == []
    facts = report["facts"]
    assert facts["driver"] == "580.159.04 (open kernel module)"
    assert facts["driver_source"] == "loaded, not from packages"
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA H200"]
    assert facts["driver_packages"] == {}
