"""Images made by the real image builder, shared by every test folder that needs one (a pytest plugin).

Registered from tests/conftest.py (``pytest_plugins``), so tests/images and tests/uploads see the same session
fixtures and the same artifacts:

* ``toolkit_repo`` (session): the signed TEST FIXTURE repository (devtools/fixture_repo.py) standing in for
  NVIDIA's container-toolkit repository, which is unreachable here, served on 127.0.0.1:``TOOLKIT_PORT``.
* ``image_out`` (session): the session folder the builds write their artifact folders to.
* ``driver_only_spec`` (session): the built-in local spec without CUDA and container runtimes (see its docstring).
* ``cloud_artifact`` (session): ``cloud_artifact(target)`` → the ``--json`` payload of
  ``devserver image build --target TARGET`` on ``driver_only_spec``, built through the real CLI once per target per
  session (later calls return the first payload); ``cloud_artifact.order`` lists the targets in the order they
  were built.

The provisioned tree and the bases are cached under ``cache_root()`` (``$DEVSERVER_TEST_CACHE`` or
``~/.cache/devserver-tests``) between sessions. Builds need root (the chroot builder mounts /proc, /sys and /dev in
the image tree) and take minutes each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devserver import versions
from devtools import fixture_repo

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3000
# A fixed port keeps the fixture's URLs, so the spec's role variables, so the cached provisioned tree, the same from
# one run to the next (the fixture's build id is stable while its cached build is).
TOOLKIT_PORT = 33979


def cache_root() -> Path:
    env = os.environ.get("DEVSERVER_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devserver-tests"


@pytest.fixture(scope="session")
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
    spec["repositories"] = repo.toolkit_repositories()
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


@pytest.fixture(scope="session")
def image_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's --out folder: a build whose inputs hash matches an artifact already there is skipped."""
    return tmp_path_factory.mktemp("image-builds") / "artifacts"


@pytest.fixture(scope="session")
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


class CloudArtifacts:
    """``get(target)`` → the build's --json payload (``folder``, ``manifest``...), built on the first call only."""

    def __init__(self, spec: Path, out: Path, cache: Path) -> None:
        self.spec = spec
        self.out = out
        self.cache = cache
        self.built: dict[str, dict[str, Any]] = {}

    @property
    def order(self) -> list[str]:
        """The targets built so far this session, first built first (the first one provisioned the tree)."""
        return list(self.built)

    def __call__(self, target: str) -> dict[str, Any]:
        if target not in self.built:
            rc, payload = cli(
                "image", "build", "--target", target, "--spec", str(self.spec), "--out", str(self.out),
                "--cache-dir", str(self.cache),
            )  # fmt: skip
            assert rc == 0, payload
            self.built[target] = payload
        return self.built[target]


@pytest.fixture(scope="session")
def cloud_artifact(driver_only_spec: Path, image_out: Path) -> CloudArtifacts:
    """The driver-only spec built for a cloud target through the real CLI, once per target per session."""
    return CloudArtifacts(driver_only_spec, image_out, cache_root() / "images")
