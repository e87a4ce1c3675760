"""TEST FIXTURE: signed local apt repositories standing in for NVIDIA's, which this machine cannot reach.

Nothing here is NVIDIA software. Every package this module builds says "devserver TEST FIXTURE, not NVIDIA
software" in its description, its copyright file and its README, and its programs say so when they run.

Two repositories, laid out like NVIDIA's so that the roles' URL arithmetic is exercised unchanged:

* the container toolkit repository, flat per architecture like ``nvidia.github.io/libnvidia-container/stable/deb``
  (source ``deb [signed-by=KEYRING] <toolkit_url>/$(ARCH) /``, key at ``key_url`` like NVIDIA's ``gpgkey``):
  ``nvidia-container-toolkit``, ``nvidia-container-toolkit-base``, ``libnvidia-container-tools`` and
  ``libnvidia-container1`` at ``<toolkit_version>-1``. ``nvidia-container-runtime`` hands its command line to
  ``runc`` unchanged, so that Docker and containerd can start containers with the "nvidia" runtime on a host without
  a GPU (tests/roles/test_fixture_repo.py checks the hand-over with a stand-in runc, not a real container start);
  ``nvidia-ctk`` implements ``--version`` and refuses ``cdi generate`` (no GPU) with exit 1, anything else with 2.
* the CUDA repository for debian12, flat like ``developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/``
  (source ``deb [signed-by=KEYRING] <cuda_url>/debian12/x86_64/ /``, key at ``.../3bf863cc.pub`` as NVIDIA serves
  it): ``cuda-drivers-535`` (a metapackage on Debian's real ``nvidia-driver`` and ``nvidia-kernel-dkms``, so the
  cuda-repo path still installs and DKMS-builds the real driver), ``cuda-toolkit-12-2`` (metapackage, with
  ``/usr/local/cuda-12.2/version.json``) and ``cuda-nvcc-12-2`` (an ``nvcc`` that only answers ``--version``).

Each repository is signed with its own key (as NVIDIA's are), generated for the fixture in a temporary GNUPGHOME
that is deleted after signing: only the public keys are kept. apt verifies ``InRelease`` against ``signed-by``
for real.

Contracts:

* :func:`build_fixture_repo` returns a built repository directory under `workdir`, named after a sha256 of the
  build inputs, building it only if absent (atomically: a crash never leaves a half-built one). No network.
* :func:`serve` serves a built repository over HTTP on `address` for the duration of a ``with`` block and always
  stops the server on exit, also when the block raises. Every URL carries the build's random id as its first path
  component, so a cache between apt and the server (apt-cacher-ng keeps ``.deb`` files forever) can never hand out
  files of an earlier build at the same address.

How a test host reaches the server (measured with the test host's apt-cacher-ng, ``AllowUserPorts`` default 80):

* directly: the host reaches ``host_address`` over its veth; with the proxy configured, apt needs
  ``Acquire::http::Proxy::<address> "DIRECT"`` (and other downloaders ``no_proxy=<address>``).
* through apt-cacher-ng: only on port 80 (any other port: "403 ... prohibited port (see AllowUserPorts)"), hence
  :data:`DEFAULT_PORT`. apt's files (``InRelease``, ``Packages``, ``.deb``) pass; the key files (``gpgkey``,
  ``3bf863cc.pub``) are refused ("403 Forbidden file type or location") unless its config adds
  ``VfilePatternEx: (/gpgkey|/[0-9a-f]{8}\\.pub)$``.

Needs ``dpkg-deb`` (dpkg) and ``gpg``, ``gpg-agent``, ``gpgconf`` (Debian's ``gnupg``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from devserver import versions
from devserver.sysutil import file_lock

# Bump when the build recipe changes in a way the hashed inputs below do not capture.
RECIPE_VERSION = "1"

FIXTURE_NOTE = "devserver TEST FIXTURE, not NVIDIA software"
MAINTAINER = "devserver test fixture <fixture@devserver.invalid>"

DEB_ARCH = "amd64"
CUDA_DISTRO = "debian12"
CUDA_ARCH = "x86_64"
# The file name NVIDIA serves its CUDA repository key under (the fixture's key differs, its name does not).
CUDA_KEY_FILE = versions.CUDA_REPO_KEY_FILE
TOOLKIT_KEY_FILE = "gpgkey"

DRIVER_BRANCH = 535
DRIVER_PACKAGE = f"cuda-drivers-{DRIVER_BRANCH}"
DRIVER_VERSION = "535.247.01-1"
CUDA_VERSION = "12.2"  # X.Y, as in /usr/local/cuda-X.Y and the package names' X-Y
CUDA_RELEASE = "12.2.2"  # the CUDA release, the toolkit metapackage's version
NVCC_VERSION = "12.2.140"  # nvcc's own version in that release
CUDA_TOOLKIT_PACKAGE = "cuda-toolkit-" + CUDA_VERSION.replace(".", "-")
CUDA_TOOLKIT_VERSION = f"{CUDA_RELEASE}-1"
NVCC_PACKAGE = "cuda-nvcc-" + CUDA_VERSION.replace(".", "-")
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)

# apt-cacher-ng forwards requests to port 80 only (AllowUserPorts' default): serving there lets apt use either route.
DEFAULT_PORT = 80

# Fixed timestamps in the packages (dpkg-deb clamps file mtimes to it): a rebuild from the same inputs gives the
# same .deb bytes.
SOURCE_DATE_EPOCH = "1700000000"
META_FILE = "fixture.json"
# command -> Debian package providing it
BUILD_TOOLS = {"dpkg-deb": "dpkg", "gpg": "gnupg", "gpg-agent": "gnupg", "gpgconf": "gnupg"}


# Package contents


@dataclasses.dataclass(frozen=True)
class FixturePackage:
    """One binary package of the fixture: control fields and the files it installs (path -> (text, mode))."""

    name: str
    version: str
    summary: str
    description: str
    section: str = "utils"
    depends: tuple[str, ...] = ()
    files: Mapping[str, tuple[str, int]] = dataclasses.field(default_factory=dict)

    def control(self) -> str:
        """The DEBIAN/control text; the short and long descriptions both name the fixture."""
        fields = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            f"Architecture: {DEB_ARCH}",
            f"Maintainer: {MAINTAINER}",
            f"Section: {self.section}",
            "Priority: optional",
        ]
        if self.depends:
            fields.append("Depends: " + ", ".join(self.depends))
        long = "\n".join(" " + (line if line.strip() else ".") for line in self.description.strip().splitlines())
        fields.append(f"Description: {self.summary} ({FIXTURE_NOTE})\n{long}")
        return "\n".join(fields) + "\n"

    def all_files(self) -> dict[str, tuple[str, int]]:
        """`files` plus the doc files every fixture package carries. The copyright file also says it: the test
        hosts' dpkg config drops everything in /usr/share/doc but copyright files."""
        doc = f"/usr/share/doc/{self.name}"
        readme = (
            f"{self.name} {self.version}: {FIXTURE_NOTE}.\n\n{self.description.strip()}\n\n"
            "Built for devserver's tests (devtools/fixture_repo.py) as a local apt repository that stands in\n"
            "for NVIDIA's, which the test machines cannot reach. Do not install it anywhere else.\n"
        )
        copyright_text = (
            f"{self.name}: {FIXTURE_NOTE}.\n"
            "Written for the devserver project's tests; Apache-2.0, like devserver. Contains no NVIDIA code.\n"
        )
        return {**self.files, f"{doc}/README.fixture": (readme, 0o644), f"{doc}/copyright": (copyright_text, 0o644)}


