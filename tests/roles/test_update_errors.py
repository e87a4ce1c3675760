"""Bad input to `devserver update`: a clear error before the first task, a non-zero exit, and a rerun after fixing
the cause completes. Runs the real CLI against a real test host (and a closed port on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from devtools import testhost as th

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, host: th.TestHost, **software: Any) -> Path:
    spec = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    spec["repositories"] = {"apt_proxy": host.apt_proxy}
    spec["software"].update(software)
    path = tmp_path / f"spec-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _update(target: str, spec: Path, key: Path, known_hosts: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    argv = [
        sys.executable, "-m", "devserver", "update", target, "--spec", str(spec), "--key", str(key),
        "--known-hosts", str(known_hosts), "--json", *extra,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=1200, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _problem(payload: dict[str, Any]) -> str:
    (problem,) = payload["problems"]
    return f"{problem['message']} — {problem['fix']}"


def test_bad_input_fails_early_and_rerun_after_fix_completes(testhost: th.TestHost, tmp_path: Path) -> None:
    host = testhost
    target = f"{host.user}@{host.address}"
    spec = _spec(tmp_path, host)
    key, known = host.private_key, host.known_hosts

    # Unreachable: nothing listens on this port.
    rc, payload, _ = _update(f"devserver@127.0.0.1:{_free_port()}", spec, key, known)
    assert rc == 1
    assert "cannot connect over SSH" in _problem(payload)

    # Wrong key: a key the host has never seen.
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    rc, payload, _ = _update(target, spec, wrong, known)
    assert rc == 1
    assert "refused (wrong key or user)" in _problem(payload)

    # Impossible driver/CUDA pair: rejected from the spec alone, exit 2, before any connection.
    impossible = _spec(tmp_path, host, driver={"branch": 535, "source": "cuda-repo"}, cuda={"version": "12.8"})
    rc, payload, _ = _update(target, impossible, key, known)
    assert rc == 2
    assert any(p["path"] == "software.cuda.version" for p in payload["problems"])

    # Sudo refused: take the admin user's sudo rule away (as root, through sudo itself).
    rule = host.ssh("sudo sh -c 'grep -l devserver /etc/sudoers.d/*'").stdout.split()[0]
    host.ssh(f"sudo mv {rule} /root/saved-sudo-rule")
    rc, payload, _ = _update(target, spec, key, known)
    assert rc == 1
    assert "sudo without a password is refused" in _problem(payload)
    # Fix it from outside (the machine's root filesystem), as an operator with console access would.
    saved = host.machine_root / "root" / "saved-sudo-rule"
    saved.rename(host.machine_root / rule.lstrip("/"))

    # Unsupported OS: the host claims to be Debian 11.
    os_release = host.machine_root / "usr" / "lib" / "os-release"
    original = os_release.read_text()
    os_release.write_text(original.replace('VERSION_ID="12"', 'VERSION_ID="11"'))
    rc, payload, _ = _update(target, spec, key, known)
    assert rc == 1
    assert "does not support" in _problem(payload)
    os_release.write_text(original)

    # No python3 (a minimal image): Ansible could not run a single module.
    python3 = host.machine_root / "usr" / "bin" / "python3"
    python3.rename(python3.with_name("python3.moved"))
    try:
        rc, payload, _ = _update(target, spec, key, known)
    finally:
        python3.with_name("python3.moved").rename(python3)
    assert rc == 1
    assert "has no python3, which Ansible needs" in _problem(payload)

    # Every cause fixed: the same command now completes (only the base role, to keep the test short).
    rc, payload, stderr = _update(target, spec, key, known, "--only", "devserver_base")
    assert rc == 0, json.dumps(payload.get("failures"), indent=1)[-4000:] + stderr[-2000:]
    assert payload["ok"] is True
    assert payload["hosts"][host.address]["changed"] > 0
