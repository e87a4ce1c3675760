"""`devserver doctor` through its CLI: for real on the machine running the tests, and over the SSH path with the
probe answering the H200 host's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devserver.cli.main import app

REPO = Path(__file__).parents[3]


def _gpu_on_bus() -> bool:
    return any(
        (d / "vendor").read_text().strip() == "0x10de" and (d / "class").read_text().strip().startswith("0x03")
        for d in Path("/sys/bus/pci/devices").glob("*")
    )


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devserver", "doctor", *args], capture_output=True, text=True, cwd=REPO, check=False
    )


def test_doctor_here_json() -> None:
    """real: this machine, probed locally (no SSH). CI has no NVIDIA GPU: exit 1, the one clear finding."""
    result = _doctor("--json")
    assert "Traceback" not in result.stderr
    payload = json.loads(result.stdout)
    (host,) = payload["hosts"]
    if _gpu_on_bus():
        assert "no-gpu" not in [f["id"] for f in host["findings"]]
        assert result.returncode == (0 if host["healthy"] else 1)
        return
    assert result.returncode == 1
    assert payload["ok"] is False
    assert [(f["id"], f["severity"], f["title"]) for f in host["findings"]] == [
        ("no-gpu", "error", "no NVIDIA GPU on the PCI bus")
    ]
    assert host["findings"][0]["evidence"]
    assert host["findings"][0]["fix"]


def test_doctor_here_text() -> None:
    result = _doctor()
    assert "Traceback" not in result.stderr
    if not _gpu_on_bus():
        assert result.returncode == 1
        assert "no-gpu: no NVIDIA GPU on the PCI bus" in result.stdout
        assert "fix:" in result.stdout


def test_doctor_bad_target() -> None:
    result = _doctor("not a host!")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_doctor_over_ssh_h200_real(h200: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from devserver import remote

    seen: list[str] = []

    def probe(host: Any, *, known_hosts: Path | None, args: str) -> dict[str, Any]:
        seen.append(f"{host.user}@{host.address}:{host.port}")
        return h200

    monkeypatch.setattr(remote, "probe", probe)
    result = CliRunner().invoke(app, ["doctor", "ubuntu@203.0.113.7:2222", "--json"])
    assert result.exit_code == 0, result.output
    assert seen == ["ubuntu@203.0.113.7:2222"]
    (host,) = json.loads(result.output)["hosts"]
    assert host["healthy"] is True
    assert host["summary"]["gpus"] == "1: NVIDIA H200"
    assert host["summary"]["driver"] == "580.159.04, open kernel module, loaded, not from packages"


def test_doctor_over_ssh_findings_exit_1(h200: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """derived: the H200 host with nvidia-smi's version-mismatch error."""
    from devserver import remote

    h200["nvidia_smi"] = {"rc": 18, "out": "Failed to initialize NVML: Driver/library version mismatch\n", "err": ""}
    monkeypatch.setattr(remote, "probe", lambda host, known_hosts, args: h200)
    result = CliRunner().invoke(app, ["doctor", "203.0.113.7"])
    assert result.exit_code == 1
    assert "driver-library-mismatch" in result.output