def _script(body: str) -> tuple[str, int]:
    """An executable /bin/sh script whose second line names the fixture."""
    return f"#!/bin/sh\n# {FIXTURE_NOTE} (devtools/fixture_repo.py)\n{body.strip()}\n", 0o755


def _nvidia_ctk(version: str) -> tuple[str, int]:
    """nvidia-ctk doing honestly only what the roles call: --version, and cdi generate refused (no GPU)."""
    return _script(
        f"""
case "$1" in
--version|-v|version)
    echo "NVIDIA Container Toolkit CLI version {version}"
    echo "{FIXTURE_NOTE}: this nvidia-ctk implements only --version"
    exit 0 ;;
cdi)
    if [ "$2" = generate ]; then
        echo "nvidia-ctk: cdi generate: no NVIDIA GPU (test fixture): {FIXTURE_NOTE} cannot generate a CDI spec" >&2
        exit 1
    fi ;;
esac
echo "nvidia-ctk: '$*' is unsupported in the test fixture ({FIXTURE_NOTE})" >&2
exit 2
"""
    )


def _nvidia_container_runtime() -> tuple[str, int]:
    """The "nvidia" runtime Docker and containerd are pointed at: plain runc, since there is no GPU to inject."""
    return _script(
        """
# Docker and containerd call an OCI runtime with runc's command line: hand it to runc unchanged.
command -v runc >/dev/null 2>&1 || { echo "nvidia-container-runtime (test fixture): runc not found" >&2; exit 127; }
exec runc "$@"
"""
    )


