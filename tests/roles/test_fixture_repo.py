"""The NVIDIA repository TEST FIXTURE (devtools/fixture_repo.py) on a booted test host, with real apt.

What the role tests rely on, checked here with apt itself: the toolkit repository's key from ``key_url`` verifies
its ``InRelease`` and the pinned toolkit installs, through the host's apt-cacher-ng; a wrong key makes apt refuse
the repository (signature checking is real); the CUDA repository's key is served at NVIDIA's path, apt resolves
``cuda-drivers-535`` down to Debian's real driver, and ``cuda-toolkit-12-2`` installs a working ``nvcc --version``,
with apt reaching the fixture directly (proxy bypass) while Debian still goes through the proxy.
"""

from __future__ import annotations

import http.client
import itertools
import json
import shlex
import socket
import time
import urllib.parse
from pathlib import Path

import pytest

from devtools import fixture_repo as fx
from devtools import testhost as th

TOOLKIT_KEYRING = "/usr/share/keyrings/devserver-fixture-toolkit.gpg"
TOOLKIT_SOURCE = "/etc/apt/sources.list.d/devserver-fixture-toolkit.list"
APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -q"


def fetch_key(host: th.TestHost, url: str, dest: str) -> list[str]:
    """Download `url` to `dest` on the host, straight from the fixture server (apt-cacher-ng refuses key files),
    and return the fingerprints of the primary keys in it."""
    host.ssh(f"sudo /usr/lib/apt/apt-helper download-file {shlex.quote(url)} {dest}", timeout=60)
    listing = host.ssh(f"gpg --batch --quiet --with-colons --show-keys {dest}").stdout.splitlines()
    return [
        line.split(":")[9]
        for prev, line in itertools.pairwise(listing)
        if prev.startswith("pub:") and line.startswith("fpr:")
    ]


def apt_problems(output: str) -> list[str]:
    """apt's warning and error lines."""
    return [line for line in output.splitlines() if line.startswith(("W:", "E:", "Err:"))]


def toolkit_only(source: str) -> str:
    """apt options restricting it to one source list (the fixture's), so Debian's indexes are not refetched."""
    return f"-o Dir::Etc::SourceList={source} -o Dir::Etc::SourceParts=-"


def test_toolkit_repo_installs_through_the_apt_proxy(
    testhost: th.TestHost, nvidia_fixture_repo: fx.FixtureRepo, request: pytest.FixtureRequest
) -> None:
    host, repo = testhost, nvidia_fixture_repo
    version = repo.toolkit_deb_version
    proxy = f"-o Acquire::http::Proxy={shlex.quote(host.apt_proxy)}"

    assert fetch_key(host, repo.key_url, "/tmp/toolkit.asc") == [repo.fingerprint]
    host.ssh(f"sudo gpg --batch --yes --dearmor -o {TOOLKIT_KEYRING} /tmp/toolkit.asc")
    host.ssh(f"echo {shlex.quote(repo.toolkit_source(TOOLKIT_KEYRING))} | sudo tee {TOOLKIT_SOURCE}")

    seen = len(repo.requests)
    started = time.monotonic()
    update = host.ssh(f"{APT} {proxy} update 2>&1", timeout=300)
    request.node.user_properties.append(("apt_update_s", round(time.monotonic() - started, 1)))
    assert not apt_problems(update.stdout), update.stdout
    # The route: apt's requests came through apt-cacher-ng (which connects from host_address), none directly.
    index = f"/{repo.build_id}/toolkit/{fx.DEB_ARCH}/InRelease"
    assert {r.client for r in repo.requests[seen:]} == {host.host_address}, repo.requests[seen:]
    assert any(r.path == index and r.status == 200 for r in repo.requests[seen:]), repo.requests[seen:]

    policy = host.ssh("apt-cache policy nvidia-container-toolkit").stdout
    assert f"Candidate: {version}" in policy, policy
    assert fx.FIXTURE_NOTE in host.ssh("apt-cache show nvidia-container-toolkit").stdout

    started = time.monotonic()
    install = host.ssh(f"{APT} {proxy} install -y nvidia-container-toolkit={version} 2>&1", timeout=300)
    request.node.user_properties.append(("apt_install_s", round(time.monotonic() - started, 1)))
    assert not apt_problems(install.stdout), install.stdout
    assert {r.client for r in repo.requests[seen:]} == {host.host_address}, repo.requests[seen:]
    installed = host.ssh(
        "dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' " + " ".join(fx.TOOLKIT_PACKAGES)
    )
    assert sorted(installed.stdout.splitlines()) == sorted(f"{p} {version} installed" for p in fx.TOOLKIT_PACKAGES)

    # nvidia-ctk does honestly what the roles call, and nothing more.
    ctk = host.ssh("nvidia-ctk --version").stdout.splitlines()
    assert ctk[0] == f"NVIDIA Container Toolkit CLI version {repo.toolkit_version}", ctk
    assert fx.FIXTURE_NOTE in ctk[1], ctk
    cdi = host.ssh("nvidia-ctk cdi generate --output=/tmp/nvidia.yaml", check=False)
    assert cdi.returncode == 1, cdi
    assert "no NVIDIA GPU (test fixture)" in cdi.stderr, cdi.stderr
    host.ssh("test ! -e /tmp/nvidia.yaml")
    other = host.ssh("nvidia-ctk runtime configure --runtime=docker", check=False)
    assert other.returncode == 2, other
    assert "unsupported in the test fixture" in other.stderr, other.stderr

    # The "nvidia" runtime hands its command line to runc unchanged (a stand-in runc records it).
    host.ssh("mkdir -p /tmp/bin && printf '#!/bin/sh\\necho \"runc $*\"\\n' > /tmp/bin/runc && chmod +x /tmp/bin/runc")
    run = host.ssh("PATH=/tmp/bin:$PATH nvidia-container-runtime --root /run/x create --bundle '/b 1' id")
    assert run.stdout.strip() == "runc --root /run/x create --bundle /b 1 id", run.stdout
    host.ssh(f"grep -q {shlex.quote(fx.FIXTURE_NOTE)} /usr/share/doc/nvidia-container-toolkit/copyright")


