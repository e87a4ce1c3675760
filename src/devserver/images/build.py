"""Build an image artifact from a spec: base rootfs → the playbooks → disk → the target's formats → manifest.

The chroot builder runs in two stages so that one spec serves every target cheaply:

1. **provision** — the base rootfs with ``playbooks/devserver.yml`` applied in image mode (driver + DKMS, CUDA,
   container runtimes). It depends on the base, the roles and the spec's role variables, not on the target, and is
   cached as a tarball keyed by :func:`provision_key`.
2. **finish** — ``playbooks/image.yml`` for the target (cloud_guest → image_generalize → image_validate) on a copy of
   the provisioned tree, then the disk and its formats.

The qemu builder has Packer run both playbooks on a booted base disk instead. From a finished raw disk on, both local
builders share one step, :func:`_finish_artifact`: the components image_validate left in the image (read from the
disk), the target's formats, ``spec.yaml`` and ``manifest.json``, the artifact folder.

Contracts:

* :func:`inputs_hash` is a sha256 over everything that decides the artifact's bytes: the base recipe and mirrors,
  the playbooks and roles (file contents), the role variables, the target, the builder, and the image code itself.
  :func:`build` returns at once (``skipped=True``) when the artifact folder for that hash holds a valid manifest,
  unless ``force``.
* An artifact folder appears complete or not at all (built in a staging folder, then renamed). Whatever happens —
  a failed task, SIGINT — the work folder is removed and the chroot's mounts are undone (by
  :func:`devserver.images.chroot.prepared`) before :func:`build` returns or raises.
* Failures raise :class:`BuildError` naming the phase, what failed and where its log is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devserver import ansible_vars, registry
from devserver.errors import DevserverError
from devserver.images import artifact
from devserver.images.artifact import Builder, DiskFile, Manifest, Target
from devserver.plan import Resolved
from devserver.runner import RunSummary, TaskEvent, ansible_root
from devserver.sysutil import digest, tree_hash

# Bump when the build recipe changes in a way the hashed inputs below do not capture.
RECIPE_VERSION = "1"
# Where image_validate leaves the versions it read from the image (copied into manifest.components).
COMPONENTS_FILE = "var/lib/devserver/image-components.json"
# Provisioned trees kept in the cache (most recently used first); each is a few GiB.
KEEP_PROVISIONED = 3

ProgressFn = Callable[[str, "str | TaskEvent"], None]
"""Called with (phase, what): a phase's start (what = a description), a task start (its name) or outcome."""


@dataclass(frozen=True)
class BuildOptions:
    target: Target
    out_dir: Path
    cache_dir: Path
    builder: Builder = "chroot"
    force: bool = False


@dataclass(frozen=True)
class BuildResult:
    folder: Path
    manifest: Manifest
    skipped: bool
    timings: dict[str, float] = field(default_factory=dict)


class BuildError(DevserverError):
    """A build that failed: the phase (its `where`), what went wrong, and where to look."""

    def __init__(self, phase: str, message: str, log: Path | None = None) -> None:
        fix = "see the log" if log else "fix the cause above and run the same command again"
        super().__init__(phase, message, fix, log=log)
        self.phase = phase


def provision_vars(resolved: Resolved) -> dict[str, object]:
    """The variables of the provision stage: the spec's role variables in image mode."""
    return ansible_vars.role_vars(resolved, image_mode=True)


def finish_vars(resolved: Resolved, target: Target) -> dict[str, object]:
    """The variables of the finish stage (image.yml): the provision variables plus the image roles' own."""
    return provision_vars(resolved) | ansible_vars.image_role_vars(resolved, target)


def provision_key(resolved: Resolved) -> str:
    """Cache key of the provisioned tree: base inputs, playbooks and roles, role variables."""
    from devserver.images import base
    from devserver.update import roles

    root = ansible_root()
    # Only what devserver.yml runs: the image roles (image.yml) belong to the finish stage's hash.
    parts = ("ansible.cfg", "plugins", "playbooks/devserver.yml", *(f"roles/{name}" for name in roles()))
    return digest(
        {
            "recipe": RECIPE_VERSION,
            "base": base.base_key(base.BaseSpec.from_spec(resolved.spec)),
            "ansible": tree_hash(root, parts),
            "vars": provision_vars(resolved),
        }
    )


