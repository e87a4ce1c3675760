"""Packer builders: the qemu builder (runs here, with Debian's packer 1.6.6) and the cloud builders (each cloud's
registry entry names its Packer source), all from the templates in ``images/packer/``, all running the same playbooks
as the chroot builder.

Contracts:

* :func:`render_vars` is the one place where spec values become Packer variables (``images/packer/variables.pkr.hcl``
  declares each with its type and validation); the cloud-specific ones come from the cloud's registry entry
  (:attr:`devserver.registry.PackerFacts.variables`). It is pure: it writes nothing.
* :func:`prepare` writes a build's inputs into a work folder: the role variables as JSON (image mode), the build
  playbook (``playbooks/devserver.yml`` then ``playbooks/image.yml``), an SSH key pair for the build user and, for
  qemu, the NoCloud seed that creates that user.
* :func:`build` runs ``packer build`` on one source and returns what its ``manifest`` post-processor recorded (never
  read from Packer's log). Packer's messages stream to ``on_line``. On SIGINT (KeyboardInterrupt) Packer gets the
  signal and cleans up; then anything left in its process group (its qemu) is killed, before the exception goes on
  (:mod:`devserver.images.packer_process`).
* Templates are staged into the work folder; ``plugins/plugins.pkr.hcl`` (``required_plugins``) joins them only for
  Packer >= 1.7, which then runs ``packer init``. Packer 1.6.6 rejects that block, and it needs no plugins.
* Every failure is a :class:`PackerError` that says what went wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import yaml

from devserver import ansible_vars, registry
from devserver.errors import DevserverError
from devserver.images.artifact import Target
from devserver.images.packer_process import complaint, failure_reason, run_streaming
from devserver.plan import Resolved
from devserver.registry import Cloud
from devserver.runner import ansible_root

#: A Packer source of the templates: ``qemu`` (builds here) or a cloud entry's ``packer.source``.
Source = str
QEMU: Source = "qemu"
Accel = Literal["kvm", "tcg"]

# Debian's packer 1.6.6 runs the qemu source; the cloud sources use arguments of the current plugins (boot_mode,
# imds_support, image_guest_os_features), which come with Packer >= 1.7 and `packer init`.
QEMU_MIN_VERSION = (1, 6, 0)
PLUGINS_FROM = (1, 7, 0)

# The qemu build user, made by the NoCloud seed; clouds whose stock images fix no login user (their registry
# entries list none) create whichever user Packer names.
BUILD_USER = "packer"

OnLine = Callable[[str], None]


class PackerError(DevserverError):
    """Packer missing, refusing the templates or failing a build: what went wrong and the fix (one error line)."""

    def __init__(self, where: str, message: str, fix: str, log: Path | None = None) -> None:
        super().__init__(where, message, fix, log=log)


@dataclass(frozen=True)
class PackerBuild:
    """A build's inputs, written by :func:`prepare` into `workdir` (all paths inside it)."""

    source: Source
    workdir: Path
    extravars_file: Path
    playbook_file: Path
    private_key: Path
    public_key: str
    seed_files: tuple[Path, ...]


@dataclass(frozen=True)
class PackerResult:
    """What Packer built, as its manifest post-processor recorded it.

    `artifact_id`: the cloud's image ID (GCE image name, ``region:ami-…``, Azure managed image ID, Glance image ID),
    for qemu Packer's own ``VM``. `files`: the disk files (qemu), absolute paths.
    """

    source: Source
    builder_type: str
    artifact_id: str
    files: tuple[Path, ...]
    packer_version: tuple[int, int, int]
    seconds: float


