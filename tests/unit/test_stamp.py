"""The converge stamp's script, run for real on this machine (as `devserver update` runs it on a host, minus SSH),
and the rule that decides "up to date"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devserver import stamp


def _run(*argv: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-", *argv], input=stamp.SCRIPT, capture_output=True, text=True, check=True, timeout=120
    )
    return stamp.decode(result.stdout)


def test_a_written_stamp_matches_until_the_inputs_change(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "devserver" / "converged.json"
    assert _run("read", str(path))["stamp"] is None  # never converged
    written = _run("write", str(path), "inputs-a")
    assert json.loads(path.read_text()) == {"inputs": "inputs-a", "state": written["state"]}
    assert not list(path.parent.glob("*.partial"))  # replaced atomically, nothing left beside it
    found = _run("read", str(path))
    assert found["state"] == written["state"]  # the fingerprint of an unchanged machine is stable
    assert stamp.matches(found, "inputs-a")
    assert not stamp.matches(found, "inputs-b")  # another spec, playbook or devserver version


def test_a_stamp_of_another_state_does_not_match(tmp_path: Path) -> None:
    path = tmp_path / "converged.json"
    path.write_text(json.dumps({"inputs": "inputs-a", "state": "the state before someone edited /etc"}))
    assert not stamp.matches(_run("read", str(path)), "inputs-a")
    path.write_text("{half a stamp")
    found = _run("read", str(path))
    assert found["stamp"] is None
    assert not stamp.matches(found, "inputs-a")


def test_the_inputs_hash_names_the_variables_and_the_ansible_tree() -> None:
    a = stamp.inputs_hash({"nvidia_driver_branch": 535})
    assert a == stamp.inputs_hash({"nvidia_driver_branch": 535})
    assert a != stamp.inputs_hash({"nvidia_driver_branch": 550})
