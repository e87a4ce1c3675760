"""The image artifact: a folder holding the disk in its target's format(s) and ``manifest.json``.

This is the contract between the image builders (which write artifacts) and the uploaders (which read them):

* ``<artifact>/manifest.json`` — a :class:`Manifest`;
* the disk files it lists, by path relative to the folder. ``disks[0]`` is the one the target's upload uses; the
  others are alternatives (AWS: a streamOptimized VMDK beside the raw disk).

Which files each target gets is its cloud registry entry's ``image_formats`` (:data:`TARGET_FORMATS` reads them).
:func:`load_manifest` is the one reader: it turns a missing, unreadable or corrupt manifest, or one whose files are
missing, into an :class:`ArtifactError` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from devserver import registry
from devserver.errors import DevserverError
from devserver.registry import DiskFormat as DiskFormat


def _known_target(name: str) -> str:
    if name not in registry.names():
        raise ValueError(f"is not an image target; use one of {', '.join(registry.names())}")
    return name


#: The cloud (or local qemu) an image is for: a name in the cloud registry.
Target = Annotated[str, AfterValidator(_known_target)]
Firmware = Literal["bios", "uefi"]
Builder = Literal["chroot", "qemu", "cloud"]

MANIFEST = "manifest.json"
SCHEMA_VERSION: Literal[1] = 1

#: target -> (format, file name) in upload order: the first is what `devserver image upload` sends.
TARGET_FORMATS: Mapping[str, tuple[tuple[DiskFormat, str], ...]] = registry.View(lambda cloud: cloud.image_formats)


class ArtifactError(DevserverError):
    """An artifact that cannot be used, with what is wrong and the fix (rendered as one error line, exit 2)."""

    bad_input = True


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiskFile(_Model):
    """One disk file of an artifact."""

    path: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="File name inside the artifact folder.")
    format: DiskFormat
    virtual_size: int = Field(gt=0, description="Bytes of the disk as a machine sees it.")
    allocated: int = Field(ge=0, description="Bytes of the raw disk that hold data (not holes or zero blocks).")
    file_size: int = Field(gt=0, description="Bytes of this file (its apparent size).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of this file's bytes.")


class Manifest(_Model):
    """What an artifact is, how it was made, and from which inputs."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", description="Image name: <spec name>-<hash12>.")
    family: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", description="Image family: the spec's name.")
    target: Target
    distro: str
    builder: Builder
    inputs_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 over base, roles, vars and versions.")
    firmware: tuple[Firmware, ...] = Field(min_length=1, description="Boot modes the disk supports.")
    hyperv_generation: Literal["V1", "V2"] | None = Field(default=None, description="Azure only.")
    disks: tuple[DiskFile, ...] = Field(min_length=1)
    components: dict[str, str] = Field(default_factory=dict, description="Versions read from the image.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per build phase.")
    created: str = Field(description="UTC time of the build, ISO 8601.")
    spec_file: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]+$", description="The spec the image was built from, in the folder."
    )

    @property
    def primary(self) -> DiskFile:
        """The disk file the target's upload sends."""
        return self.disks[0]

    def disk(self, fmt: DiskFormat) -> DiskFile | None:
        return next((d for d in self.disks if d.format == fmt), None)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write `manifest` into `folder` atomically (a reader never sees half a manifest)."""
    path = folder / MANIFEST
    partial = path.with_suffix(".json.partial")
    partial.write_text(manifest.model_dump_json(indent=2) + "\n")
    partial.replace(path)
    return path


def load_manifest(folder: Path) -> Manifest:
    """Read and check ``folder/manifest.json``, and that every disk it lists is there at its recorded size.

    Raises :class:`ArtifactError` for anything wrong; never another exception for any file content.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ArtifactError(str(folder), what, "give the artifact folder that `devserver image build` printed")
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            str(folder), "has no manifest.json: not an image artifact", "build one with `devserver image build`"
        ) from None
    except OSError as exc:
        raise ArtifactError(str(path), f"cannot be read ({exc.strerror})", "check its permissions") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(str(path), f"is not valid JSON ({exc})", "rebuild the artifact (--force)") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArtifactError(
            str(path), f"field {field}: {first['msg']} ({exc.error_count()} problem(s))", "rebuild the artifact"
        ) from None
    for disk in manifest.disks:
        file = folder / disk.path
        if not file.is_file():
            raise ArtifactError(str(file), "is listed in the manifest but missing", "rebuild the artifact (--force)")
        size = file.stat().st_size
        if size != disk.file_size:
            raise ArtifactError(
                str(file),
                f"is {size} bytes, the manifest says {disk.file_size} (truncated or replaced?)",
                "rebuild the artifact (--force)",
            )
    return manifest


def bootable_disk(folder: Path, manifest: Manifest, work: Path) -> Path:
    """A disk file of the artifact that qemu can boot: qcow2, raw or VHD as they are; the GCE tar's disk.raw
    unpacked (sparse) into `work`. Raises :class:`ArtifactError` when the artifact has none."""
    for fmt in ("qcow2", "raw", "vhd-fixed"):
        disk = manifest.disk(fmt)
        if disk is not None:
            return folder / disk.path
    tar = manifest.disk("gce-tar")
    if tar is None:
        raise ArtifactError(str(folder), "has no disk qemu can boot", "rebuild it (--force)")
    proc = subprocess.run(
        ["tar", "--extract", "--sparse", "-f", str(folder / tar.path), "-C", str(work), "disk.raw"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ArtifactError(str(folder / tar.path), f"cannot be unpacked: {proc.stderr.strip()}", "rebuild it")
    return work / "disk.raw"