def templates_root() -> Path:
    """Folder holding the ``*.pkr.hcl`` templates: inside the installed package, or the source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "packer"
    if (packaged / "build.pkr.hcl").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "images" / "packer"
    if (checkout / "build.pkr.hcl").is_file():
        return checkout
    raise PackerError("images/packer", "the Packer templates are missing from this installation", "reinstall devserver")


def packer_version(packer: str = "packer") -> tuple[int, int, int]:
    """The version of the `packer` executable (a name on PATH or a path)."""
    found = shutil.which(packer)
    if found is None:
        raise PackerError(
            packer,
            "is not installed",
            "apt-get install packer (Debian's 1.6.6 runs the qemu builder), "
            "or HashiCorp's current Packer (https://developer.hashicorp.com/packer/install)",
        )
    try:
        proc = subprocess.run([found, "version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackerError(found, f"could not be run ({exc})", "check the packer installation") from None
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise PackerError(found, f"`packer version` gave {proc.stdout.strip()!r}", "check the packer installation")
    return int(match[1]), int(match[2]), int(match[3])


def sources() -> tuple[Source, ...]:
    """Every source the templates define: qemu, then each cloud's."""
    return (QEMU, *registry.packer_sources())


def source_for(target: str, builder: str) -> Source:
    """The Packer source that builds `target` with `builder` ('qemu' or 'cloud')."""
    if builder == "qemu":
        return QEMU
    facts = registry.get(target).packer if target in registry.names() else None
    if builder == "cloud" and facts is not None:
        return facts.source
    in_cloud = tuple(cloud.name for cloud in registry.CLOUDS if cloud.packer is not None)
    qemu_only = tuple(cloud.name for cloud in registry.CLOUDS if cloud.packer is None)
    raise PackerError(
        f"--builder {builder}",
        f"cannot build the {target} target",
        f"use --builder qemu for {registry.spoken(qemu_only)} images, "
        f"--builder cloud for {registry.spoken(in_cloud, 'or')}",
    )


def _cloud_of(source: Source) -> Cloud | None:
    """The cloud whose Packer source `source` is (None for qemu)."""
    return next((c for c in registry.CLOUDS if c.packer is not None and c.packer.source == source), None)


def render_vars(
    resolved: Resolved,
    source: Source,
    *,
    image_name: str,
    base_disk: Path | None,
    out_dir: Path,
    build: PackerBuild,
    accel: Accel = "tcg",
    ansible_args: Sequence[str] = (),
) -> dict[str, object]:
    """The Packer variables for building `resolved` with `source`: every spec-derived value, in one place.

    `image_name`: the artifact's name (spec name + inputs hash). `base_disk`: the qcow2 the qemu build boots (qemu
    only, required there). `out_dir`: where the qemu builder writes its disk (must not exist yet). `build`: the
    inputs :func:`prepare` wrote. `accel`: qemu's accelerator (kvm only where it really works).
    `ansible_args`: more ansible-playbook arguments (a reduced run: ``["--tags", "devserver_base"]``).
    """
    spec = resolved.spec
    work = build.workdir
    user = _build_user(resolved, source)
    if user == spec.ssh.admin_user:
        raise PackerError(
            "ssh.admin_user",
            f"{user!r} is the user Packer logs in as while building, and it is removed from the image",
            "choose another admin user",
        )
    ansible_bin = Path(sys.executable).with_name("ansible-playbook")
    common: dict[str, object] = {
        "image_name": image_name,
        "image_family": spec.name,
        "disk_size_gb": spec.disks.boot_gb,
        "labels": {**spec.labels, "devserver": spec.name},
        "build_user": user,
        "ssh_private_key_file": str(build.private_key),
        "ansible_playbook": str(ansible_bin) if ansible_bin.exists() else "ansible-playbook",
        "ansible_config": str(ansible_root() / "ansible.cfg"),
        "playbook_file": str(build.playbook_file),
        "extravars_file": str(build.extravars_file),
        "ansible_extra_arguments": list(ansible_args),
        "known_hosts_file": str(work / "known_hosts"),
        "manifest_file": str(work / "packer-manifest.json"),
    }
    return {**common, **_source_vars(resolved, source, base_disk=base_disk, out_dir=out_dir, build=build, accel=accel)}


def _build_user(resolved: Resolved, source: Source) -> str:
    """The user Packer logs in as: the one the source's stock image fixes, else its own build user."""
    cloud = _cloud_of(source)
    if cloud is None or cloud.packer is None:
        return BUILD_USER
    return cloud.packer.login_users.get(resolved.spec.os, BUILD_USER)