def inputs_hash(resolved: Resolved, target: Target, builder: Builder) -> str:
    """The artifact's identity: same hash, same image (see the module docstring)."""
    images_code = Path(__file__).parent
    return digest(
        {
            "provision": provision_key(resolved),
            "target": target,
            "builder": builder,
            "vars": finish_vars(resolved, target),
            "image_playbook": tree_hash(ansible_root(), ("playbooks", "roles")),
            "formats": artifact.TARGET_FORMATS[target],
            "code": tree_hash(images_code, tuple(sorted(p.name for p in images_code.glob("*.py")))),
        }
    )


def artifact_folder(resolved: Resolved, options: BuildOptions, key: str) -> Path:
    return options.out_dir / f"{resolved.spec.name}-{options.target}-{key[:12]}"


def existing(folder: Path, key: str) -> Manifest | None:
    """The manifest of a complete artifact for `key` in `folder`, or None (absent, corrupt or other inputs)."""
    try:
        manifest = artifact.load_manifest(folder)
    except artifact.ArtifactError:
        return None
    return manifest if manifest.inputs_hash == key else None


def build(resolved: Resolved, options: BuildOptions, progress: ProgressFn | None = None) -> BuildResult:
    """Build (or find) the artifact of `resolved` for `options.target`. See the module docstring."""
    report: ProgressFn = progress or (lambda _phase, _what: None)
    key = inputs_hash(resolved, options.target, options.builder)
    folder = artifact_folder(resolved, options, key)
    if not options.force and (found := existing(folder, key)) is not None:
        return BuildResult(folder, found, skipped=True)
    if options.builder == "qemu":
        return _build_with_packer(resolved, options, key, folder, report)
    if options.builder != "chroot":
        raise BuildError("build", f"the {options.builder} builder makes its image in the cloud: use build_in_cloud()")

    options.out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _workspace(options.out_dir, key) as work:
        rootfs = work / "rootfs"
        with _phase(timings, "provision", report, "base rootfs and playbooks/devserver.yml (image mode)"):
            _provisioned_tree(resolved, options.cache_dir, rootfs, work, report, timings)
        with _phase(timings, "finish", report, f"playbooks/image.yml for {options.target}"):
            _run(rootfs, "image.yml", finish_vars(resolved, options.target), "finish", report, work)
        from devserver.images import disk

        with _phase(timings, "disk", report, "GPT disk, BIOS + UEFI boot, ext4 root"):
            raw = work / "disk.raw"
            layout = disk.assemble(rootfs, raw)
            shutil.rmtree(rootfs)  # the disk holds it now; frees the space before the formats are written
        return _finish_artifact(resolved, options, key, folder, work, raw, layout.firmware, "finish", timings, report)


def build_in_cloud(resolved: Resolved, target: Target, on_line: Callable[[str], None] | None = None) -> str:
    """Build the image inside the cloud with the Packer source of `target`'s registry entry, running the same
    playbooks; returns the cloud's image ID. Needs Packer >= 1.7 and credentials."""
    from devserver.images import packer

    source = packer.source_for(target, "cloud")
    name = f"{resolved.spec.name}-{inputs_hash(resolved, target, 'cloud')[:12]}"
    with _scratch() as work:
        result = packer.build_image(resolved, source, image_name=name, out_dir=work / "out", on_line=on_line)
    return result.artifact_id