def test_toolkit_repo_with_a_wrong_key_is_refused(
    testhost: th.TestHost, nvidia_fixture_repo: fx.FixtureRepo
) -> None:  # fmt: skip
    host, repo = testhost, nvidia_fixture_repo
    proxy = f"-o Acquire::http::Proxy={shlex.quote(host.apt_proxy)}"
    # A real key, just not this repository's: the CUDA repository's (the fixture signs each with its own).
    assert fetch_key(host, repo.cuda_key_url, "/tmp/cuda.asc") == [repo.cuda_fingerprint] != [repo.fingerprint]
    host.ssh(f"sudo gpg --batch --yes --dearmor -o {TOOLKIT_KEYRING} /tmp/cuda.asc")
    host.ssh(f"echo {shlex.quote(repo.toolkit_source(TOOLKIT_KEYRING))} | sudo tee {TOOLKIT_SOURCE}")

    update = host.ssh(f"{APT} {proxy} {toolkit_only(TOOLKIT_SOURCE)} update 2>&1", check=False, timeout=300)
    assert update.returncode != 0, update.stdout
    assert f"NO_PUBKEY {repo.fingerprint[-16:]}" in update.stdout, update.stdout
    assert f"The repository '{repo.toolkit_url}/{fx.DEB_ARCH}  InRelease' is not signed." in update.stdout, (
        update.stdout
    )
    policy = host.ssh("apt-cache policy nvidia-container-toolkit").stdout
    assert "Candidate" not in policy, policy

    # Control: the same source with the right key verifies, so the key was the only thing wrong.
    assert fetch_key(host, repo.key_url, "/tmp/toolkit.asc") == [repo.fingerprint]
    host.ssh(f"sudo gpg --batch --yes --dearmor -o {TOOLKIT_KEYRING} /tmp/toolkit.asc")
    update = host.ssh(f"{APT} {proxy} {toolkit_only(TOOLKIT_SOURCE)} update 2>&1", timeout=300)
    assert not apt_problems(update.stdout), update.stdout
    assert f"Candidate: {repo.toolkit_deb_version}" in host.ssh("apt-cache policy nvidia-container-toolkit").stdout


