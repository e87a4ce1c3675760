"""The probe itself, run for real on the machine running the tests (read-only, no sudo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devserver.hoststate.observed import parse
from devserver.hoststate.probe import FIELDS, SCRIPT, ProbeError, decode, run_local, script_args


def test_probe_here_gives_every_field() -> None:
    raw = run_local()
    assert tuple(raw) == FIELDS
    have = parse(raw)
    assert have.kernel == os.uname().release
    assert have.os_id  # /etc/os-release is on every supported OS
    # the package view is read where there is dpkg
    assert (raw["dpkg"] is None) == (subprocess.run(["sh", "-c", "command -v dpkg-query"], check=False).returncode != 0)


def test_probe_runs_as_ssh_sends_it() -> None:
    """remote.probe pipes SCRIPT to `python3 - ARGS`: the same, here, with the interpreter's stdin."""
    result = subprocess.run(
        [sys.executable, "-", script_args()], input=SCRIPT, capture_output=True, text=True, check=True
    )
    assert set(decode(result.stdout)) == set(FIELDS)


def test_container_check_only_when_asked() -> None:
    assert json.loads(script_args()) == {}
    assert json.loads(script_args("nvcr.io/nvidia/cuda:13.0.0-base-ubuntu24.04", ["docker"])) == {
        "container_image": "nvcr.io/nvidia/cuda:13.0.0-base-ubuntu24.04",
        "engines": ["docker"],
    }
    assert run_local()["container_checks"] == {}


@pytest.mark.parametrize(("stdout", "message"), [("oops", "printed no JSON"), ('{"probe_version": 9}', "version")])
def test_decode_refuses(stdout: str, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        decode(stdout)


def test_run_local_reports_a_failed_interpreter() -> None:
    with pytest.raises(ProbeError, match="the probe failed"):
        run_local(python="/bin/false")