def _build_with_packer(
    resolved: Resolved, options: BuildOptions, key: str, folder: Path, report: ProgressFn
) -> BuildResult:
    """The qemu builder: Packer boots the base disk (KVM where it works) and runs the playbooks over SSH."""
    from devserver.images import base, disk, packer, qemu

    options.out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _workspace(options.out_dir, key) as work:
        with _phase(timings, "base", report, "base rootfs as a bootable disk for Packer"):
            tarball = base.build_base(base.BaseSpec.from_spec(resolved.spec), options.cache_dir, log=work / "base.log")
            base.extract(tarball, work / "rootfs")
            disk.assemble(work / "rootfs", work / "base.raw")
            shutil.rmtree(work / "rootfs")
            _qemu_img("convert", "-O", "qcow2", str(work / "base.raw"), str(work / "base.qcow2"))
            (work / "base.raw").unlink()
        accel = qemu.detect_accel()
        with _phase(timings, "packer", report, f"packer qemu build ({accel}): devserver.yml, then image.yml"):
            try:
                result = packer.build_image(
                    resolved, "qemu", image_name=f"{resolved.spec.name}-{key[:12]}", out_dir=work / "packer-out",
                    base_disk=work / "base.qcow2", accel=accel, on_line=lambda line: report("packer", line),
                )  # fmt: skip
            except packer.PackerError as exc:
                raise BuildError("packer", f"{exc.where}: {exc.message} — {exc.fix}", exc.log) from None
        raw = work / "disk.raw"
        _qemu_img("convert", "-O", "raw", str(result.files[0]), str(raw))
        shutil.rmtree(work / "packer-out")
        return _finish_artifact(resolved, options, key, folder, work, raw, ("bios", "uefi"), "packer", timings, report)


def _qemu_img(*args: str) -> None:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError("disk", f"qemu-img {args[0]} failed: {proc.stderr.strip()[-400:]}")


