"""`devserver image build` and `devserver image test` end to end, through the real CLI, as root.

The built-in local spec (Debian 12, the real Debian ``nvidia-driver`` built by DKMS for the image's kernel, CUDA from
Debian, Docker + containerd) is built with the chroot builder, booted under qemu with UEFI and with BIOS, reached
over SSH through cloud-init, and `devserver status` on it must match the spec. A driver-only variant of the spec
(no CUDA, no container runtime) is then built for each cloud target: the provisioned tree is reused from the cache,
each target gets its own image roles, disk and formats, each checked as it is written. Those cloud builds come from
the session fixture ``cloud_artifact`` (tests/support/image_builds.py, with the spec, the fixture repository and the
CLI helper), built once per session and uploaded to the emulators by tests/uploads/test_built_images.py.

NVIDIA's container-toolkit repository is unreachable here: the signed TEST FIXTURE repository
(devtools/fixture_repo.py) stands in for it, served on 127.0.0.1, exactly as in tests/roles/test_update.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devserver import versions
from devserver.images.artifact import TARGET_FORMATS, load_manifest
from devtools import fixture_repo
from tests.support.image_builds import REPO, CloudArtifacts, cache_root, cli, write_spec


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, toolkit_repo: fixture_repo.FixtureRepo, image_out: Path
) -> dict[str, Path]:
    """The local spec, and the session's artifact folder and image cache (those of ``cloud_artifact`` too)."""
    return {
        "spec": write_spec(tmp_path_factory.mktemp("image-e2e"), toolkit_repo),
        "out": image_out,
        "cache": cache_root() / "images",
    }


def build(workspace: dict[str, Path], target: str, *extra: str) -> tuple[int, dict[str, Any]]:
    return cli(
        "image", "build", "--target", target, "--spec", str(workspace["spec"]), "--out", str(workspace["out"]),
        "--cache-dir", str(workspace["cache"]), *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def local_image(workspace: dict[str, Path]) -> dict[str, Any]:
    rc, payload = build(workspace, "local")
    assert rc == 0, payload
    return payload


def test_local_image_carries_the_spec_software(local_image: dict[str, Any]) -> None:
    manifest = local_image["manifest"]
    components = manifest["components"]
    # Read from the image by image_validate: the module DKMS built, nvcc, nvidia-ctk, dockerd, containerd.
    assert components["nvidia_driver"].startswith("535."), components
    assert components["cuda"].startswith("11.8"), components
    assert components["container_toolkit"].startswith(versions.CONTAINER_TOOLKIT), components
    for name in ("docker", "containerd", "kernels"):
        assert components[name], components
    assert set(manifest["firmware"]) == {"bios", "uefi"}
    folder = Path(local_image["folder"])
    loaded = load_manifest(folder)  # the one reader accepts it: files present at their recorded sizes
    assert [(d.format, d.path) for d in loaded.disks] == list(TARGET_FORMATS["local"])
    assert loaded.primary.allocated < loaded.primary.virtual_size


def test_local_image_boots_with_uefi_and_bios_and_matches_its_spec(local_image: dict[str, Any]) -> None:
    rc, payload = cli("image", "test", local_image["folder"], timeout=1800)
    assert rc == 0, json.dumps(payload, indent=2)[-4000:]
    boots = {boot["firmware"]: boot for boot in payload["boots"]}
    assert set(boots) == {"uefi", "bios"}
    for boot in boots.values():
        assert boot["drift"] == []
        facts = boot["facts"]
        assert facts["os"].startswith("Debian GNU/Linux 12"), facts
        # the module DKMS built for the kernel the image booted (status_facts: kernel → "module/version: status")
        booted = facts["dkms"].get(facts["kernel"], [])
        assert any(e.startswith("nvidia") and e.endswith(": installed") for e in booted), facts
        assert facts["nouveau"] == "blacklisted", facts
        assert "nvidia" in facts["docker_runtimes"], facts


def test_rebuild_with_the_same_inputs_is_skipped(workspace: dict[str, Path], local_image: dict[str, Any]) -> None:
    rc, payload = build(workspace, "local")
    assert rc == 0, payload
    assert payload["skipped"] is True
    assert payload["folder"] == local_image["folder"]


@pytest.mark.parametrize("target", ["gce", "azure", "aws", "openstack"])
def test_cloud_targets_share_one_provisioned_tree(cloud_artifact: CloudArtifacts, target: str) -> None:
    payload = cloud_artifact(target)  # built once per session, shared with tests/uploads/test_built_images.py
    manifest = load_manifest(Path(payload["folder"]))
    assert manifest.target == target
    assert [(d.format, d.path) for d in manifest.disks] == list(TARGET_FORMATS[target])
    assert manifest.components["nvidia_driver"].startswith("535."), manifest.components
    if cloud_artifact.order.index(target) > 0:
        # The finish stage ran on the tree that the session's first cloud build (gce, in this order) provisioned: no
        # second base build or playbook run.
        assert "base" not in manifest.timings
    if target == "azure":
        assert manifest.hyperv_generation == "V2"
        assert manifest.primary.virtual_size % (1024 * 1024) == 0
    if target == "gce":
        assert manifest.primary.virtual_size % 1024**3 == 0


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def test_sigint_during_the_playbook_leaves_nothing_behind(
    tmp_path: Path, workspace: dict[str, Path], toolkit_repo: fixture_repo.FixtureRepo
) -> None:
    # Another admin user: other role variables, so the provision stage really runs the playbook (no cached tree).
    spec = write_spec(tmp_path, toolkit_repo, admin_user="interrupted")
    out = tmp_path / "artifacts"
    argv = [
        sys.executable, "-m", "devserver", "image", "build", "--target", "local", "--spec", str(spec),
        "--out", str(out), "--cache-dir", str(workspace["cache"]), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        # The chroot's mounts appear when the playbook starts; interrupt a little after.
        while time.monotonic() < deadline and not _mounts_under(out):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert _mounts_under(out), "the build never reached the playbook"
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _mounts_under(out) == []
    assert list(out.glob(".work-*")) == [], "the work folder was left behind"
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(out) in _cmdline(int(pid))]
    assert leftovers == [], leftovers
    assert not list(out.glob("*/manifest.json")), "an interrupted build must not leave an artifact"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