def _source_vars(
    resolved: Resolved, source: Source, *, base_disk: Path | None, out_dir: Path, build: PackerBuild, accel: Accel
) -> dict[str, object]:
    cloud = resolved.spec.cloud
    machine = resolved.machine
    if source == QEMU:
        if base_disk is None:
            raise PackerError("base_disk", "the qemu builder boots a base disk, and none was given", "build a base")
        # A local spec sizes its VM; a cloud spec built under qemu gets a small one.
        cpus, memory_gb = getattr(cloud, "cpus", 2), getattr(cloud, "memory_gb", 4)
        return {
            "qemu_base_disk": str(base_disk),
            "qemu_accel": accel,
            "qemu_cpus": cpus,
            "qemu_memory_mb": memory_gb * 1024,
            "qemu_seed_files": [str(p) for p in build.seed_files],
            "qemu_output_dir": str(out_dir),
        }
    if machine is None:
        raise PackerError("machine", f"the {source} builder needs a machine type", "add machine.gpu or machine.type")
    facts = registry.get(cloud.provider).packer
    if facts is None or facts.source != source:
        raise PackerError(
            "cloud.provider",
            f"a {cloud.provider} spec cannot be built with the {source} builder",
            f"use the {facts.source if facts else QEMU} builder for it",
        )
    return facts.variables(resolved)


def prepare(resolved: Resolved, source: Source, workdir: Path, *, target: Target | None = None) -> PackerBuild:
    """Write the build's inputs into `workdir` (created; must be private to this build).

    The variables are the provisioning playbook's in image mode (services not started, no reboot, no data volume)
    and image.yml's for `target` (default: the spec's cloud). The build user is not handed to image_generalize:
    Ansible is logged in as that user and becomes root through its sudo, which stops working the moment the account
    is deleted ("you do not exist in the passwd database"), so every later task would fail. The templates remove it
    instead, in the last root shell of the build (the qemu shutdown_command, the cloud sources' last provisioner).
    The build playbook imports ``playbooks/devserver.yml``, then ``playbooks/image.yml``. The key pair is new for
    every build and lives only in `workdir`.
    """
    target = target or resolved.spec.cloud.provider
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    user = _build_user(resolved, source)
    extravars = workdir / "extravars.json"
    variables = {
        **ansible_vars.role_vars(resolved, image_mode=True),
        **ansible_vars.image_role_vars(resolved, target),
    }
    extravars.write_text(json.dumps(variables, indent=2, sort_keys=True))
    playbooks = ansible_root() / "playbooks"
    imports = [{"import_playbook": str(playbooks / name)} for name in ("devserver.yml", "image.yml")]
    playbook = workdir / "build.yml"
    playbook.write_text("---\n" + yaml.safe_dump(imports, sort_keys=False))
    key = workdir / "build_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "devserver-packer-build", "-f", str(key)], "ssh-keygen")
    public = key.with_suffix(".pub").read_text().strip()
    seeds: tuple[Path, ...] = ()
    if source == QEMU:
        seeds = _write_seed(workdir / "seed", user, public)
    return PackerBuild(source, workdir, extravars, playbook, key, public, seeds)


# The build user's sudo rule. Not cloud-init's own 90-cloud-init-users: image_generalize deletes that file
# mid-play, and Ansible, logged in as the build user, would lose sudo with it. The templates remove this file.
BUILD_SUDOERS = "/etc/sudoers.d/devserver-build"


def _write_seed(folder: Path, user: str, public_key: str) -> tuple[Path, Path]:
    """NoCloud user-data and meta-data: the build user with passwordless sudo and the build key, nothing else."""
    folder.mkdir()
    user_data = folder / "user-data"
    config = {
        "users": [{"name": user, "shell": "/bin/bash", "lock_passwd": True, "ssh_authorized_keys": [public_key]}],
        "write_files": [{"path": BUILD_SUDOERS, "permissions": "0440", "content": f"{user} ALL=(ALL) NOPASSWD:ALL\n"}],
        "ssh_pwauth": False,
    }
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(config, sort_keys=False))
    meta_data = folder / "meta-data"
    meta_data.write_text(yaml.safe_dump({"instance-id": f"packer-{os.getpid()}-{time.time_ns()}"}))
    return user_data, meta_data