def _refusing(program: str, version_line: str) -> tuple[str, int]:
    """A program that answers --version and refuses everything else (exit 2)."""
    return _script(
        f"""
if [ "$1" = --version ]; then
    echo "{version_line}"
    echo "{FIXTURE_NOTE}"
    exit 0
fi
echo "{program}: '$*' is unsupported in the test fixture ({FIXTURE_NOTE})" >&2
exit 2
"""
    )


def _nvcc() -> tuple[str, int]:
    """nvcc printing what the real one of this release prints for --version (the roles parse "release X.Y,")."""
    return _script(
        f"""
case "$1" in
--version|-V)
    cat <<'EOF'
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2023 NVIDIA Corporation
Built on Tue_Aug_15_22:02:13_PDT_2023
Cuda compilation tools, release {CUDA_VERSION}, V{NVCC_VERSION}
Build cuda_{CUDA_VERSION}.r{CUDA_VERSION}/compiler.33191640_0
EOF
    echo "({FIXTURE_NOTE}: this nvcc compiles nothing)"
    exit 0 ;;
esac
echo "nvcc: '$*' is unsupported in the test fixture ({FIXTURE_NOTE})" >&2
exit 2
"""
    )


def toolkit_packages(version: str) -> list[FixturePackage]:
    """The container toolkit repository's packages at `version` (Debian version ``<version>-1``), with the
    dependency chain of NVIDIA's: toolkit -> toolkit-base, tools -> libnvidia-container1."""
    deb_version = f"{version}-1"
    return [
        FixturePackage(
            name="nvidia-container-toolkit",
            version=deb_version,
            summary="NVIDIA Container toolkit",
            description="Stand-in for nvidia-container-toolkit: an OCI hook that refuses to run.",
            depends=(
                f"nvidia-container-toolkit-base (= {deb_version})",
                f"libnvidia-container-tools (= {deb_version})",
            ),
            files={"/usr/bin/nvidia-container-runtime-hook": _refusing("nvidia-container-runtime-hook", version)},
        ),
        FixturePackage(
            name="nvidia-container-toolkit-base",
            version=deb_version,
            summary="NVIDIA Container Toolkit Base",
            description=(
                "Stand-in for nvidia-container-toolkit-base: nvidia-container-runtime execs runc (no GPU to inject);\n"
                "nvidia-ctk implements --version only and fails cdi generate (no NVIDIA GPU)."
            ),
            files={
                "/usr/bin/nvidia-ctk": _nvidia_ctk(version),
                "/usr/bin/nvidia-container-runtime": _nvidia_container_runtime(),
            },
        ),
        FixturePackage(
            name="libnvidia-container-tools",
            version=deb_version,
            summary="NVIDIA container runtime library (command-line tools)",
            description="Stand-in for libnvidia-container-tools: nvidia-container-cli answers --version only.",
            depends=(f"libnvidia-container1 (>= {deb_version})",),
            files={"/usr/bin/nvidia-container-cli": _refusing("nvidia-container-cli", f"cli-version: {version}")},
        ),
        FixturePackage(
            name="libnvidia-container1",
            version=deb_version,
            section="libs",
            summary="NVIDIA container runtime library",
            description="Stand-in for libnvidia-container1: documentation only, no library.",
        ),
    ]


