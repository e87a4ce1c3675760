"""GCE: a resumable, checksum-verified upload of disk.raw.tar.gz to a GCS bucket, then ``images.insert``.

The upload uses GCS's resumable protocol: the session is created through google-cloud-storage with the object's
CRC32C and MD5 in its metadata (GCS rejects the final chunk when the bytes do not match them), its URL is kept in
``<artifact>/.upload-state/gce.json``, and a re-run asks GCS how many bytes it holds and sends only the rest. The
image is created with compute ``images.insert`` (family, guest OS features, labels with the inputs hash), waiting on
the operation; a failed insert deletes the uploaded object.

Credentials: Application Default Credentials. When ``STORAGE_EMULATOR_HOST`` is set (the SDK's own switch to an
emulator) anonymous credentials are used for both services. `compute_endpoint` points compute at another endpoint
(a private service connect address, or the tests' validating server).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from devserver.clouds.common import (
    GCE_HASH_CHARS,
    HASH_KEY,
    Artifact,
    CloudError,
    Image,
    Meter,
    Uploaded,
    UploadOptions,
    clear_state,
    load_state,
    save_state,
)
from devserver.images.artifact import Manifest

CHUNK = 8 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires for every chunk but the last
GUEST_OS_FEATURES = ("GVNIC", "VIRTIO_SCSI_MULTIQUEUE")


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    bucket: str
    object: str
    session_url: str
    crc32c: str
    md5: str


def guest_os_features(firmware: tuple[str, ...]) -> list[str]:
    """The guest OS features an image gets: gVNIC and multiqueue SCSI always, UEFI_COMPATIBLE for UEFI disks."""
    return (["UEFI_COMPATIBLE"] if "uefi" in firmware else []) + list(GUEST_OS_FEATURES)


def image_resource(manifest: Manifest, source_uri: str) -> Any:
    """The compute_v1.Image for `manifest` whose raw disk is the tar at `source_uri`."""
    from google.cloud import compute_v1

    return compute_v1.Image(
        name=manifest.name,
        family=manifest.family,
        description=f"devserver {manifest.family} ({manifest.distro}); inputs {manifest.inputs_hash}",
        labels={HASH_KEY: manifest.inputs_hash[:GCE_HASH_CHARS], "devserver-family": manifest.family},
        guest_os_features=[compute_v1.GuestOsFeature(type_=f) for f in guest_os_features(manifest.firmware)],
        raw_disk=compute_v1.RawDisk(source=source_uri),
        architecture="X86_64",
    )


def insert_image(images: Any, project: str, image: Any, timeout: float = 1800) -> str:
    """Create `image` in `project` with compute ``images.insert`` and wait for the operation; return its id.

    The one GCE call no emulator implements: tested against a local server that decodes and checks the request
    with google-cloud-compute's own message types (tests/uploads/test_gce.py).
    """
    operation = images.insert(project=project, image_resource=image)
    operation.result(timeout=timeout)
    created = images.get(project=project, image=image.name)
    return str(created.id)


def _fail(exc: Exception, doing: str, project: str, bucket: str = "") -> CloudError:
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import GoogleAuthError

    if isinstance(exc, GoogleAuthError):
        return CloudError(f"{doing}: {exc}", "run `gcloud auth application-default login` or set a service account")
    if isinstance(exc, gexc.NotFound):
        what = f"bucket {bucket!r}" if bucket else f"project {project!r}"
        return CloudError(f"{doing}: {what} not found", "create it, or pass an existing one (--project/--bucket)")
    if isinstance(exc, gexc.Unauthorized):
        return CloudError(
            f"{doing}: the credentials were refused ({exc.message})",
            "run `gcloud auth application-default login`, or check the service account key",
        )
    if isinstance(exc, gexc.Forbidden):
        return CloudError(
            f"{doing}: permission denied ({exc.message})", "grant storage.objectAdmin / compute.imageAdmin"
        )
    if isinstance(exc, gexc.TooManyRequests):
        return CloudError(f"{doing}: quota exceeded ({exc.message})", "wait or ask for a higher quota")
    if isinstance(exc, gexc.GoogleAPIError):
        return CloudError(f"{doing}: {exc}", "see the Google API error above")
    raise exc


@dataclass
class GceUploader:
    """Image `manifest.name` in `project`, its tar staged in GCS `bucket`, sent in `chunk_size` pieces."""

    project: str
    bucket: str
    compute_endpoint: str | None = None
    chunk_size: int = CHUNK
    target: ClassVar[str] = "gce"

    def __post_init__(self) -> None:
        self._creds: Any = None
        self._images: Any = None

    def _credentials(self) -> Any:
        if self._creds is None:
            import google.auth
            from google.auth.credentials import AnonymousCredentials

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                self._creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
            else:
                try:
                    self._creds, _ = google.auth.default()
                except Exception as exc:
                    raise _fail(exc, "loading Google credentials", self.project) from None
        return self._creds

    def _images_client(self) -> Any:
        if self._images is None:
            from google.cloud import compute_v1

            options = {"api_endpoint": self.compute_endpoint} if self.compute_endpoint else None
            self._images = compute_v1.ImagesClient(credentials=self._credentials(), client_options=options)
        return self._images

    def check(self) -> None:
        from google.cloud.storage import Client

        try:
            Client(project=self.project, credentials=self._credentials()).get_bucket(self.bucket)
        except Exception as exc:
            raise _fail(exc, f"opening gs://{self.bucket}", self.project, self.bucket) from None

    def find(self, manifest: Manifest) -> Image | None:
        from google.cloud import compute_v1

        label = manifest.inputs_hash[:GCE_HASH_CHARS]
        request = compute_v1.ListImagesRequest(project=self.project, filter=f"labels.{HASH_KEY}={label}")
        try:
            found = list(self._images_client().list(request=request))
        except Exception as exc:
            raise _fail(exc, "looking for an existing image", self.project) from None
        if not found:
            return None
        return Image(str(found[0].id), found[0].name)

    def upload(self, artifact: Artifact, meter: Meter) -> Uploaded:
        from google.auth.transport.requests import AuthorizedSession

        session = AuthorizedSession(self._credentials())  # type: ignore[no-untyped-call]
        size = artifact.disk.file_size
        state = load_state(artifact, self.target, _State)
        offset = None
        if state is not None and state.bucket == self.bucket:
            offset = self._received(session, state.session_url, size)
        resumed = offset is not None and offset > 0
        if state is None or offset is None:
            state = self._start(artifact)
            offset = 0
        meter.start(size - offset)
        result: dict[str, Any] | None = None
        with artifact.disk_path.open("rb") as f:
            while result is None:
                chunk = os.pread(f.fileno(), self.chunk_size, offset)
                headers = {"Content-Range": f"bytes {offset}-{offset + len(chunk) - 1}/{size}"}
                if not chunk:
                    headers = {"Content-Range": f"bytes */{size}"}
                response = session.put(state.session_url, data=chunk, headers=headers)
                if response.status_code == 308:
                    sent = self._range_end(response.headers.get("Range")) - offset
                    offset += sent
                    meter.add(sent)
                elif response.status_code in (200, 201):
                    meter.add(len(chunk))
                    result = response.json()
                else:
                    raise CloudError(
                        f"uploading gs://{self.bucket}/{state.object}: "
                        f"HTTP {response.status_code} {response.text[:200]}",
                        "run the same command again to resume",
                    )
        if result.get("crc32c") != state.crc32c or result.get("md5Hash") != state.md5:
            raise CloudError(
                f"gs://{self.bucket}/{state.object}: checksums differ from the local file "
                f"(crc32c {result.get('crc32c')} vs {state.crc32c})",
                "delete the object and run the upload again",
            )
        clear_state(artifact, self.target)
        location = f"gs://{self.bucket}/{state.object}"
        return Uploaded(location, resumed, created=(location,), extra=(("object", state.object),))

    def _start(self, artifact: Artifact) -> _State:
        import google_crc32c
        from google.cloud.storage import Client

        crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        md5 = hashlib.md5()  # noqa: S324 - GCS's own object checksum
        with artifact.disk_path.open("rb") as f:
            while block := f.read(CHUNK):
                crc.update(block)  # type: ignore[no-untyped-call]
                md5.update(block)
        state = _State(
            sha256=artifact.disk.sha256,
            bucket=self.bucket,
            object=f"devserver/{artifact.manifest.name}.tar.gz",
            session_url="",
            crc32c=base64.b64encode(crc.digest()).decode(),  # type: ignore[no-untyped-call]
            md5=base64.b64encode(md5.digest()).decode(),
        )
        client = Client(project=self.project, credentials=self._credentials())
        try:
            bucket = client.get_bucket(self.bucket)
            blob = bucket.blob(state.object)
            blob.crc32c = state.crc32c
            blob.md5_hash = state.md5
            blob.metadata = {HASH_KEY: artifact.manifest.inputs_hash}
            url = blob.create_resumable_upload_session(
                content_type="application/gzip", size=artifact.disk.file_size, checksum=None
            )
        except Exception as exc:
            raise _fail(exc, f"starting the upload to gs://{self.bucket}", self.project, self.bucket) from None
        state = state.model_copy(update={"session_url": url})
        save_state(artifact, self.target, state)
        return state

    @staticmethod
    def _range_end(header: str | None) -> int:
        """The next offset GCS wants from a 308's ``Range: bytes=0-N`` (no header: nothing received)."""
        match = re.fullmatch(r"bytes=0-(\d+)", header or "")
        return int(match.group(1)) + 1 if match else 0

    def _received(self, session: Any, url: str, size: int) -> int | None:
        """Bytes the resumable session already holds; None when the session is gone (expired, or completed)."""
        response = session.put(url, data=b"", headers={"Content-Range": f"bytes */{size}"})
        if response.status_code == 308:
            return self._range_end(response.headers.get("Range"))
        return None

    def register(self, artifact: Artifact, uploaded: Uploaded) -> Image:
        source = f"https://storage.googleapis.com/{self.bucket}/{uploaded.get('object')}"
        image = image_resource(artifact.manifest, source)
        try:
            image_id = insert_image(self._images_client(), self.project, image)
        except Exception as exc:
            raise _fail(exc, f"creating image {artifact.manifest.name}", self.project) from None
        return Image(image_id, artifact.manifest.name)

    def discard(self, uploaded: Uploaded) -> tuple[str, ...]:
        from google.cloud.storage import Client

        try:
            client = Client(project=self.project, credentials=self._credentials())
            client.bucket(self.bucket).blob(uploaded.get("object")).delete()
        except Exception:
            return uploaded.created
        return ()


def from_options(options: UploadOptions) -> GceUploader:
    return GceUploader(
        project=options.need("project", "gce", "my-project"),
        bucket=options.need("bucket", "gce", "my-images-bucket"),
        compute_endpoint=options.compute_endpoint,
    )