def _components_on_disk(raw: Path, root_offset: int, phase: str) -> dict[str, str]:
    """image_validate's components file, read from the ext4 root inside `raw` with debugfs (no mount, no loop;
    e2fsprogs, which makes the root, ships it). A missing or unreadable file fails `phase`, the one that ran
    image.yml."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat /{COMPONENTS_FILE}", f"{raw}?offset={root_offset}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise BuildError(phase, f"the image holds no readable /{COMPONENTS_FILE}: {proc.stderr.strip()}") from None
    return {str(k): str(v) for k, v in data.items()}


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="devserver-cloud-build-") as work:
        yield Path(work)


def _hyperv_generation(resolved: Resolved, target: Target) -> str | None:
    """The image's Hyper-V generation, for targets whose sizes come in generations (Azure): the machine's (from
    the catalog), gen2 when the spec is for another cloud."""
    if not registry.get(target).offers("hyperv_generations"):
        return None
    machine = resolved.machine if resolved.spec.cloud.provider == target else None
    generation = machine.hyperv_generation if machine is not None and machine.hyperv_generation else 2
    return f"V{generation}"


def _finish_artifact(
    resolved: Resolved,
    options: BuildOptions,
    key: str,
    folder: Path,
    work: Path,
    raw: Path,
    firmware: tuple[str, ...],
    validated_in: str,
    timings: dict[str, float],
    report: ProgressFn,
) -> BuildResult:
    """The end of every local build, whichever builder provisioned and validated the disk: the versions
    image_validate left in the image, read from the finished raw disk `raw`; the target's formats of that disk (the
    "formats" phase); the spec and manifest beside them in a staging folder inside `work`; then that folder renamed
    to `folder`, replacing an older, incomplete or forced-over build of the same inputs.

    `firmware`: the boot modes the disk carries; `validated_in`: the phase that ran image.yml, named by the error
    when the image holds no components file; `timings`: the phases so far, recorded in the manifest with this one.
    """
    from devserver.images import disk, formats

    components = _components_on_disk(raw, disk.ROOT_START, validated_in)
    staging = work / "artifact"
    staging.mkdir()
    with _phase(timings, "formats", report, ", ".join(f for f, _ in artifact.TARGET_FORMATS[options.target])):
        files: list[DiskFile] = formats.write_formats(raw, options.target, staging)
    manifest = _write_artifact(resolved, options, key, staging, files, firmware, components, timings)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return BuildResult(folder, manifest, skipped=False, timings=manifest.timings)


def _write_artifact(
    resolved: Resolved,
    options: BuildOptions,
    key: str,
    staging: Path,
    files: list[DiskFile],
    firmware: tuple[str, ...],
    components: dict[str, str],
    timings: dict[str, float],
) -> Manifest:
    """The spec and manifest.json beside the disk files in `staging`."""
    (staging / "spec.yaml").write_text(yaml.safe_dump(resolved.spec.model_dump(mode="json"), sort_keys=False))
    manifest = Manifest(
        name=f"{resolved.spec.name}-{key[:12]}",
        family=resolved.spec.name,
        target=options.target,
        distro=resolved.spec.os,
        builder=options.builder,
        inputs_hash=key,
        firmware=firmware,
        hyperv_generation=_hyperv_generation(resolved, options.target),
        disks=tuple(files),
        components=components,
        timings={name: round(seconds, 1) for name, seconds in timings.items()},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        spec_file="spec.yaml",
    )
    artifact.write_manifest(staging, manifest)
    return manifest


@contextlib.contextmanager
def _phase(timings: dict[str, float], name: str, report: ProgressFn, what: str) -> Iterator[None]:
    report(name, what)
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - started


@contextlib.contextmanager
def _workspace(out_dir: Path, key: str) -> Iterator[Path]:
    """A work folder beside the artifacts (same filesystem: the final rename is atomic); always removed."""
    work = out_dir / f".work-{key[:12]}-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        # Never recurse into a mount: a bind-mounted /dev or /sys left by a failed unmount would be the host's.
        from devserver.images.chroot import mounted_under

        if mounted := mounted_under(work):
            raise BuildError("cleanup", f"still mounted, work folder {work} kept: {', '.join(mounted)}")
        shutil.rmtree(work, ignore_errors=True)


def _provisioned_tree(
    resolved: Resolved, cache_dir: Path, rootfs: Path, work: Path, report: ProgressFn, timings: dict[str, float]
) -> None:
    """Fill `rootfs` with the provisioned tree: from the cache, or built (base + devserver.yml) and cached."""
    from devserver.images import base

    cached = cache_dir / "provisioned" / f"{provision_key(resolved)[:24]}.tar.zst"
    if cached.is_file():
        report("provision", f"cached provisioned tree {cached.name}")
        base.extract(cached, rootfs)
        os.utime(cached)  # most recently used: kept by the pruning below
        return
    started = time.monotonic()
    tarball = base.build_base(base.BaseSpec.from_spec(resolved.spec), cache_dir, log=work / "base.log")
    timings["base"] = time.monotonic() - started
    base.extract(tarball, rootfs)
    _run(rootfs, "devserver.yml", provision_vars(resolved), "provision", report, work)
    # The downloaded .debs (GiBs with CUDA) are not part of the tree: image_generalize would drop them anyway.
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
    try:
        _tar(rootfs, partial)
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
    for old in sorted(cached.parent.glob("*.tar.zst"), key=lambda p: p.stat().st_mtime, reverse=True)[
        KEEP_PROVISIONED:
    ]:
        old.unlink(missing_ok=True)


def _tar(rootfs: Path, out: Path) -> None:
    argv = ["tar", "--create", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse"]
    argv += ["--use-compress-program=zstd -T0 -3", "-f", str(out), "-C", str(rootfs), "."]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError("provision", f"could not cache the provisioned tree: {proc.stderr.strip()[-500:]}")


def _run(rootfs: Path, playbook: str, extravars: dict[str, object], phase: str, report: ProgressFn, work: Path) -> None:
    from devserver.images import chroot

    def relay(event: TaskEvent | str) -> None:
        report(phase, event)

    summary: RunSummary = chroot.run_playbook(rootfs, playbook, extravars, on_event=relay)
    if not summary.ok:
        log = work.parent / f"{work.name.removeprefix('.work-')}-{phase}-failed.json"
        failures = [{"task": f.task, "message": f.message} for f in summary.failures]
        log.write_text(json.dumps({"playbook": playbook, "failures": failures}, indent=2) + "\n")
        first = summary.failures[0] if summary.failures else None
        detail = f"task '{first.task}' failed: {first.message}" if first else f"ansible status {summary.status}"
        raise BuildError(phase, f"{playbook}: {detail}", log)
