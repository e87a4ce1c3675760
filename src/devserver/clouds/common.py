"""The one interface every cloud's image uploader implements, and the flow that drives it.

:func:`publish` is the whole of ``devserver image upload``: read the artifact, skip when the cloud already holds an
image with the manifest's inputs hash, upload the disk (sparse-aware, resumable, with progress), register it, and on a
failed registration delete what this run created — or say exactly what remains.

Errors: an artifact that cannot be used for the target is an :class:`~devserver.images.artifact.ArtifactError` (a
user mistake, exit 2); an option the target needs but did not get is an :class:`OptionError` (exit 2); anything the
cloud refuses (credentials, permissions, quota, a missing bucket/container/project) is a :class:`CloudError` (exit 1).
Each carries one line with what is wrong and the fix.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from devserver.errors import DevserverError, InputError
from devserver.images.artifact import TARGET_FORMATS, ArtifactError, DiskFile, Manifest, load_manifest

STATE_DIR = ".upload-state"
# The tag/label/property that carries the manifest's inputs hash on every cloud.
HASH_KEY = "devserver-inputs-hash"
# GCE label values are at most 63 characters; the other clouds take the whole hash.
GCE_HASH_CHARS = 63


class CloudError(DevserverError):
    """The cloud refused or failed something: one line with what and the fix (exit 1)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__("", message, fix)


class OptionError(InputError):
    """A command-line option the target needs is missing or malformed (its `where`; exit 2)."""


@dataclass(frozen=True)
class ProgressEvent:
    """How far an upload is: bytes sent by this run, bytes this run has to send, and the rate so far."""

    sent: int
    total: int
    rate: float  # bytes per second since this run started sending


ProgressCallback = Callable[[ProgressEvent], None]


class Meter:
    """Counts the bytes a run sends and reports them to a callback.

    The callback may raise to abort the upload (the CLI's Ctrl-C, the tests' interruption); the uploader leaves
    its resume state in place so the next run continues from there.
    """

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self._callback = callback
        self.sent = 0
        self.total = 0
        self._started = time.monotonic()

    def start(self, total: int) -> None:
        """Set how many bytes this run has to send (after skipping what an earlier run already sent)."""
        self.total = total
        self._started = time.monotonic()
        self._report()

    def add(self, count: int) -> None:
        self.sent += count
        self._report()

    def _report(self) -> None:
        if self._callback is not None:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._callback(ProgressEvent(self.sent, self.total, self.sent / elapsed))


@dataclass(frozen=True)
class Artifact:
    """An artifact folder, its manifest, and the disk file this target's upload sends."""

    folder: Path
    manifest: Manifest
    disk: DiskFile

    @property
    def disk_path(self) -> Path:
        return self.folder / self.disk.path

    def state_path(self, target: str) -> Path:
        return self.folder / STATE_DIR / f"{target}.json"


@dataclass(frozen=True)
class Image:
    """A registered image: the cloud's id for it and its name."""

    id: str
    name: str


@dataclass(frozen=True)
class Uploaded:
    """Where an upload put the bytes (a GCS object, a page blob, a snapshot, a Glance image) and how.

    `created` lists, in words a user can act on, what this run created that a failed registration must delete.
    """

    location: str
    resumed: bool
    created: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str:
        return dict(self.extra)[key]


@dataclass(frozen=True)
class UploadResult:
    """What `devserver image upload` did; rendered by the CLI (text or --json)."""

    target: str
    status: Literal["registered", "already-registered"]
    image: Image
    location: str = ""
    bytes_sent: int = 0
    allocated: int = 0
    virtual_size: int = 0
    resumed: bool = False
    seconds: float = 0.0


class Uploader(Protocol):
    """One cloud's image upload. Implementations hold their SDK clients; their modules import SDKs lazily.

    Contract, in the order :func:`publish` calls them:

    * :meth:`check` — fail fast (CloudError) when the staging storage (bucket, container) is missing or the
      credentials for it are refused, before anything is looked up or sent.
    * :meth:`find` — the image already registered with ``manifest.inputs_hash`` (tag/label/property), or None.
    * :meth:`upload` — send the disk's bytes, resuming an earlier interrupted run of the same artifact, reporting
      progress to `meter` (``meter.start`` once with the bytes this run will send, ``meter.add`` per part). Raises
      CloudError on refusal; any exception from the meter's callback propagates with the resume state kept.
    * :meth:`register` — create the image from what :meth:`upload` returned, named ``manifest.name``, family
      ``manifest.family``, carrying the inputs hash; waits until the cloud reports it done.
    * :meth:`discard` — after a failed :meth:`register`: delete what `uploaded.created` names and return what could
      not be deleted (empty when nothing remains).
    """

    target: ClassVar[str]

    def check(self) -> None: ...

    def find(self, manifest: Manifest) -> Image | None: ...

    def upload(self, artifact: Artifact, meter: Meter) -> Uploaded: ...

    def register(self, artifact: Artifact, uploaded: Uploaded) -> Image: ...

    def discard(self, uploaded: Uploaded) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class UploadOptions:
    """Every target's command-line options; each target's ``from_options`` takes the ones it needs."""

    project: str | None = None
    bucket: str | None = None
    compute_endpoint: str | None = None
    account_url: str | None = None
    connection_string: str | None = None
    container: str | None = None
    resource_group: str | None = None
    location: str | None = None
    subscription: str | None = None
    region: str | None = None
    method: Literal["ebs", "s3"] = "ebs"
    cloud: str | None = None

    def need(self, name: str, target: str, example: str) -> str:
        """The option `name`, or an OptionError saying --target `target` needs it."""
        value = getattr(self, name)
        if not value:
            flag = "--" + name.replace("_", "-")
            raise OptionError(flag, f"is required with --target {target}", f"pass it, e.g. {flag} {example}")
        return str(value)


