"""Fixtures for role tests on a booted Debian 12 test host (see devtools/testhost).

* ``testhost_cache_dir`` (session): ``$DEVSERVER_TEST_CACHE`` or ``~/.cache/devserver-tests``; holds the
  rootfs tarball and the apt-cacher-ng caches, reused between runs. First removes hosts that a killed
  earlier run left behind (``testhost.gc``).
* ``testhost_rootfs`` (session): the cached rootfs tarball, built on first use (~2.5 min cold).
* ``testhost`` (function): a fresh, never-converged host, booted and answering SSH; always torn down
  after the test, whatever its outcome.
* ``nvidia_fixture_repo`` (function): the TEST FIXTURE standing in for NVIDIA's CUDA and container-toolkit apt
  repositories (devtools/fixture_repo.py), served to ``testhost`` on its ``host_address``; always stopped.

Needs root (netns, veth, loop devices, systemd-nspawn).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devserver import versions
from devtools import fixture_repo
from devtools import testhost as th


@pytest.fixture(scope="session")
def testhost_cache_dir() -> Path:
    """Cache shared between runs: rootfs tarball and apt-cacher-ng caches."""
    if os.geteuid() != 0:
        pytest.fail("role tests need root: they boot systemd-nspawn hosts in their own network namespaces")
    th.gc()  # hosts left behind by an earlier run that was killed before its teardown
    return th.default_cache_dir()


@pytest.fixture(scope="session")
def testhost_rootfs(testhost_cache_dir: Path) -> Path:
    """The cached rootfs tarball (built now if its inputs changed)."""
    return th.build_rootfs(testhost_cache_dir)


@pytest.fixture
def testhost(
    testhost_rootfs: Path, testhost_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[th.TestHost]:  # fmt: skip
    """A fresh test host reachable over SSH; torn down after the test even if it fails.

    Its boot and teardown times are recorded in the test's ``user_properties``
    (``testhost_up_s``, ``testhost_down_s``).
    """
    del testhost_rootfs  # ensures the (session-wide) build happens outside the per-test timing
    name = f"t{secrets.token_hex(4)}"
    started = time.monotonic()
    host = th.up(name, tmp_path_factory.mktemp("testhost"), testhost_cache_dir)
    request.node.user_properties.append(("testhost_up_s", round(time.monotonic() - started, 1)))
    try:
        yield host
    finally:
        started = time.monotonic()
        th.down(host)
        request.node.user_properties.append(("testhost_down_s", round(time.monotonic() - started, 1)))


@pytest.fixture
def nvidia_fixture_repo(testhost: th.TestHost, testhost_cache_dir: Path) -> Iterator[fixture_repo.FixtureRepo]:
    """TEST FIXTURE, not NVIDIA software: signed local stand-ins for NVIDIA's CUDA (debian12) and container-toolkit
    repositories, with the toolkit at our pin (versions.CONTAINER_TOOLKIT).

    Built once into the cache (keyed on its inputs, rebuilt when they change) and served on port 80 of the host's
    ``host_address``, which the host reaches directly and through its apt-cacher-ng alike. The server stops after
    the test, whatever its outcome.
    """
    root = fixture_repo.build_fixture_repo(
        testhost_cache_dir / "nvidia-fixture-repo", toolkit_version=versions.CONTAINER_TOOLKIT
    )
    with fixture_repo.serve(root, testhost.host_address) as repo:
        yield repo