def cuda_packages() -> list[FixturePackage]:
    """The CUDA repository's packages: the driver branch metapackage (on Debian's real driver) and the toolkit."""
    home = f"/usr/local/cuda-{CUDA_VERSION}"
    version_json = {
        "cuda": {"name": "CUDA SDK", "version": CUDA_RELEASE},
        "cuda_nvcc": {"name": "CUDA NVCC", "version": NVCC_VERSION},
    }
    return [
        FixturePackage(
            name=DRIVER_PACKAGE,
            version=DRIVER_VERSION,
            section="metapackages",
            summary=f"CUDA Driver meta-package, branch {DRIVER_BRANCH}",
            description=(
                f"Stand-in for {DRIVER_PACKAGE}: depends on Debian's own nvidia-driver and nvidia-kernel-dkms of\n"
                f"branch {DRIVER_BRANCH}, so installing it installs and DKMS-builds Debian's real driver."
            ),
            depends=(f"nvidia-driver (>= {DRIVER_BRANCH})", f"nvidia-kernel-dkms (>= {DRIVER_BRANCH})"),
        ),
        FixturePackage(
            name=CUDA_TOOLKIT_PACKAGE,
            version=CUDA_TOOLKIT_VERSION,
            section="metapackages",
            summary=f"CUDA Toolkit {CUDA_VERSION} meta-package",
            description=f"Stand-in for {CUDA_TOOLKIT_PACKAGE}: {home}/version.json and the fixture nvcc.",
            depends=(f"{NVCC_PACKAGE} (>= {NVCC_VERSION})",),
            files={f"{home}/version.json": (json.dumps(version_json, indent=4) + "\n", 0o644)},
        ),
        FixturePackage(
            name=NVCC_PACKAGE,
            version=f"{NVCC_VERSION}-1",
            section="devel",
            summary="CUDA nvcc",
            description=f"Stand-in for {NVCC_PACKAGE}: {home}/bin/nvcc answers --version only and compiles nothing.",
            files={f"{home}/bin/nvcc": _nvcc()},
        ),
    ]


# Building


def _run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command capturing text output; raise with its output on failure."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


def _require_tools() -> None:
    """Fail with the Debian package to install when a build tool is missing."""
    missing = sorted(tool for tool in BUILD_TOOLS if shutil.which(tool) is None)
    if missing:
        packages = " ".join(sorted({BUILD_TOOLS[tool] for tool in missing}))
        raise RuntimeError(f"the NVIDIA fixture repository needs {missing}: apt-get install {packages}")