def test_cuda_repo_resolves_driver_and_installs_toolkit_directly(
    testhost: th.TestHost, nvidia_fixture_repo: fx.FixtureRepo, request: pytest.FixtureRequest
) -> None:
    host, repo = testhost, nvidia_fixture_repo
    # The key where NVIDIA serves its own, armored: apt reads it as *.asc, as the nvidia_driver role installs it.
    assert repo.cuda_key_url == f"{repo.cuda_url}/debian12/x86_64/3bf863cc.pub"
    assert fetch_key(host, repo.cuda_key_url, "/tmp/cuda.asc") == [repo.cuda_fingerprint]
    keyring = "/usr/share/keyrings/devserver-fixture-cuda.asc"
    host.ssh(f"sudo install -m 0644 /tmp/cuda.asc {keyring}")
    source = f"Types: deb\nURIs: {repo.cuda_url}/{fx.CUDA_DISTRO}/{fx.CUDA_ARCH}/\nSuites: /\nSigned-By: {keyring}\n"
    host.ssh(f"printf %s {shlex.quote(source)} | sudo tee /etc/apt/sources.list.d/devserver-fixture-cuda.sources")
    # As devserver_base configures apt: everything through the proxy except the bypassed host (the fixture).
    proxy_conf = f'Acquire::http::Proxy "{host.apt_proxy}";\nAcquire::http::Proxy::{repo.address} "DIRECT";\n'
    host.ssh(f"printf %s {shlex.quote(proxy_conf)} | sudo tee /etc/apt/apt.conf.d/90devserver-proxy")

    seen = len(repo.requests)
    started = time.monotonic()
    update = host.ssh(f"{APT} update 2>&1", timeout=300)
    request.node.user_properties.append(("apt_update_s", round(time.monotonic() - started, 1)))
    assert not apt_problems(update.stdout), update.stdout
    # The route: straight from the host, nothing through apt-cacher-ng (which Debian's indexes went through).
    index = f"/{repo.build_id}/cuda/{fx.CUDA_DISTRO}/{fx.CUDA_ARCH}/InRelease"
    assert {r.client for r in repo.requests[seen:]} == {host.address}, repo.requests[seen:]
    assert any(r.path == index and r.status == 200 for r in repo.requests[seen:]), repo.requests[seen:]
    assert "bookworm/InRelease" in (host.state_dir / "acng" / "log" / "apt-cacher.log").read_text()

    for package, version in (
        (fx.DRIVER_PACKAGE, fx.DRIVER_VERSION),
        (fx.CUDA_TOOLKIT_PACKAGE, fx.CUDA_TOOLKIT_VERSION),
    ):
        policy = host.ssh(f"apt-cache policy {package}").stdout
        assert f"Candidate: {version}" in policy, policy
    # The driver metapackage resolves to Debian's real, DKMS-built driver (simulated: the build takes minutes).
    plan = host.ssh(f"{APT} install -s {fx.DRIVER_PACKAGE}").stdout
    insts = {line.split()[1] for line in plan.splitlines() if line.startswith("Inst ")}
    assert {fx.DRIVER_PACKAGE, "nvidia-driver", "nvidia-kernel-dkms", "dkms"} <= insts, plan

    started = time.monotonic()
    install = host.ssh(f"{APT} install -y {fx.CUDA_TOOLKIT_PACKAGE} 2>&1", timeout=300)
    request.node.user_properties.append(("apt_install_s", round(time.monotonic() - started, 1)))
    assert not apt_problems(install.stdout), install.stdout
    assert {r.client for r in repo.requests[seen:]} == {host.address}, repo.requests[seen:]
    nvcc = host.ssh(f"/usr/local/cuda-{fx.CUDA_VERSION}/bin/nvcc --version").stdout.splitlines()
    assert nvcc[0] == "nvcc: NVIDIA (R) Cuda compiler driver", nvcc
    assert nvcc[3] == f"Cuda compilation tools, release {fx.CUDA_VERSION}, V{fx.NVCC_VERSION}", nvcc
    assert fx.FIXTURE_NOTE in nvcc[-1], nvcc
    version_json = json.loads(host.ssh(f"cat /usr/local/cuda-{fx.CUDA_VERSION}/version.json").stdout)
    assert version_json["cuda"] == {"name": "CUDA SDK", "version": fx.CUDA_RELEASE}
    assert host.ssh(f"/usr/local/cuda-{fx.CUDA_VERSION}/bin/nvcc -c x.cu", check=False).returncode == 2


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, str]:
    """GET `path` on an open (keep-alive) connection: status and body."""
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read().decode()


def _serve_use_and_fail(root: Path, seen: list[tuple[fx.FixtureRepo, http.client.HTTPConnection]]) -> None:
    """Serve `root`, fetch from it over one connection left open, check what is served, then raise."""
    with fx.serve(root, "127.0.0.1", port=0) as repo:
        # One keep-alive connection, several requests (apt-cacher-ng pipelines like this).
        connection = http.client.HTTPConnection(repo.address, repo.port, timeout=10)
        seen.append((repo, connection))
        status, key = _get(connection, urllib.parse.urlsplit(repo.key_url).path)
        assert (status, key.splitlines()[0]) == (200, "-----BEGIN PGP PUBLIC KEY BLOCK-----")
        status, packages = _get(connection, f"/{repo.build_id}/toolkit/{fx.DEB_ARCH}/Packages")
        assert status == 200
        assert "Package: nvidia-container-toolkit\nVersion: 1.2.3-1\n" in packages, packages
        # Only this build's URLs exist (a cache in between can never mix builds up), and no listings.
        for path in ("/toolkit/gpgkey", f"/{'0' * 16}/toolkit/gpgkey", f"/{repo.build_id}/toolkit/"):
            assert _get(connection, path)[0] == 404, path
        raise RuntimeError("boom")


def test_server_serves_only_its_build_and_stops_even_on_failure(tmp_path: Path) -> None:
    root = fx.build_fixture_repo(tmp_path, toolkit_version="1.2.3")
    assert fx.build_fixture_repo(tmp_path, toolkit_version="1.2.3") == root  # cached: same inputs, same build
    seen: list[tuple[fx.FixtureRepo, http.client.HTTPConnection]] = []
    with pytest.raises(RuntimeError, match="boom"):
        _serve_use_and_fail(root, seen)
    [(repo, connection)] = seen
    assert [r.status for r in repo.requests] == [200, 200, 404, 404, 404]
    # Stopped: the listening socket is closed and the connection left open was ended.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((repo.address, repo.port), timeout=5)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _get(connection, f"/{repo.build_id}/toolkit/gpgkey")