def open_artifact(folder: Path, target: str) -> Artifact:
    """Load `folder`'s manifest and check it is an artifact for `target` whose disk really is in that format.

    Raises ArtifactError (exit 2) for a corrupt manifest, another target's artifact, or a disk whose bytes are not
    the format the manifest claims (a renamed or replaced file).
    """
    manifest = load_manifest(folder)
    if manifest.target != target:
        raise ArtifactError(
            str(folder),
            f"is an image for {manifest.target}, not {target}",
            f"build one with `devserver image build --target {target}` or upload with --target {manifest.target}",
        )
    wanted = TARGET_FORMATS[target][0][0]
    disk = manifest.disk(wanted)
    if disk is None:
        formats = ", ".join(d.format for d in manifest.disks)
        raise ArtifactError(
            str(folder), f"has no {wanted} disk for {target} (it has {formats})", "rebuild the artifact"
        )
    artifact = Artifact(Path(folder), manifest, disk)
    _check_format(artifact.disk_path, wanted)
    return artifact


def _check_format(path: Path, fmt: str) -> None:
    """Look at the file's own bytes: a gzip, a fixed VHD footer, a qcow2 header, or (raw) anything."""
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(path.stat().st_size - 512, 0))
        tail = f.read(512)
    if fmt == "gce-tar":
        ok, expected = head[:2] == b"\x1f\x8b", "a gzip-compressed tar"
    elif fmt == "vhd-fixed":
        # The VHD footer: cookie "conectix", disk type (offset 60, big-endian) 2 = fixed.
        ok, expected = tail[:8] == b"conectix" and tail[60:64] == b"\x00\x00\x00\x02", "a fixed VHD (footer)"
    elif fmt == "qcow2":
        ok, expected = head == b"QFI\xfb", "a qcow2 image"
    else:
        ok, expected = True, fmt
    if not ok:
        raise ArtifactError(str(path), f"is not {expected} as the manifest says", "rebuild the artifact (--force)")


def publish(uploader: Uploader, folder: Path, progress: ProgressCallback | None = None) -> UploadResult:
    """Upload and register the artifact at `folder` with `uploader`; skip when already registered."""
    started = time.monotonic()
    artifact = open_artifact(folder, uploader.target)
    manifest = artifact.manifest
    uploader.check()
    existing = uploader.find(manifest)
    if existing is not None:
        return UploadResult(uploader.target, "already-registered", existing, virtual_size=artifact.disk.virtual_size)
    meter = Meter(progress)
    uploaded = uploader.upload(artifact, meter)
    try:
        image = uploader.register(artifact, uploaded)
    except CloudError as exc:
        remains = uploader.discard(uploaded)
        if remains:
            left = "; still there: " + ", ".join(remains)
            fix = "delete those by hand, fix the cause, and run the upload again"
        else:
            left = "; removed what this run created: " + (", ".join(uploaded.created) or "nothing")
            fix = exc.fix
        raise CloudError(f"registration failed: {exc.message}{left}", fix) from None
    artifact.state_path(uploader.target).unlink(missing_ok=True)
    return UploadResult(
        target=uploader.target,
        status="registered",
        image=image,
        location=uploaded.location,
        bytes_sent=meter.sent,
        allocated=artifact.disk.allocated,
        virtual_size=artifact.disk.virtual_size,
        resumed=uploaded.resumed,
        seconds=round(time.monotonic() - started, 3),
    )


StateT = TypeVar("StateT", bound=BaseModel)


def load_state(artifact: Artifact, target: str, model: type[StateT]) -> StateT | None:
    """The resume state an earlier run of this artifact left, or None (none, unreadable, or for other bytes)."""
    path = artifact.state_path(target)
    try:
        state = model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    if getattr(state, "sha256", None) != artifact.disk.sha256:
        return None
    return state


def save_state(artifact: Artifact, target: str, state: BaseModel) -> None:
    """Write the resume state atomically (a crash mid-write leaves the previous state)."""
    path = artifact.state_path(target)
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(state.model_dump_json())
    partial.replace(path)


def clear_state(artifact: Artifact, target: str) -> None:
    artifact.state_path(target).unlink(missing_ok=True)


def data_runs(path: Path, granularity: int, *, limit: int | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) runs of `path` that hold non-zero bytes, at `granularity`-aligned boundaries.

    Holes are skipped without reading (SEEK_DATA/SEEK_HOLE); allocated extents are read and every
    `granularity`-sized block that is all zero is skipped too (an image builder writes zeros into a file). A run
    never exceeds `limit` bytes; only the last block of the file may be shorter than `granularity`.
    """
    size = path.stat().st_size
    zero = bytes(granularity)
    read = max(granularity, 4 << 20) // granularity * granularity
    with path.open("rb") as f:
        fd = f.fileno()
        run_start = run_end = -1
        for extent_start, extent_end in _extents(fd, size):
            offset = extent_start // granularity * granularity
            end = min(-(-extent_end // granularity) * granularity, size)
            while offset < end:
                chunk = os.pread(fd, min(read, end - offset), offset)
                view = memoryview(chunk)
                for pos in range(0, len(chunk), granularity):
                    block = view[pos : pos + granularity]
                    if block == zero[: len(block)]:
                        continue
                    start = offset + pos
                    if start == run_end and (limit is None or run_end - run_start + len(block) <= limit):
                        run_end += len(block)
                        continue
                    if run_start >= 0:
                        yield run_start, run_end - run_start
                    run_start, run_end = start, start + len(block)
                offset += len(chunk)
        if run_start >= 0:
            yield run_start, run_end - run_start


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The file's data extents; the whole file where the filesystem cannot tell holes apart."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            yield offset, size
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        offset = end
