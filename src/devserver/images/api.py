"""What the `devserver image …` commands call: one function per command, the domain decisions the CLI must not make.

Contract: these functions raise only :class:`~devserver.errors.DevserverError` subclasses (the CLI renders them
as they are, with their exit code class) or KeyboardInterrupt (after their own cleanup). Whether root is needed,
which builder `auto` means, whether an artifact with the same inputs can be reused, and which disk of an artifact
boots are decided here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from devserver.errors import DevserverError, InputError

if TYPE_CHECKING:
    from devserver.hosts import Host
    from devserver.images.artifact import Builder, Manifest, Target
    from devserver.images.build import BuildOptions, BuildResult, ProgressFn
    from devserver.images.qemu import BootedVM
    from devserver.plan import Resolved
    from devserver.update import Drift

ROOT_FIX = "run it with sudo (it mounts /proc, /sys and /dev inside the image tree)"


class NeedsRootError(DevserverError):
    """The command mounts inside an image tree and this process is not root (exit 1)."""

    def __init__(self, what: str) -> None:
        super().__init__("", f"{what} needs root", ROOT_FIX)


def require_root(what: str) -> None:
    """Raise :class:`NeedsRootError` naming `what` unless this process runs as root."""
    if os.geteuid() != 0:
        raise NeedsRootError(what)


def cache_dir(given: Path | None) -> Path:
    """`given`, else the default cache ($DEVSERVER_CACHE or ~/.cache/devserver)."""
    from devserver.images import base

    return given if given is not None else base.default_cache_dir()


@dataclass(frozen=True)
class BaseResult:
    distro: str
    tarball: Path
    seconds: float


def build_base(resolved: Resolved, distro: str, cache: Path | None) -> BaseResult:
    """`devserver image base`: the cached base rootfs for `distro` (the spec's os when empty).

    An unknown distro is an :class:`InputError`; building needs root; a failed mmdebstrap or extraction is an
    :class:`~devserver.images.base.ImageBuildError` naming the mirror to check.
    """
    from devserver.images import base

    if distro and distro not in base.RECIPES:
        *others, last = sorted(base.RECIPES)
        raise InputError("--distro", f"unknown distribution {distro!r}", f"use {', '.join(others)} or {last}")
    require_root("devserver image base")
    spec = resolved.spec.model_copy(update={"os": distro}) if distro else resolved.spec
    base_spec = base.BaseSpec.from_spec(spec)
    started = time.monotonic()
    try:
        tarball = base.build_base(base_spec, cache_dir(cache))
    except (RuntimeError, OSError) as exc:
        raise base.ImageBuildError(
            "base rootfs", str(exc), "check the mirror in spec.repositories and the log it names"
        ) from exc
    return BaseResult(base_spec.distro, tarball, round(time.monotonic() - started, 1))


def choose_builder(builder: Literal["auto"] | Builder) -> Builder:
    """auto: Packer's qemu builder where KVM really works (under TCG a driver build takes hours), else chroot."""
    if builder != "auto":
        return builder
    from devserver.images import qemu

    return "qemu" if shutil.which("packer") and qemu.detect_accel() == "kvm" else "chroot"


@dataclass(frozen=True)
class PlannedBuild:
    """A local build about to run: its inputs hash, and the artifact that makes it a no-op (None: it builds)."""

    resolved: Resolved
    options: BuildOptions
    inputs_hash: str
    reusable: Manifest | None

    def run(self, progress: ProgressFn | None = None) -> BuildResult:
        """Build (or reuse) the artifact; :class:`~devserver.images.build.BuildError`, ImageBuildError or
        ChrootError on failure, with the chroot's mounts and the work folder gone."""
        from devserver.images import build

        return build.build(self.resolved, self.options, progress)


def plan_build(resolved: Resolved, options: BuildOptions) -> PlannedBuild:
    """`devserver image build` with a local builder: hash the inputs, find a reusable artifact, and, when there is
    none to reuse, require root (the build mounts inside the image tree)."""
    from devserver.images import build

    key = build.inputs_hash(resolved, options.target, options.builder)
    found = None if options.force else build.existing(build.artifact_folder(resolved, options, key), key)
    if found is None:
        require_root(f"devserver image build --builder {options.builder}")
    return PlannedBuild(resolved, options, key, found)


def build_in_cloud(resolved: Resolved, target: Target) -> str:
    """`devserver image build --builder cloud`: the cloud's image ID; a local target is an :class:`InputError`,
    Packer's refusals and failures are :class:`~devserver.images.packer.PackerError`."""
    from devserver.images import build

    if target == "local":
        raise InputError("--builder cloud", "a local image is not built in a cloud", "use --builder chroot or qemu")
    return build.build_in_cloud(resolved, target)


def load_artifact(folder: Path) -> tuple[Manifest, Resolved]:
    """The artifact's manifest and the spec it was built from, resolved; ArtifactError or SpecError (exit 2)."""
    from devserver.images.artifact import ArtifactError, load_manifest
    from devserver.loader import load_spec
    from devserver.plan import resolve

    manifest = load_manifest(folder)
    if manifest.spec_file is None:
        raise ArtifactError(str(folder), "the manifest names no spec file", "rebuild the artifact")
    spec_path = folder / manifest.spec_file
    return manifest, resolve(load_spec(spec_path), str(spec_path))


def read_public_key(path: Path | None) -> str | None:
    """The login key for `image boot --public-key` (None: a fresh one); unreadable is an :class:`InputError`."""
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise InputError(f"--public-key {path}", str(exc.strerror), "pass your ~/.ssh/*.pub file") from None


@contextlib.contextmanager
def boot(
    folder: Path, manifest: Manifest, resolved: Resolved, firmware: str, work: Path, public_key: str | None
) -> Iterator[BootedVM]:
    """qemu.boot on the artifact's bootable disk (a GCE tar is unpacked into `work` first), sized from the spec."""
    from devserver.images import qemu
    from devserver.images.artifact import bootable_disk

    disk = bootable_disk(folder, manifest, work)
    cloud = resolved.spec.cloud
    cpus = getattr(cloud, "cpus", 2)
    memory_mb = 1024 * getattr(cloud, "memory_gb", 4)
    with qemu.boot(
        disk, firmware=firmware, workdir=work, user=resolved.spec.ssh.admin_user, public_key=public_key, cpus=cpus,
        memory_mb=memory_mb,
    ) as vm:  # fmt: skip
        yield vm


@dataclass(frozen=True)
class BootCheck:
    """One firmware's `image test`: how the VM booted, and `devserver status` against it."""

    firmware: str
    accel: str
    boot_to_ssh_s: float
    host: Host
    facts: dict[str, object]
    drift: list[Drift]


def check_boots(folder: Path, firmware: Literal["uefi", "bios", "both"]) -> Iterator[BootCheck]:
    """`devserver image test`: boot the artifact with each firmware in turn and check it against its spec.

    Yields one :class:`BootCheck` per firmware as it completes. A firmware the image does not boot with is an
    :class:`InputError`; a VM that does not come up is an ImageBuildError; one that cannot be reached or probed is
    an error whose `where` is the firmware.
    """
    import tempfile

    from devserver import update
    from devserver.hosts import Host
    from devserver.hoststate.observed import status_facts
    from devserver.remote import RemoteError

    manifest, resolved = load_artifact(folder)
    modes = ["uefi", "bios"] if firmware == "both" else [firmware]
    for mode in modes:
        if mode not in manifest.firmware:
            raise InputError(str(folder), f"the image does not boot with {mode}", f"test with {manifest.firmware[0]}")
        started = time.monotonic()
        with (
            tempfile.TemporaryDirectory(prefix="devserver-test-") as work,
            boot(folder, manifest, resolved, mode, Path(work), None) as vm,
        ):
            boot_s = round(time.monotonic() - started, 1)
            host = Host(name=f"{manifest.name}-{mode}", address=vm.host, user=vm.user, port=vm.port,
                        key_file=vm.private_key)  # fmt: skip
            try:
                observed, drift = update.status(host, resolved, vm.known_hosts)
            except RemoteError as exc:
                raise DevserverError(mode, exc.message, exc.fix) from exc
        yield BootCheck(mode, vm.accel, boot_s, host, status_facts(observed), drift)
