"""`devserver image …`: build, boot, test (and upload) disk images. Parsing and rendering only; the work is in
devserver.images.*, imported inside each command so that `devserver --help` stays cheap."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer

from devserver.cli.upload import upload

if TYPE_CHECKING:
    from devserver.images.artifact import Manifest
    from devserver.images.qemu import BootedVM
    from devserver.plan import Resolved
    from devserver.runner import TaskEvent

image_app = typer.Typer(
    help="Build, boot, test and upload devserver disk images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
TargetName = Literal["gce", "azure", "aws", "openstack", "local"]
FirmwareName = Literal["uefi", "bios"]

SpecOption = Annotated[
    Path | None,
    typer.Option(
        "--spec", help="The spec (default: ./devserver.yaml, else the built-in local one).", show_default=False
    ),
]
CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Base and provisioned trees (default: $DEVSERVER_CACHE or ~/.cache/devserver).",
        show_default=False,
    ),
]  # fmt: skip
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ArtifactArg = Annotated[
    Path, typer.Argument(help="An artifact folder from `devserver image build`.", show_default=False)
]


def _fail(message: str, fix: str, code: int, json_out: bool = False) -> NoReturn:
    """One error line (or JSON), then exit `code`: never a traceback."""
    from devserver.cli.render import err

    if json_out:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "fix": fix}, indent=2) + "\n")
    else:
        err.print("[bold red]error[/]: ", end="")
        err.out(f"{message} — fix: {fix}", highlight=False)
    raise typer.Exit(code)


def _need_root(what: str, json_out: bool) -> None:
    if os.geteuid() != 0:
        fix = "run it with sudo (it mounts /proc, /sys and /dev inside the image tree)"
        _fail(f"{what} needs root", fix, EXIT_FAILED, json_out)


def _cache_dir(cache_dir: Path | None) -> Path:
    from devserver.images import base

    return cache_dir if cache_dir is not None else base.default_cache_dir()


@image_app.command("base")
def image_base(
    distro: Annotated[
        str, typer.Option("--distro", help="debian-12, ubuntu-22.04 or ubuntu-24.04 (default: the spec's os).")
    ] = "",
    spec: SpecOption = None,
    cache_dir: CacheOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Build (or find in the cache) the minimal cloud-ready root filesystem an image starts from.

    mmdebstrap with the cloud kernel, systemd, sshd, cloud-init and the boot loaders; cached by a hash of its inputs.
    Mirrors and the apt proxy come from the spec's `repositories`.
    """
    from devserver.cli.hosts import default_spec
    from devserver.cli.render import out, resolve_or_exit
    from devserver.images import base

    resolved = resolve_or_exit(default_spec(spec), json_out)
    if distro and distro not in ("debian-12", "ubuntu-22.04", "ubuntu-24.04"):
        _fail(f"--distro: unknown distribution {distro!r}", "use debian-12, ubuntu-22.04 or ubuntu-24.04", 2, json_out)
    _need_root("devserver image base", json_out)
    base_spec = base.BaseSpec.from_spec(resolved.spec)
    if distro:
        base_spec = base.BaseSpec.from_spec(resolved.spec.model_copy(update={"os": distro}))
    started = time.monotonic()
    try:
        tarball = base.build_base(base_spec, _cache_dir(cache_dir))
    except (RuntimeError, OSError) as exc:
        _fail(f"base rootfs: {exc}", "check the mirror in spec.repositories and the log it names", 1, json_out)
    seconds = round(time.monotonic() - started, 1)
    if json_out:
        payload = {"ok": True, "distro": base_spec.distro, "tarball": str(tarball), "seconds": seconds}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.print(f"[green]✓[/] base {base_spec.distro}: {tarball} ({seconds} s)")