def fixture_key(toolkit_version: str) -> str:
    """sha256 over every input of the build (recipe version, package contents and control fields)."""
    packages = [*toolkit_packages(toolkit_version), *cuda_packages()]
    inputs = {
        "recipe": RECIPE_VERSION,
        "epoch": SOURCE_DATE_EPOCH,
        "packages": [
            {"control": p.control(), "files": {k: list(v) for k, v in sorted(p.all_files().items())}} for p in packages
        ],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_fixture_repo(workdir: Path, *, toolkit_version: str) -> Path:
    """Return the built fixture repository for `toolkit_version` under `workdir`, building it if absent.

    The directory is ``workdir/nvidia-fixture-repo-<key[:16]>`` (key = :func:`fixture_key`) and holds
    ``toolkit/<arch>/`` and ``cuda/debian12/x86_64/`` (each: the .debs, ``Packages``, ``Packages.gz``, ``Release``,
    ``InRelease``, ``Release.gpg``), the keys ``toolkit/gpgkey`` and ``cuda/debian12/x86_64/3bf863cc.pub``
    (ASCII-armored, like NVIDIA's), and ``fixture.json`` (fingerprints, build id, versions). It appears atomically;
    concurrent callers serialise on a lock in `workdir`. Older builds are left alone (a few KiB each).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / f"nvidia-fixture-repo-{fixture_key(toolkit_version)[:16]}"
    if (root / META_FILE).exists():
        return root
    _require_tools()
    with file_lock(workdir / "nvidia-fixture-repo.lock"):
        if (root / META_FILE).exists():  # built by a concurrent caller while we waited
            return root
        partial_dir = Path(tempfile.mkdtemp(prefix=".partial-nvidia-fixture-repo-", dir=workdir))
        try:
            _build(partial_dir, toolkit_version)
            if root.exists():  # a build that crashed before writing fixture.json cannot be in use
                shutil.rmtree(root)
            partial_dir.rename(root)
        finally:
            shutil.rmtree(partial_dir, ignore_errors=True)
    return root


def _build(root: Path, toolkit_version: str) -> None:
    """Build both repositories into the empty directory `root`."""
    toolkit_dir = root / "toolkit" / DEB_ARCH
    cuda_dir = root / "cuda" / CUDA_DISTRO / CUDA_ARCH
    with _gnupg_home() as home:
        toolkit_fpr = _generate_key(home, "toolkit repository")
        cuda_fpr = _generate_key(home, f"CUDA repository {CUDA_DISTRO}")
        for directory, packages, fpr, label in (
            (toolkit_dir, toolkit_packages(toolkit_version), toolkit_fpr, "NVIDIA container toolkit"),
            (cuda_dir, cuda_packages(), cuda_fpr, f"NVIDIA CUDA {CUDA_DISTRO}"),
        ):
            directory.mkdir(parents=True)
            debs = [_build_deb(package, directory, root / "staging") for package in packages]
            _write_indexes(directory, debs, label)
            _sign(home, fpr, directory)
        (root / "toolkit" / TOOLKIT_KEY_FILE).write_text(_export_key(home, toolkit_fpr))
        (cuda_dir / CUDA_KEY_FILE).write_text(_export_key(home, cuda_fpr))
    shutil.rmtree(root / "staging")
    meta = {
        "note": FIXTURE_NOTE,
        "build_id": secrets.token_hex(8),
        "toolkit_version": toolkit_version,
        "fingerprint": toolkit_fpr,
        "cuda_fingerprint": cuda_fpr,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def _gnupg_home() -> Iterator[Path]:
    """A throwaway GNUPGHOME (short path: gpg-agent's socket lives in it); its agent is stopped and the secret keys
    deleted on exit."""
    home = Path(tempfile.mkdtemp(prefix="fixture-gnupg-"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _gpg(home: Path, *args: str, stdin: str | None = None) -> str:
    """gpg in batch mode on `home`; returns stdout."""
    return _run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty", *args], input=stdin).stdout


def _generate_key(home: Path, purpose: str) -> str:
    """A new passphrase-less ed25519 signing key for the fixture; returns its fingerprint (40 upper-hex)."""
    uid = f"devserver test fixture ({purpose}, not NVIDIA) <fixture@devserver.invalid>"
    _gpg(home, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-gen-key", uid, "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-keys", f"={uid}")
    fprs = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    if len(fprs) != 1:
        raise RuntimeError(f"expected one key for {uid!r}, gpg listed:\n{listing}")
    return fprs[0].upper()


def _export_key(home: Path, fingerprint: str) -> str:
    """The ASCII-armored public key, as NVIDIA publishes its repository keys."""
    return _gpg(home, "--armor", "--export", fingerprint)


def _build_deb(package: FixturePackage, out_dir: Path, staging: Path) -> Path:
    """Build `package` with dpkg-deb into `out_dir`; returns the .deb (named <name>_<version>_<arch>.deb)."""
    tree = staging / package.name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(package.control())
    for path, (text, mode) in package.all_files().items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    deb = out_dir / f"{package.name}_{package.version}_{DEB_ARCH}.deb"
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)], env=env)
    return deb


def _write_indexes(directory: Path, debs: Sequence[Path], label: str) -> None:
    """Packages, Packages.gz and Release of a flat repository in `directory` (Filename: ./<deb>)."""
    stanzas = []
    for deb in sorted(debs):
        control = _run(["dpkg-deb", "--field", str(deb)]).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            # apt's Packages format lists these digests beside SHA256 (it verifies with SHA256).
            f"MD5sum: {hashlib.md5(data, usedforsecurity=False).hexdigest()}\n"
            f"SHA1: {hashlib.sha1(data, usedforsecurity=False).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    (directory / "Packages").write_bytes(packages)
    (directory / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = [
        "Origin: devserver-test-fixture",
        f"Label: {label} ({FIXTURE_NOTE})",
        f"Architectures: {DEB_ARCH}",
        f"Date: {formatdate(time.time(), usegmt=True)}",
        "Acquire-By-Hash: no",
        f"Description: {FIXTURE_NOTE}: stands in for the {label} repository in devserver's tests",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (directory / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>8} {name}")
    (directory / "Release").write_text("\n".join(lines) + "\n")


def _sign(home: Path, fingerprint: str, directory: Path) -> None:
    """InRelease (clearsigned) and Release.gpg (armored detached signature) of `directory`'s Release."""
    release = str(directory / "Release")
    signer = ["--local-user", f"{fingerprint}!", "--digest-algo", "SHA512", "--yes"]
    _gpg(home, *signer, "--clearsign", "--output", str(directory / "InRelease"), release)
    _gpg(home, *signer, "--detach-sign", "--armor", "--output", str(directory / "Release.gpg"), release)


# Serving


class Request(NamedTuple):
    """One request the fixture server answered: who asked (the proxy or the host itself), for what, and the status."""

    client: str
    method: str
    path: str  # as requested, build id prefix included
    status: int


@dataclasses.dataclass(frozen=True)
class FixtureRepo:
    """A served fixture repository (see the module docstring): URLs as the roles and the spec take them.

    ``requests`` is appended to by the server while it runs (what was fetched, by whom), for tests to assert the
    route apt took.
    """

    root: Path  # the built repository on this machine
    address: str
    port: int
    build_id: str  # first path component of every URL
    toolkit_version: str  # the container toolkit packages' upstream version (Debian version: <this>-1)
    fingerprint: str  # the toolkit repository's signing key (40 upper-hex)
    cuda_fingerprint: str  # the CUDA repository's signing key (a different key, as at NVIDIA)
    requests: list[Request] = dataclasses.field(default_factory=list, compare=False, repr=False)

    @property
    def base_url(self) -> str:
        """``http://<address>[:<port>]/<build_id>`` (no port when it is 80: apt and proxies see the plain host)."""
        netloc = self.address if self.port == 80 else f"{self.address}:{self.port}"
        return f"http://{netloc}/{self.build_id}"

    @property
    def toolkit_url(self) -> str:
        """The container toolkit repository: the source is ``deb [signed-by=KEYRING] <toolkit_url>/$(ARCH) /``."""
        return f"{self.base_url}/toolkit"

    @property
    def key_url(self) -> str:
        """The toolkit repository's ASCII-armored public key (NVIDIA's ``gpgkey``)."""
        return f"{self.toolkit_url}/{TOOLKIT_KEY_FILE}"

    def toolkit_repositories(self) -> dict[str, str]:
        """The spec's ``repositories`` settings that point the roles at this toolkit repository and its key."""
        return {
            "container_toolkit_repo": self.toolkit_url,
            "container_toolkit_key_url": self.key_url,
            "container_toolkit_key_fingerprint": self.fingerprint,
        }

    @property
    def cuda_url(self) -> str:
        """The CUDA repository root: the source is ``deb [signed-by=KEYRING] <cuda_url>/debian12/x86_64/ /``."""
        return f"{self.base_url}/cuda"

    @property
    def cuda_key_url(self) -> str:
        """The CUDA repository's ASCII-armored public key, where NVIDIA serves its own (``…/3bf863cc.pub``)."""
        return f"{self.cuda_url}/{CUDA_DISTRO}/{CUDA_ARCH}/{CUDA_KEY_FILE}"

    @property
    def toolkit_deb_version(self) -> str:
        """The Debian version of the toolkit packages, e.g. ``1.17.8-1``."""
        return f"{self.toolkit_version}-1"

    def toolkit_source(self, keyring: str) -> str:
        """The one-line apt source of the toolkit repository, verified with `keyring`."""
        return f"deb [signed-by={keyring}] {self.toolkit_url}/$(ARCH) /"

    def cuda_source(self, keyring: str) -> str:
        """The one-line apt source of the CUDA repository, verified with `keyring`."""
        return f"deb [signed-by={keyring}] {self.cuda_url}/{CUDA_DISTRO}/{CUDA_ARCH}/ /"

    def requests_from(self, client: str) -> list[Request]:
        """The requests made from `client` (an IP address) so far."""
        return [request for request in list(self.requests) if request.client == client]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the repository directory under ``/<build_id>/`` only (anything else: 404), and records every answer."""

    # Keep-alive: apt-cacher-ng pipelines requests on one connection and answers 503 for those a server closes
    # unanswered (HTTP/1.0 closes after each answer). Idle connections end after `timeout` seconds.
    protocol_version = "HTTP/1.1"
    timeout = 60
    build_id = ""
    log: list[Request]

    def translate_path(self, path: str) -> str:
        prefix = f"/{self.build_id}/"
        if not path.startswith(prefix):
            return str(Path(self.directory) / ".not-this-fixture-build")
        return super().translate_path("/" + path[len(prefix) :])

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "no directory listings")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if str(code).isdigit() else 0
        self.log.append(Request(self.client_address[0], self.command, self.path, status))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the requests are in ``FixtureRepo.requests``."""


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server whose server_close() also ends open keep-alive connections and joins their threads,
    so that nothing of it outlives the ``with serve(...)`` block."""

    daemon_threads = False  # joined by server_close()

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the address's name; the test hosts' addresses have none (slow timeouts).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Close the listening socket, end every open connection, wait for their threads. Call after shutdown()."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        super().server_close()


@contextlib.contextmanager
def serve(repo_root: Path, address: str, *, port: int = DEFAULT_PORT) -> Iterator[FixtureRepo]:
    """Serve the built repository `repo_root` on `address`:`port` (0: a free port) while the block runs.

    The default port 80 is the only one the test hosts' apt-cacher-ng forwards to; with another port apt must
    reach the server directly. Raises OSError when the port cannot be bound. The server is shut down and its
    socket closed when the block exits, whatever the outcome.
    """
    meta = json.loads((Path(repo_root) / META_FILE).read_text())
    log: list[Request] = []
    handler = partial(
        type("Handler", (_Handler,), {"build_id": meta["build_id"], "log": log}), directory=str(repo_root)
    )
    try:
        server = _Server((address, port), handler)
    except OSError as exc:
        hint = " (apt-cacher-ng forwards only to port 80; port=0 serves for direct access)" if port == 80 else ""
        raise OSError(exc.errno, f"fixture repo cannot listen on {address}:{port}: {exc.strerror}{hint}") from exc
    thread = threading.Thread(target=server.serve_forever, name=f"fixture-repo-{address}", daemon=True)
    thread.start()
    try:
        yield FixtureRepo(
            root=Path(repo_root),
            address=address,
            port=int(server.server_address[1]),
            build_id=meta["build_id"],
            toolkit_version=meta["toolkit_version"],
            fingerprint=meta["fingerprint"],
            cuda_fingerprint=meta["cuda_fingerprint"],
            requests=log,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
