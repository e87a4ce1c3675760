"""`devserver image build` choices that end before any image work: the cloud builder's requirements, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "devserver", "image", "build", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)


def test_cloud_builder_asks_for_a_current_packer() -> None:
    # Debian's Packer 1.6.6 is what this machine has: the cloud plugins need >= 1.7, said as one line with the fix.
    proc = cli("--target", "gce", "--spec", str(REPO / "examples" / "gce.yaml"), "--builder", "cloud", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ok"] is False
    assert "1.7" in payload["error"] + payload["fix"]
    assert "Traceback" not in proc.stderr


def test_cloud_builder_has_no_local_target() -> None:
    proc = cli("--target", "local", "--builder", "cloud")
    assert proc.returncode == 2
    assert "not built in a cloud" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_target_and_builder_are_usage_errors() -> None:
    for args in (("--target", "vsphere"), ("--target", "local", "--builder", "kvm")):
        proc = cli(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


def test_boot_and_test_refuse_a_missing_or_corrupt_artifact(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    for command, folder in (("test", tmp_path / "absent"), ("boot", tmp_path), ("test", tmp_path)):
        argv = [sys.executable, "-m", "devserver", "image", command, str(folder)]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "fix:" in proc.stderr
        assert "Traceback" not in proc.stderr