@contextlib.contextmanager
def staged_templates(workdir: Path, version: tuple[int, int, int]) -> Iterator[Path]:
    """The templates copied into ``workdir/template`` — with the plugin pins for Packer >= 1.7 — removed after."""
    folder = workdir / "template"
    folder.mkdir()
    root = templates_root()
    try:
        for path in sorted(root.glob("*.pkr.hcl")):
            shutil.copy2(path, folder / path.name)
        if version >= PLUGINS_FROM:
            shutil.copy2(root / "plugins" / "plugins.pkr.hcl", folder / "plugins.pkr.hcl")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def declared_variables(folder: Path | None = None) -> frozenset[str]:
    """The variable names the templates in `folder` (default: :func:`templates_root`) declare."""
    text = "".join(p.read_text() for p in sorted((folder or templates_root()).glob("*.pkr.hcl")))
    return frozenset(re.findall(r'^variable\s+"([A-Za-z0-9_-]+)"', text, flags=re.MULTILINE))


def _var_file(workdir: Path, variables: Mapping[str, object]) -> Path:
    """Write `variables` as a var file. Packer only warns about a variable it does not declare: refuse it here."""
    unknown = sorted(set(variables) - declared_variables())
    if unknown:
        raise PackerError(
            "Packer variables",
            f"{', '.join(unknown)} not declared in images/packer/variables.pkr.hcl",
            "declare them there or stop passing them",
        )
    path = workdir / "devserver.pkrvars.json"
    path.write_text(json.dumps(dict(variables), indent=2, sort_keys=True))
    return path


def _check_version(source: Source, version: tuple[int, int, int], packer: str) -> None:
    if source not in sources():
        raise PackerError(
            f"source {source!r}", "is not a devserver Packer source", f"use one of {', '.join(sources())}"
        )
    need = QEMU_MIN_VERSION if source == QEMU else PLUGINS_FROM
    if version < need:
        raise PackerError(
            packer,
            f"is {'.'.join(map(str, version))}; the {source} builder needs Packer >= {'.'.join(map(str, need))}",
            "install HashiCorp's current Packer (https://developer.hashicorp.com/packer/install)",
        )


def validate(source: Source, variables: Mapping[str, object], *, syntax_only: bool, packer: str = "packer") -> None:
    """``packer validate`` of the templates for `source` with `variables`.

    `syntax_only`: HCL syntax and references only (what this machine can check for the cloud sources, whose
    plugins and credentials it lacks). Otherwise the full check: variable validation blocks, the builder's own
    configuration, files that must exist. Raises :class:`PackerError` carrying Packer's first complaint.
    """
    version = packer_version(packer)
    if not syntax_only:
        _check_version(source, version, packer)
    with tempfile.TemporaryDirectory(prefix="devserver-packer-validate-") as tmp:
        work = Path(tmp)
        var_file = _var_file(work, variables)
        with staged_templates(work, version) as folder:
            if version >= PLUGINS_FROM and not syntax_only:
                _init(packer, folder, work / "init.log")
            argv = [packer, "validate", *(["-syntax-only"] if syntax_only else [])]
            argv += [f"-only={source}.devserver", f"-var-file={var_file}", str(folder)]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=work)
    if proc.returncode != 0:
        raise PackerError(
            f"packer validate ({source})",
            complaint(proc.stdout + proc.stderr),
            "correct the value named above (devserver.images.packer.render_vars maps it from the spec)",
        )


