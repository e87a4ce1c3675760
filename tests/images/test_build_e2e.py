"""`devserver image build` and `devserver image test` end to end, through the real CLI, as root.

The built-in local spec (Debian 12, the real Debian ``nvidia-driver`` built by DKMS for the image's kernel, CUDA from
Debian, Docker + containerd) is built with the chroot builder, booted under qemu with UEFI and with BIOS, reached
over SSH through cloud-init, and `devserver status` on it must match the spec. The same spec is then built for each
cloud target: the provisioned tree is reused from the cache, each target gets its own image roles, disk and formats,
each checked as it is written.

NVIDIA's container-toolkit repository is unreachable here: the signed TEST FIXTURE repository
(tests/support/fixture_repo.py) stands in for it, served on 127.0.0.1, exactly as in tests/roles/test_update.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devserver import versions  # noqa: E402
from devserver.images.artifact import TARGET_FORMATS, load_manifest  # noqa: E402
from tests.support import fixture_repo  # noqa: E402

BUILD_TIMEOUT_S = 3000
# A fixed port keeps the fixture's URLs, so the spec's role variables, so the cached provisioned tree, the same from
# one run to the next (the fixture's build id is stable while its cached build is).
TOOLKIT_PORT = 33979


def cache_root() -> Path:
    env = os.environ.get("DEVSERVER_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devserver-tests"


@pytest.fixture(scope="module")
def toolkit_repo() -> Iterator[fixture_repo.FixtureRepo]:
    """TEST FIXTURE, not NVIDIA software: the signed stand-in for NVIDIA's container-toolkit repository."""
    if os.geteuid() != 0:
        pytest.fail("image builds need root (the chroot builder mounts /proc, /sys and /dev in the image tree)")
    root = fixture_repo.build_fixture_repo(
        cache_root() / "nvidia-fixture-repo", toolkit_version=versions.CONTAINER_TOOLKIT
    )
    with fixture_repo.serve(root, "127.0.0.1", port=TOOLKIT_PORT) as repo:
        yield repo


def write_spec(folder: Path, repo: fixture_repo.FixtureRepo, **ssh: Any) -> Path:
    """The built-in local spec (examples/local.yaml), with the fixture standing in for NVIDIA's toolkit repo."""
    spec = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    spec["repositories"] = {
        "container_toolkit_repo": repo.toolkit_url,
        "container_toolkit_key_url": repo.key_url,
        "container_toolkit_key_fingerprint": repo.fingerprint,
    }
    spec["ssh"].update(ssh)
    path = folder / "devserver.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: float = BUILD_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """The real CLI as a user runs it; returns (exit code, its --json output)."""
    argv = [sys.executable, "-m", "devserver", *args, "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False)
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError:
        shown = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        pytest.fail(f"no JSON from {' '.join(args)} (rc {proc.returncode}):\n{shown}")
    return proc.returncode, payload


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, toolkit_repo: fixture_repo.FixtureRepo) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("image-e2e")
    return {
        "spec": write_spec(folder, toolkit_repo),
        "out": folder / "artifacts",
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
        assert facts["os"]["ID"] == "debian"
        assert any(facts["kernel"] in line and "installed" in line for line in facts["dkms"].splitlines()), facts
        assert facts["nouveau_blacklisted"] is True
        assert "nvidia" in facts["docker_runtimes"]


def test_rebuild_with_the_same_inputs_is_skipped(workspace: dict[str, Path], local_image: dict[str, Any]) -> None:
    rc, payload = build(workspace, "local")
    assert rc == 0, payload
    assert payload["skipped"] is True
    assert payload["folder"] == local_image["folder"]


@pytest.fixture(scope="module")
def driver_only_spec(tmp_path_factory: pytest.TempPathFactory, toolkit_repo: fixture_repo.FixtureRepo) -> Path:
    """The local spec without CUDA and container runtimes: the real driver and DKMS still, but a 2 GiB tree rather
    than a 9 GiB one, so that four more disks and their formats fit CI's time. The full tree's formats are written
    the same way (the code does not depend on the size); bench/image_build.py times them at full size."""
    spec = yaml.safe_load(write_spec(tmp_path_factory.mktemp("driver-only"), toolkit_repo).read_text())
    spec["name"] = "driver-only"
    spec["software"].update({"cuda": {"install": False}, "container_runtime": "none"})
    path = tmp_path_factory.mktemp("driver-only-spec") / "devserver.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("target", ["gce", "azure", "aws", "openstack"])
def test_cloud_targets_share_one_provisioned_tree(
    workspace: dict[str, Path], driver_only_spec: Path, target: str
) -> None:
    rc, payload = cli(
        "image", "build", "--target", target, "--spec", str(driver_only_spec), "--out", str(workspace["out"]),
        "--cache-dir", str(workspace["cache"]),
    )  # fmt: skip
    assert rc == 0, payload
    manifest = load_manifest(Path(payload["folder"]))
    assert manifest.target == target
    assert [(d.format, d.path) for d in manifest.disks] == list(TARGET_FORMATS[target])
    assert manifest.components["nvidia_driver"].startswith("535."), manifest.components
    if target != "gce":
        # The finish stage ran on the tree the first target provisioned: no second base build or playbook run.
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
