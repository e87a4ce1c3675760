"""`devserver image …`: build, boot, test (and upload) disk images. Parsing and rendering only; the work is in
devserver.images.*, imported inside each command so that `devserver --help` stays cheap."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from devserver import registry
from devserver.cli.upload import upload

if TYPE_CHECKING:
    from devserver.images.build import BuildResult
    from devserver.plan import Resolved
    from devserver.runner import TaskEvent

image_app = typer.Typer(
    help="Build, boot, test and upload devserver disk images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# The image targets: every cloud in the registry, as the Literal typer turns into the option's choices (built when
# imported; type checkers see the str it is).
if TYPE_CHECKING:
    TargetName = str
else:
    TargetName = Literal[registry.names()]
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
    from devserver.cli.output import fail, out, write_json
    from devserver.cli.render import resolve_or_exit
    from devserver.errors import DevserverError
    from devserver.images import api

    resolved = resolve_or_exit(default_spec(spec), json_out)
    try:
        result = api.build_base(resolved, distro, cache_dir)
    except DevserverError as exc:
        fail(exc, json_out)
    if json_out:
        write_json({"ok": True, "distro": result.distro, "tarball": str(result.tarball), "seconds": result.seconds})
    else:
        out().print(f"[green]✓[/] base {result.distro}: {result.tarball} ({result.seconds} s)")


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
    from rich.markup import escape

    from devserver.cli.hosts import default_spec
    from devserver.cli.output import Steps, fail, interrupted, out
    from devserver.cli.render import resolve_or_exit
    from devserver.errors import DevserverError
    from devserver.images import api
    from devserver.images.build import BuildOptions

    resolved = resolve_or_exit(default_spec(spec), json_out)
    chosen = api.choose_builder(builder)
    if chosen == "cloud":
        _build_in_cloud(resolved, target, json_out)
        return
    options = BuildOptions(
        target=target, out_dir=out_dir, cache_dir=api.cache_dir(cache_dir), builder=chosen, force=force
    )
    try:
        planned = api.plan_build(resolved, options)
    except DevserverError as exc:
        fail(exc, json_out)
    if not json_out:
        out().print(
            f"[bold]devserver image build[/] {resolved.spec.name} → {target} ({chosen} builder, "
            f"inputs {planned.inputs_hash[:12]})"
        )
    steps = None if json_out else Steps("starting")
    started = {"phase": ""}

    def progress(phase: str, what: str | TaskEvent) -> None:
        if steps is None:
            return
        if phase != started["phase"]:
            started["phase"] = phase
            out().print(f"  [cyan]{phase}[/]: {escape(str(what))}")
        if isinstance(what, str):
            steps.step(f"[cyan]{phase}[/] {escape(what)}")
        elif what.status == "failed":
            out().print(f"  [red]failed[/] {escape(what.task)}: {escape(what.message[:400])}")

    # SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C: the chroot's mounts and the work folder go.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with steps if steps is not None else contextlib.nullcontext():
            result = planned.run(progress)
    except DevserverError as exc:
        fail(exc, json_out, context="image build failed")
    except KeyboardInterrupt:
        interrupted("image build interrupted; mounts and work folder removed", "run the same command again", json_out)
    _render_result(result, json_out)


def _build_in_cloud(resolved: Resolved, target: TargetName, json_out: bool) -> None:
    from devserver.cli.output import fail, out, write_json
    from devserver.errors import DevserverError
    from devserver.images import api

    try:
        image_id = api.build_in_cloud(resolved, target)
    except DevserverError as exc:
        fail(exc, json_out, context="" if exc.bad_input else "image build failed")
    if json_out:
        write_json({"ok": True, "target": target, "image": image_id})
    else:
        out().print(f"[green]✓[/] built in {target}: {image_id}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _render_result(result: BuildResult, json_out: bool) -> None:
    from devserver.cli.output import out, write_json

    manifest = result.manifest
    if json_out:
        payload = {"ok": True, "skipped": result.skipped, "folder": str(result.folder)}
        write_json(payload | {"manifest": manifest.model_dump(mode="json")})
        return
    console = out()
    verb = "up to date (same inputs), reused" if result.skipped else "built"
    console.print(f"[green]✓[/] {manifest.name} {verb}: {result.folder}")
    for disk in manifest.disks:
        gib = disk.virtual_size / 1024**3
        console.print(
            f"    {disk.path}: {disk.format}, {gib:.1f} GiB virtual, {disk.allocated / 1024**2:.0f} MiB allocated, "
            f"{disk.file_size / 1024**2:.0f} MiB file"
        )
    if manifest.components:
        console.print("    " + ", ".join(f"{k} {v}" for k, v in sorted(manifest.components.items())))
    if not result.skipped:
        console.print("    " + ", ".join(f"{k} {v:.0f} s" for k, v in manifest.timings.items()))
    console.print(f"    next: devserver image test {result.folder}")


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
    from devserver.cli.output import fail, out
    from devserver.errors import DevserverError
    from devserver.images import api

    console = out()
    try:
        manifest, resolved = api.load_artifact(artifact)
        key_text = api.read_public_key(public_key)
        with (
            tempfile.TemporaryDirectory(prefix="devserver-boot-") as work,
            api.boot(artifact, manifest, resolved, firmware, Path(work), key_text) as vm,
        ):
            console.print(f"[green]✓[/] {manifest.name} is up ({vm.accel}, {firmware}); connect with:")
            console.out("    " + " ".join(vm.ssh_argv()), highlight=False)
            console.print("  Ctrl-C stops the VM (the disk is left unchanged).")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopping")
    except DevserverError as exc:
        fail(exc)


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

    from devserver.cli.hosts import _render_status
    from devserver.cli.output import ExitCode, fail, out, write_json
    from devserver.errors import DevserverError
    from devserver.images import api

    results = []
    try:
        for check in api.check_boots(artifact, firmware):
            results.append({"firmware": check.firmware, "accel": check.accel, "boot_to_ssh_s": check.boot_to_ssh_s,
                            "facts": check.facts, "drift": [asdict(d) for d in check.drift]})  # fmt: skip
            if not json_out:
                out().print(f"[bold]{check.firmware}[/]: SSH after {check.boot_to_ssh_s} s ({check.accel})")
                _render_status(check.host, check.facts, check.drift)
    except DevserverError as exc:
        fail(exc, json_out)
    ok = all(not r["drift"] for r in results)
    if json_out:
        write_json({"ok": ok, "artifact": str(artifact), "boots": results})
    if not ok:
        raise typer.Exit(ExitCode.FAILED)


# `image upload`: its options and logic live with the uploaders (devserver.cli.upload, cloud SDKs imported lazily).
image_app.command("upload")(upload)