def _init(packer: str, folder: Path, log: Path) -> None:
    with log.open("w") as out:
        proc = subprocess.run([packer, "init", str(folder)], stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise PackerError("packer init", "could not install the pinned plugins", "check network access", log)


def build(
    source: Source,
    variables: Mapping[str, object],
    *,
    workdir: Path,
    on_line: OnLine | None = None,
    packer: str = "packer",
    log: Path | None = None,
) -> PackerResult:
    """Run ``packer build`` for `source` with `variables` (from :func:`render_vars`) and return its result.

    Packer runs in its own process group with `workdir` as its folder; its messages go to `on_line` as they come
    and, with everything else it prints, to `log` (default ``workdir/packer.log``). A failed build raises
    :class:`PackerError` naming the log. On KeyboardInterrupt, Packer gets SIGINT and up to two minutes to stop
    its VM and remove its output; whatever is still running in its group after that is killed.
    """
    version = packer_version(packer)
    _check_version(source, version, packer)
    log = log or workdir / "packer.log"
    manifest = Path(str(variables.get("manifest_file", workdir / "packer-manifest.json")))
    manifest.unlink(missing_ok=True)
    started = time.monotonic()
    var_file = _var_file(workdir, variables)
    with staged_templates(workdir, version) as folder:
        if version >= PLUGINS_FROM:
            _init(packer, folder, workdir / "init.log")
        argv = [packer, "build", "-machine-readable", "-color=false", f"-only={source}.devserver"]
        argv += [f"-var-file={var_file}", str(folder)]
        # TMPDIR: Packer's own temporary files (the seed ISO, its plugins' sockets) in a folder of this build that
        # leaves with it; short, under the system's temp folder, as a Unix socket path has at most 107 bytes.
        packer_tmp = tempfile.mkdtemp(prefix="devserver-packer-")
        env = {**os.environ, "PACKER_NO_COLOR": "1", "CHECKPOINT_DISABLE": "1", "TMPDIR": packer_tmp}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        try:
            rc = run_streaming(argv, workdir, env, log, on_line)
        finally:
            shutil.rmtree(packer_tmp, ignore_errors=True)
    if rc != 0:
        raise PackerError(f"packer build ({source})", f"failed (exit {rc}){failure_reason(log)}", "see the log", log)
    return _read_manifest(manifest, source, version, time.monotonic() - started, log)


def build_image(
    resolved: Resolved,
    source: Source,
    *,
    image_name: str,
    out_dir: Path,
    base_disk: Path | None = None,
    accel: str = "tcg",
    ansible_args: Sequence[str] = (),
    on_line: OnLine | None = None,
    packer: str = "packer",
) -> PackerResult:
    """Prepare, render and build in one go, in a private work folder beside `out_dir` that is removed afterwards
    whatever happens (failure, KeyboardInterrupt). Packer's log is kept as ``<out_dir>.packer.log``.

    qemu: the disk is ``<out_dir>/disk.qcow2`` (`out_dir` must not exist yet). `accel` is
    :func:`devserver.images.qemu.detect_accel`'s answer.
    """
    if accel not in get_args(Accel):
        raise PackerError(f"accel {accel!r}", "is not a qemu accelerator", "use kvm or tcg")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        raise PackerError(str(out_dir), "exists already", "remove it, or give a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.packer-", dir=out_dir.parent))
    try:
        prepared = prepare(resolved, source, workdir / "inputs")
        variables = render_vars(
            resolved,
            source,
            image_name=image_name,
            base_disk=base_disk,
            out_dir=out_dir,
            build=prepared,
            accel=cast(Accel, accel),
            ansible_args=ansible_args,
        )
        log = out_dir.with_name(out_dir.name + ".packer.log")
        return build(source, variables, workdir=workdir, on_line=on_line, packer=packer, log=log)
    except BaseException:
        # out_dir did not exist before this build: whatever Packer left there (a killed Packer leaves its output)
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_manifest(
    path: Path, source: Source, version: tuple[int, int, int], seconds: float, log: Path
) -> PackerResult:
    """The last run's build of `source` from the manifest post-processor's JSON."""
    try:
        data = json.loads(path.read_text())
        run = data["last_run_uuid"]
        entry = next(b for b in data["builds"] if b["packer_run_uuid"] == run)
        files = tuple(Path(f["name"]).resolve() for f in entry.get("files") or ())
        return PackerResult(source, str(entry["builder_type"]), str(entry["artifact_id"]), files, version, seconds)
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as exc:
        raise PackerError(
            str(path), f"Packer's manifest is missing or unreadable ({exc!r})", "see the end of the log", log
        ) from None


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise PackerError(what, "is not installed", "apt-get install openssh-client") from None
    if proc.returncode != 0:
        raise PackerError(what, f"failed: {proc.stderr.strip()}", "check the tool's installation")