@image_app.command("build")
def image_build(
    target: Annotated[TargetName, typer.Option("--target", help="The cloud (or local qemu) the image is for.")],
    spec: SpecOption = None,
    builder: Annotated[
        Literal["auto", "chroot", "qemu", "cloud"],
        typer.Option(
            "--builder",
            help="chroot (offline, fast), qemu (Packer boots the base disk), cloud (Packer builds in the cloud); "
            "auto: qemu where KVM really works and Packer is installed, else chroot.",
        ),
    ] = "auto",
    out_dir: Annotated[Path, typer.Option("--out", help="Where artifact folders go.")] = Path("artifacts"),
    cache_dir: CacheOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even when an artifact with these inputs exists.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Build the devserver image for TARGET from the spec: the same playbook as `devserver update`, baked in.

    Output: an artifact folder (disk in the target's format + manifest.json). An artifact with the same inputs hash
    is reused unless --force.
    """
    from devserver.cli.hosts import default_spec
    from devserver.cli.render import err, out, resolve_or_exit
    from devserver.images import build as build_module

    resolved = resolve_or_exit(default_spec(spec), json_out)
    chosen = _choose_builder(builder)
    if chosen == "cloud":
        _build_in_cloud(resolved, target, json_out)
        return
    options = build_module.BuildOptions(
        target=target, out_dir=out_dir, cache_dir=_cache_dir(cache_dir), builder=chosen, force=force
    )
    key = build_module.inputs_hash(resolved, target, chosen)
    found = None if force else build_module.existing(build_module.artifact_folder(resolved, options, key), key)
    if found is None:
        _need_root(f"devserver image build --builder {chosen}", json_out)
    if not json_out:
        out.print(
            f"[bold]devserver image build[/] {resolved.spec.name} → {target} ({chosen} builder, inputs {key[:12]})"
        )
    status = None if json_out else err.status("starting", spinner="dots")
    started = {"phase": "", "at": time.monotonic()}

    def progress(phase: str, what: str | TaskEvent) -> None:
        if status is None:
            return
        if phase != started["phase"]:
            started.update(phase=phase, at=time.monotonic())
            out.print(f"  [cyan]{phase}[/]: {what}")
        if isinstance(what, str):
            status.update(f"[cyan]{phase}[/] {what}")
        elif what.status == "failed":
            out.print(f"  [red]failed[/] {what.task}: {what.message[:400]}")

    from devserver.images.base import ImageBuildError
    from devserver.images.chroot import ChrootError

    # SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C: the chroot's mounts and the work folder go.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if status is not None:
            status.start()
        result = build_module.build(resolved, options, progress)
    except build_module.BuildError as exc:
        if status is not None:
            status.stop()
        _fail(f"image build failed in {exc.phase}: {exc.message}", _build_fix(exc), EXIT_FAILED, json_out)
    except ImageBuildError as exc:
        if status is not None:
            status.stop()
        _fail(f"image build failed: {exc.where}: {exc.message}", exc.fix, EXIT_FAILED, json_out)
    except ChrootError as exc:
        if status is not None:
            status.stop()
        _fail(f"image build failed preparing the chroot: {exc}", "run as root on a local filesystem", 1, json_out)
    except KeyboardInterrupt:
        if status is not None:
            status.stop()
        _fail("image build interrupted; mounts and work folder removed", "run the same command again", 130, json_out)
    finally:
        if status is not None:
            status.stop()
    _render_result(result, json_out)


def _choose_builder(builder: str) -> Literal["chroot", "qemu", "cloud"]:
    """auto: Packer's qemu builder where KVM really works (under TCG a driver build takes hours), else chroot."""
    if builder != "auto":
        return builder  # type: ignore[return-value]  # the Literal option admits only these
    import shutil

    from devserver.images import qemu

    return "qemu" if shutil.which("packer") and qemu.detect_accel() == "kvm" else "chroot"


def _build_in_cloud(resolved: Resolved, target: str, json_out: bool) -> None:
    from devserver.cli.render import out
    from devserver.images import build as build_module
    from devserver.images.packer import PackerError

    if target == "local":
        _fail("--builder cloud: a local image is not built in a cloud", "use --builder chroot or qemu", 2, json_out)
    try:
        image_id = build_module.build_in_cloud(resolved, target)  # type: ignore[arg-type]  # checked above
    except PackerError as exc:
        _fail(f"packer: {exc.where}: {exc.message}", exc.fix, EXIT_FAILED, json_out)
    if json_out:
        sys.stdout.write(json.dumps({"ok": True, "target": target, "image": image_id}, indent=2) + "\n")
    else:
        out.print(f"[green]✓[/] built in {target}: {image_id}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _build_fix(exc: Exception) -> str:
    log = getattr(exc, "log", None)
    return f"see {log}" if log else "fix the cause above and run the same command again"


def _render_result(result: object, json_out: bool) -> None:
    from devserver.cli.render import out
    from devserver.images.build import BuildResult

    assert isinstance(result, BuildResult)
    manifest = result.manifest
    if json_out:
        payload = {"ok": True, "skipped": result.skipped, "folder": str(result.folder)}
        sys.stdout.write(json.dumps(payload | {"manifest": manifest.model_dump(mode="json")}, indent=2) + "\n")
        return
    verb = "up to date (same inputs), reused" if result.skipped else "built"
    out.print(f"[green]✓[/] {manifest.name} {verb}: {result.folder}")
    for disk in manifest.disks:
        gib = disk.virtual_size / 1024**3
        out.print(
            f"    {disk.path}: {disk.format}, {gib:.1f} GiB virtual, {disk.allocated / 1024**2:.0f} MiB allocated, "
            f"{disk.file_size / 1024**2:.0f} MiB file"
        )
    if manifest.components:
        out.print("    " + ", ".join(f"{k} {v}" for k, v in sorted(manifest.components.items())))
    if not result.skipped:
        out.print("    " + ", ".join(f"{k} {v:.0f} s" for k, v in manifest.timings.items()))
    out.print(f"    next: devserver image test {result.folder}")


def _load(artifact: Path, json_out: bool) -> tuple[Manifest, Resolved]:
    """The artifact's manifest and the spec it was built from (resolved), or a clear error, exit 2."""
    from devserver.cli.render import spec_error
    from devserver.errors import SpecError
    from devserver.images.artifact import ArtifactError, load_manifest
    from devserver.loader import load_spec
    from devserver.plan import resolve

    try:
        manifest = load_manifest(artifact)
    except ArtifactError as exc:
        _fail(f"{exc.where}: {exc.message}", exc.fix, EXIT_USAGE, json_out)
    if manifest.spec_file is None:
        _fail(f"{artifact}: the manifest names no spec file", "rebuild the artifact", EXIT_USAGE, json_out)
    try:
        resolved = resolve(load_spec(artifact / manifest.spec_file), str(artifact / manifest.spec_file))
    except SpecError as exc:
        spec_error(exc, json_out)
    return manifest, resolved


@image_app.command("boot")
def image_boot(
    artifact: ArtifactArg,
    firmware: Annotated[FirmwareName, typer.Option("--firmware", help="Boot with UEFI (OVMF) or BIOS.")] = "uefi",
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Key to log in with (default: a fresh one).", show_default=False)
    ] = None,
) -> None:
    """Boot an image locally with qemu (KVM when it really works, TCG otherwise) until Ctrl-C.

    A NoCloud seed injects the login key; the disk is not modified (copy-on-write snapshot).
    """
    from devserver.cli.render import out

    manifest, resolved = _load(artifact, False)
    key_text = None
    if public_key is not None:
        try:
            key_text = public_key.read_text().strip()
        except OSError as exc:
            _fail(f"--public-key {public_key}: {exc.strerror}", "pass your ~/.ssh/*.pub file", EXIT_USAGE)
    with (
        tempfile.TemporaryDirectory(prefix="devserver-boot-") as work,
        _booted(artifact, manifest, resolved, firmware, Path(work), key_text, False) as vm,
    ):
        out.print(f"[green]✓[/] {manifest.name} is up ({vm.accel}, {firmware}); connect with:")
        out.out("    " + " ".join(vm.ssh_argv()), highlight=False)
        out.print("  Ctrl-C stops the VM (the disk is left unchanged).")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            out.print("stopping")


@image_app.command("test")
def image_test(
    artifact: ArtifactArg,
    firmware: Annotated[
        Literal["uefi", "bios", "both"], typer.Option("--firmware", help="Boot mode(s) to test.")
    ] = "both",
    json_out: JsonFlag = False,
) -> None:
    """Boot an image under qemu and run `devserver status` against it: it must reach SSH and match its spec.

    Exit 1 when it does not boot, or on drift (a GPU check cannot pass without a GPU and is reported, not failed).
    """
    from dataclasses import asdict

    from devserver import update as update_module
    from devserver.cli.hosts import _render_status
    from devserver.cli.render import out
    from devserver.remote import RemoteError
    from devserver.targets import Host

    manifest, resolved = _load(artifact, json_out)
    modes: list[FirmwareName] = ["uefi", "bios"] if firmware == "both" else [firmware]
    results = []
    for mode in modes:
        if mode not in manifest.firmware:
            _fail(f"{artifact}: the image does not boot with {mode}", f"test with {manifest.firmware[0]}", 2, json_out)
        started = time.monotonic()
        with (
            tempfile.TemporaryDirectory(prefix="devserver-test-") as work,
            _booted(artifact, manifest, resolved, mode, Path(work), None, json_out) as vm,
        ):
            boot_s = round(time.monotonic() - started, 1)
            host = Host(name=f"{manifest.name}-{mode}", address=vm.host, user=vm.user, port=vm.port,
                        key_file=vm.private_key)  # fmt: skip
            try:
                facts, drift = update_module.status(host, resolved, vm.known_hosts)
            except RemoteError as exc:
                _fail(f"{mode}: {exc.message}", exc.fix, EXIT_FAILED, json_out)
        results.append({"firmware": mode, "accel": vm.accel, "boot_to_ssh_s": boot_s, "facts": facts,
                        "drift": [asdict(d) for d in drift]})  # fmt: skip
        if not json_out:
            out.print(f"[bold]{mode}[/]: SSH after {boot_s} s ({vm.accel})")
            _render_status(host, facts, drift)
    ok = all(not r["drift"] for r in results)
    if json_out:
        sys.stdout.write(json.dumps({"ok": ok, "artifact": str(artifact), "boots": results}, indent=2) + "\n")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _booted(
    artifact: Path, manifest: Manifest, resolved: Resolved, firmware: str, work: Path, key: str | None, json_out: bool
) -> contextlib.AbstractContextManager[BootedVM]:
    """qemu.boot on the artifact's bootable disk (a GCE tar is unpacked into `work` first)."""
    from devserver.images import qemu
    from devserver.images.artifact import ArtifactError, bootable_disk

    try:
        disk = bootable_disk(artifact, manifest, work)
    except ArtifactError as exc:
        _fail(f"{exc.where}: {exc.message}", exc.fix, EXIT_USAGE, json_out)
    cloud = resolved.spec.cloud
    cpus = getattr(cloud, "cpus", 2)
    memory_mb = 1024 * getattr(cloud, "memory_gb", 4)
    return qemu.boot(
        disk, firmware=firmware, workdir=work, user=resolved.spec.ssh.admin_user, public_key=key, cpus=cpus,
        memory_mb=memory_mb,
    )  # fmt: skip


# `image upload`: its options and logic live with the uploaders (devserver.cli.upload, cloud SDKs imported lazily).
image_app.command("upload")(upload)
